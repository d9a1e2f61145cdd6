"""The ASR task end to end: train, eval, export, run and bench commands, the runner task and its sinks."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from memstream.export import TorchBackend
from memstream.pipelines import cli
from memstream.pipelines.asr_eval import backend_for, error_rates
from memstream.pipelines.asr_task import AsrTask, TranscriptLineSink, load_asr_model, transcribe
from memstream.pipelines.ctc import greedy_decode
from memstream.pipelines.speech_data import read_corpus
from memstream.pipelines.synth_speech import FORTUNE_DIRS
from test_asr_model import tiny_asr


def _synth_tools() -> str | None:
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (apt-get install espeak-ng)"
    if not any(d.is_dir() and any(d.iterdir()) for d in FORTUNE_DIRS):
        return "no fortune files (apt-get install fortunes-min fortunes)"
    return None


needs_synth = pytest.mark.skipif(_synth_tools() is not None, reason=str(_synth_tools()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if _synth_tools() is not None:
        pytest.skip(_synth_tools())
    from memstream.pipelines.synth_speech import synthesize

    out = tmp_path_factory.mktemp("asr") / "synth"
    synthesize(out, hours=0.01, seed=3, heldout_voices=1, longform_minutes=(0.2, 0.4), longform_count=1)
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asr") / "run"
    code = cli.main(["train", "asr", "--data", str(corpus / "train"), "--dev", str(corpus / "dev"), "--out", str(out),
                     "--steps", "12", "--batch-seconds", "40", "--threads", "2", "--lr", "3e-3", "--log-every", "2"])
    assert code == 0
    return out


def test_transcript_sink_rewrites_one_line_on_a_terminal_and_writes_finals_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    events = [{"type": "partial", "text": "hel", "stream": "a"}, {"type": "partial", "text": "hello", "stream": "a"},
              {"type": "final", "text": "hello", "start": 0.0, "end": 1.0, "stream": "a"},
              {"type": "final", "text": "", "start": 1.0, "end": 3.4, "stream": "a"}]
    tty, plain = Tty(), io.StringIO()
    for file in (tty, plain):
        sink = TranscriptLineSink(file)
        for e in events:
            sink.write(e)
        sink.close()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("hello\n")
    assert plain.getvalue() == "[   0.00-   1.00] hello\n"
    long = " ".join(["word"] * 60)
    narrow, plain = Tty(), io.StringIO()
    for file in (narrow, plain):
        sink = TranscriptLineSink(file, width=40)
        sink.write({"type": "partial", "text": long})
        sink.write({"type": "final", "text": long, "start": 0.0, "end": 9.0})
    assert narrow.getvalue().startswith("\r\033[K" + long[-40:] + "\r")  # the live line fits the terminal
    assert plain.getvalue() == f"[   0.00-   9.00] {long}\n"  # a finished utterance is never cut


def test_streamed_transcript_equals_offline_greedy_decoding():
    model = tiny_asr()
    with torch.no_grad():
        model.head.bias.copy_(torch.linspace(0, 3, len(model.cfg.vocab)))  # emit something besides blank
    audio = np.random.default_rng(0).normal(0, 0.3, 7 * model.cfg.segment_samples - 999).astype(np.float32)
    task = AsrTask(model, endpoint=None)
    streamed = transcribe(TorchBackend(model), audio, task)
    with torch.no_grad():
        log_probs, valid = model.forward_sequence(torch.from_numpy(audio).unsqueeze(0))
    offline = greedy_decode(log_probs[0, :int(valid.sum())].numpy(), list(model.cfg.vocab))
    assert streamed["text"] == offline and offline
    assert all(w["start"] <= w["end"] for w in streamed["words"])


def test_full_context_model_refuses_to_stream():
    with pytest.raises(ValueError, match="cannot stream"):
        AsrTask(tiny_asr("none", full_context=True))


def test_error_rates_normalise_and_skip_empty_references():
    out = error_rates(["Hello, World!", "", "good  morning"], ["hello world", "noise", "good evening"])
    cer = jiwer.cer(["hello world", "good morning"], ["hello world", "good evening"])
    assert out == {"wer": 0.25, "cer": round(cer, 4), "num_utterances": 2} and cer > 0


def test_onnx_backend_gives_the_same_transcripts():
    pytest.importorskip("onnxruntime")
    model = tiny_asr()
    with torch.no_grad():
        model.head.bias.copy_(torch.linspace(0, 3, len(model.cfg.vocab)))
    task = AsrTask(model)
    rng = np.random.default_rng(1)
    ort = backend_for(model, "onnx")
    for n in (3 * model.cfg.segment_samples + 17, 9 * model.cfg.segment_samples):
        audio = rng.normal(0, 0.3, n).astype(np.float32)
        ours, theirs = transcribe(TorchBackend(model), audio, task), transcribe(ort, audio, task)
        assert ours["text"] == theirs["text"] and ours["text"]
        assert [w["start"] for w in ours["words"]] == [w["start"] for w in theirs["words"]]


def test_onnx_graph_from_another_model_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    from memstream.pipelines.asr import export_asr

    other = tiny_asr(vocab=("<b>", " ", *"abcdefghijklmnopqrstuvwxyz"))
    export_asr(other, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        backend_for(tiny_asr(), "onnx", str(tmp_path / "other.onnx"))


@needs_synth
def test_train_writes_a_checkpoint_that_learns(trained):
    records = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and np.isfinite(losses).all() and losses[-1] < losses[0]
    model, config = load_asr_model(trained)
    assert config["model"] == "asr" and "memstream train asr" in config["command"]
    assert not torch.allclose(model.features.mean, torch.zeros_like(model.features.mean))  # corpus statistics
    assert any("eval" in r for r in records)
    assert len(config["corpus_fingerprint"]) == 64


@needs_synth
def test_objective_batches_are_the_same_with_and_without_the_audio_cache(corpus):
    from memstream.pipelines.asr import AsrObjective

    model = tiny_asr()
    utterances = read_corpus(corpus / "train")
    cached, fresh = (AsrObjective(model, utterances, max_batch_seconds=30.0, cache_audio=c) for c in (True, False))
    for a, b in zip(cached.batches(0, 1, 0, 0), fresh.batches(0, 1, 0, 0), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(cached._audio) == len(cached.utterances) and not fresh._audio


def test_vtlp_filters_are_torchaudios_at_one_and_move_a_tone_by_alpha():
    from memstream.pipelines.asr import warped_features, warped_mel_filters

    model = tiny_asr().eval()
    filters = warped_mel_filters(model, torch.tensor([1.0, 1.1, 0.9]))
    assert filters.shape == (3, *model.features.mel.shape)
    assert torch.allclose(filters[0], model.features.mel, atol=1e-5)  # alpha 1: the model's own filters
    audio = torch.randn(2, 4 * model.cfg.segment_samples)
    assert torch.allclose(warped_features(model, audio, torch.ones(2)), model.features_sequence(audio), atol=1e-4)
    # a 1 kHz tone read through filters warped by alpha looks like a tone at alpha kHz through the plain ones
    t = torch.arange(4 * model.cfg.segment_samples) / model.cfg.sample_rate
    tone = lambda hz: torch.sin(2 * torch.pi * hz * t)  # noqa: E731
    warped = warped_features(model, torch.stack([tone(1000.0)] * 2), torch.tensor([1.1, 0.9]))[:, 20]
    plain = model.features_sequence(torch.stack([tone(1100.0), tone(900.0)]))[:, 20]
    assert warped.argmax(-1).tolist() == plain.argmax(-1).tolist()
    assert plain.argmax(-1).tolist()[0] > model.features_sequence(tone(1000.0)[None])[0, 20].argmax().item()


@needs_synth
def test_vtlp_changes_training_features_only(corpus):
    from memstream.pipelines.asr import AsrObjective

    model = tiny_asr()  # no dropout (the core default), so in train mode only the warp may differ
    utterances = read_corpus(corpus / "train")
    with pytest.raises(ValueError, match="vtlp=0.7"):
        AsrObjective(model, utterances, vtlp=0.7)
    plain, warped = (AsrObjective(model, utterances, max_batch_seconds=30.0, vtlp=v, freq_masks=0, time_masks=0)
                     for v in (0.0, 0.1))
    batch = next(iter(plain.batches(0, 1, 0, 0)))
    model.train()
    a, b = plain.loss(model, batch, 0, None)[0], warped.loss(model, batch, 0, None)[0]
    assert torch.isfinite(b) and not torch.isclose(a, b)
    assert torch.equal(a, plain.loss(model, batch, 0, None)[0])  # without the warp, train mode is deterministic
    model.eval()  # evaluation never warps
    with torch.no_grad():
        assert torch.equal(plain.loss(model, batch, 0, None)[0], warped.loss(model, batch, 0, None)[0])


@needs_synth
def test_resume_on_another_corpus_is_refused(trained, corpus, tmp_path, capsys):
    import shutil as sh

    copy = tmp_path / "run"
    sh.copytree(trained, copy)
    code = cli.main(["train", "asr", "--data", str(corpus / "dev"), "--out", str(copy), "--steps", "14"])
    assert code == 2 and "trained on another corpus" in capsys.readouterr().err


@needs_synth
def test_warm_start_loads_weights_and_statistics_and_refuses_another_configuration(trained, corpus, tmp_path,
                                                                                   capsys):
    from safetensors.torch import load_file

    out = tmp_path / "warm"
    code = cli.main(["train", "asr", "--data", str(corpus / "train"), "--init", str(trained), "--out", str(out),
                     "--steps", "1", "--lr", "1e-12", "--batch-seconds", "40", "--threads", "2"])
    assert code == 0
    before, after = load_file(str(trained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert torch.equal(before["features.mean"], after["features.mean"])  # not recomputed from the corpus
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert "--init" in json.loads((out / "config.json").read_text())["command"]
    capsys.readouterr()
    code = cli.main(["train", "asr", "--data", str(corpus / "train"), "--init", str(trained), "--memory", "slots",
                     "--out", str(tmp_path / "other"), "--steps", "1"])
    assert code == 2 and "core.memory='queue' (here 'slots')" in capsys.readouterr().err


@needs_synth
def test_accuracy_bench_compares_with_a_baseline_only_when_given_and_cleans_up(trained, corpus, tmp_path,
                                                                              monkeypatch):
    import tempfile

    from memstream.pipelines.asr_bench import accuracy

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    alone = accuracy(corpus, str(trained), limit=4, real=tmp_path / "no-real-speech")
    assert alone["long_recordings"] >= 1 and alone["long_parts"] > alone["long_recordings"]
    assert alone["wer_real"] is None
    assert alone["wer_long_no_memory"] is None and alone["goals"]["memory_le_no_memory_long"] is None
    # the same weights as their own "no memory" baseline: equal WER, so the goal holds
    paired = accuracy(corpus, str(trained), no_memory=str(trained), limit=4, real=tmp_path / "no-real-speech")
    assert paired["wer_long_no_memory"] == paired["wer_long"] == alone["wer_long"]
    assert paired["goals"]["memory_le_no_memory_long"] is True
    assert list(scratch.iterdir()) == []  # the long recordings' parts are removed


@needs_synth
def test_eval_json_plot_and_onnx_backend_agree(trained, corpus, tmp_path, capsys):
    plot = tmp_path / "wer.png"
    argv = ["eval", "asr", "--data", str(corpus / "test-longform"), "--checkpoint", str(trained), "--json", "--threads",
            "1"]
    assert cli.main(argv + ["--plot", str(plot)]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert {"wer", "cer", "rtf", "num_utterances", "audio_seconds", "wer_by_length"} <= set(torch_result)
    assert torch_result["device"] == "cpu"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(argv + ["--backend", "onnx"]) == 0
    onnx_result = json.loads(capsys.readouterr().out)
    assert abs(onnx_result["wer"] - torch_result["wer"]) <= 0.1 and onnx_result["backend"] == "onnx"


@needs_synth
def test_export_then_run_from_the_onnx_file(trained, corpus, tmp_path, capsys):
    onnx_path = tmp_path / "asr.onnx"
    assert cli.main(["export", "asr", "--checkpoint", str(trained), "--out", str(onnx_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["segment_samples"] == 10240 and "state.audio_tail" in info["inputs"]
    clip = read_corpus(corpus / "test")[0].path
    out = tmp_path / "run"
    code = cli.main(["run", "asr", "--source", str(clip), "--checkpoint", str(trained), "--backend", "onnx",
                     "--onnx", str(onnx_path), "--out", str(out), "--quiet"])
    assert code == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    finals = [e for e in events if e["type"] == "final"]
    assert finals and finals[-1]["reason"] == "flush"
    assert json.loads((out / "summary.json").read_text())["total"]["segments"] >= 1


def test_run_refuses_a_missing_checkpoint(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    assert cli.main(["run", "asr", "--source", str(wav), "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


@needs_synth
def test_data_longform_joins_each_chapter(corpus, tmp_path, capsys):
    out = tmp_path / "long"
    assert cli.main(["data", "longform", "--data", str(corpus / "train"), "--out", str(out), "--minutes", "0.01",
                     "5"]) == 0
    info = json.loads(capsys.readouterr().out)
    recordings = read_corpus(out)
    source = read_corpus(corpus / "train")
    assert info["recordings"] == len(recordings) == len({(u.speaker, u.chapter) for u in source})
    assert sum(len(r.text.split()) for r in recordings) == sum(len(u.text.split()) for u in source)
    assert cli.main(["data", "longform", "--data", str(corpus / "train"), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


DDP_SCRIPT = """
import os, sys, torch
from safetensors.torch import save_file
from memstream.models import build
from memstream.pipelines.asr import AsrObjective
from memstream.pipelines.speech_data import read_corpus
from memstream.pipelines.train import TrainConfig, train

torch.manual_seed(int(os.environ["RANK"]))  # different starting weights: rank 0's must reach every rank
model = build("asr-small", dim=32, heads=2, layers=1, channels=4)
objective = AsrObjective(model, read_corpus(sys.argv[1]), max_batch_seconds=20.0)
train(model, objective, TrainConfig(steps=3, lr=1e-3, log_every=1), sys.argv[2], progress=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()},
          os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
"""


@needs_synth
def test_two_processes_train_asr_to_identical_weights(corpus, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port),
               str(script), str(corpus / "train"), str(tmp_path / "out")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    w0, w1 = load_file(tmp_path / "out" / "rank0.safetensors"), load_file(tmp_path / "out" / "rank1.safetensors")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["world"] == 2


def test_demo_transcribes_the_bundled_sample(capsys):
    from memstream.pipelines.asr import bundled_sample

    if not bundled_sample().is_file():
        pytest.skip("no bundled ASR sample")
    assert cli.main(["demo", "--only", "asr", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    hypothesis = next(line for line in out.splitlines() if line.startswith("hypothesis:"))
    reference = (bundled_sample().parent / "sample.txt").read_text()
    # The whole recording is decoded (the last utterance is finalised at the end of the stream).
    assert error_rates([reference], [hypothesis.removeprefix("hypothesis:")])["cer"] < 0.3
    assert "WER" in out
