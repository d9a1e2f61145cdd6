"""``memstream bench asr``: accuracy short vs long-form, against no memory and full attention; speed against
pocketsphinx; memory over an hour of streamed audio. One JSON object.

Accuracy (held-out voices of a ``memstream data synth-speech`` corpus, normalised text, jiwer):
- ``wer_short`` / ``wer_long``: the memory model streamed over ``test/`` utterances and over the
  ``test-longform/`` recordings (5-20 min), endpointing on, as ``memstream run asr`` does;
  ``wer_long_parts``: the utterances the recordings were made of, one at a time (same speech as ``long``).
- ``wer_*_no_memory``: the same architecture trained the same way with ``memory="none"`` (segments only).
- ``wer_*_full_attention``: the same size trained on the same short utterances with attention over the whole
  utterance, run offline over whole recordings (it cannot stream).
- ``wer_real``: the memory model on ``../shared/realdata/asr`` (real speech; the model never heard any).
Speed: real-time factor (compute seconds / audio seconds) of PyTorch and ONNX Runtime streaming 640 ms
segments one stream at a time, and of pocketsphinx (its bundled US English model) on the same audio, in one
run, interleaved. Memory: RSS growth between minute 5 and the end of an hour streamed through the runner.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import torch
from memstream.pipelines.asr_eval import backend_for, error_rates, evaluate, evaluate_sequences
from memstream.pipelines.asr_lm import add_lm_arguments, lm_from_args
from memstream.pipelines.asr_task import DEFAULT_ENDPOINT, AsrTask, load_asr_model, transcribe
from memstream.pipelines.core_bench import rss_mb
from memstream.pipelines.speech_data import Utterance, load_audio, read_corpus

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "asr"


def real_speech(root: str | Path) -> tuple[list, list[str]]:
    """The real sample clips whose reference is plain speech: annotations in parentheses (word times) are
    removed, and the two-speaker stereo clip (one transcript per channel; the model hears their mix) is left out.
    Returns (utterances, notes)."""
    import re

    kept, notes = [], []
    for u in read_corpus(root):
        if "channel:" in u.text:
            notes.append(f"{u.id}: left out (a different speaker on each channel)")
            continue
        text = re.sub(r"\([^)]*\)", " ", u.text)
        if text != u.text:
            notes.append(f"{u.id}: annotation in parentheses removed from the reference")
        kept.append(dataclasses.replace(u, text=text))
    return kept, notes


def longform_parts(folder: str | Path, out: str | Path) -> list[Utterance]:
    """The utterances each long-form recording was made of, cut back out of the recordings (``segments.tsv``)
    into ``out``: the same speech decoded one utterance at a time, for a like-for-like short vs long figure."""
    import soundfile as sf

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recordings = {u.id: u for u in read_corpus(folder)}
    rows = [line.split("\t") for line in (folder / "segments.tsv").read_text().splitlines()[1:] if line.strip()]
    parts, cache = [], {}
    for rec_id, part_id, start, end, text in rows:
        if rec_id not in recordings:
            continue
        if rec_id not in cache:
            cache = {rec_id: load_audio(recordings[rec_id].path)}
        clip = cache[rec_id][round(float(start) * 16000):round(float(end) * 16000)]
        path = out / f"{part_id}.flac"
        sf.write(str(path), clip, 16000)
        rec = recordings[rec_id]
        parts.append(Utterance(part_id, path, text, rec.speaker, rec.chapter, len(clip) / 16000))
    return parts


def full_attention_wer(model, utterances, device: str = "cpu") -> dict:
    """The full-attention baseline over each whole recording at once (one per batch, so no padding), greedy."""
    return evaluate_sequences(model.to(device), utterances, batch=1)


def streamed_wer(model, utterances, lm=None, device: str = "cpu") -> dict:
    task = AsrTask(model, endpoint=DEFAULT_ENDPOINT, method="lm" if lm else "greedy", lm=lm)
    return evaluate(backend_for(model, "torch", device=device), task, utterances)


def _pocketsphinx_decode(decoder, audio: np.ndarray) -> str:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def speed(model, utterances, onnx_path: str | None, threads: int, rounds: int = 2) -> dict:
    """RTF of torch, ONNX Runtime and pocketsphinx on the same clips, taking turns clip by clip."""
    torch.set_num_threads(threads)
    task = AsrTask(model, endpoint=DEFAULT_ENDPOINT)
    backends = {"torch": backend_for(model, "torch"), "onnx": backend_for(model, "onnx", onnx_path, threads)}
    clips = [(u, load_audio(u.path, 16000)) for u in utterances]
    seconds = sum(len(a) for _, a in clips) / 16000.0
    spent = {"torch": 0.0, "onnx": 0.0, "pocketsphinx": 0.0}
    refs, hyps = [], {k: [] for k in spent}
    try:
        from pocketsphinx import Decoder

        sphinx = Decoder(samprate=16000, loglevel="FATAL")  # loading its model is not part of the timing
    except ImportError:
        spent.pop("pocketsphinx")
        hyps.pop("pocketsphinx")
    for r in range(rounds):
        for u, audio in clips:
            for name in spent:
                start = time.perf_counter()
                text = _pocketsphinx_decode(sphinx, audio) if name == "pocketsphinx" else \
                    transcribe(backends[name], audio, task)["text"]
                spent[name] += time.perf_counter() - start
                if r == 0:
                    hyps[name].append(text)
            if r == 0:
                refs.append(u.text)
    out = {f"rtf_{k}": round(v / (rounds * seconds), 5) for k, v in spent.items()}
    out.update({f"wer_speed_set_{k}": error_rates(refs, h)["wer"] for k, h in hyps.items()})
    out["speed_audio_seconds"] = round(seconds, 1)
    if "rtf_pocketsphinx" in out:
        out["onnx_speedup_vs_pocketsphinx"] = round(out["rtf_pocketsphinx"] / out["rtf_onnx"], 1)
    else:
        out["rtf_pocketsphinx"] = None
    return out


class _LoopedPcm(io.RawIOBase):
    """``seconds`` of float32 PCM made by looping ``audio``: an hour-long stream without an hour-long file."""

    def __init__(self, audio: np.ndarray, seconds: float, rate: int = 16000) -> None:
        self.data = audio.astype(np.float32).tobytes()
        self.left = int(seconds * rate) * 4
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.data)
        self.left -= n
        return n


def rss_over_stream(model, audio: np.ndarray, seconds: float = 3600.0, warm: float = 300.0) -> dict:
    """RSS growth from stream time ``warm`` to the end of ``seconds`` of audio streamed through the runner."""
    if not seconds > warm:
        raise ValueError(f"rss_over_stream: stream {seconds} s must be longer than the warm-up {warm} s")
    from memstream.export import TorchBackend
    from memstream.pipelines.runner import StreamRunner
    from memstream.pipelines.sources.audio import StdinPcmSource

    source = StdinPcmSource(rate=16000, channels=1, format="f32le", stream=_LoopedPcm(audio, seconds))
    runner = StreamRunner(AsrTask(model, endpoint=DEFAULT_ENDPOINT), TorchBackend(model), [], max_streams=1)
    runner.add(source)
    start, at_warm, words = time.perf_counter(), None, 0
    for result in runner.results():
        words += sum(e["type"] == "word" for e in result.events)
        if at_warm is None and result.end >= warm:
            at_warm = rss_mb()
    return {"rss_growth_mb": round(rss_mb() - (at_warm or rss_mb()), 2), "rss_stream_seconds": seconds,
            "rss_from_second": warm, "rss_words": words, "rss_wall_seconds": round(time.perf_counter() - start, 1)}


def accuracy(data: str | Path, checkpoint: str | None = None, no_memory: str | None = None,
             full_attention: str | None = None, *, limit: int | None = None, real: str | Path = REAL_DATA,
             lm=None, device: str = "cpu") -> dict:
    """WER short vs long-form for the memory model and both baselines, and on real speech; the models run on
    ``device`` (a torch device), decoding on the CPU.

    ``short``: the ``test/`` utterances. ``long``: the ``test-longform/`` recordings. ``long_parts``: the
    utterances those recordings were made of, each decoded on its own (the same speech and speakers as
    ``long``, so ``wer_long / wer_long_parts`` isolates what running for minutes does to the model).
    ``lm`` (a :class:`memstream.pipelines.asr_lm.LanguageModel`): the memory model is also decoded with it
    (``wer_short_lm``, ``wer_long_lm``).
    """
    import tempfile

    # the long recordings' parts are cut into a folder that lives as long as the bench (50 MB for synth16)
    with tempfile.TemporaryDirectory(prefix="memstream-longform-parts-") as parts_dir:
        return _accuracy(Path(data), checkpoint, no_memory, full_attention, limit, real, lm, device, parts_dir)


def _accuracy(data: Path, checkpoint, no_memory, full_attention, limit, real, lm, device, parts_dir: str) -> dict:
    short, long = read_corpus(data / "test")[:limit], read_corpus(data / "test-longform")[:limit]
    parts = [p for p in longform_parts(data / "test-longform", parts_dir) if p.chapter in {u.chapter for u in long}]
    model, _ = load_asr_model(checkpoint)
    out: dict = {"checkpoint": str(checkpoint or "bundled asr-small"), "memory": model.cfg.core.memory,
                 "short_utterances": len(short), "long_recordings": len(long), "long_parts": len(parts),
                 "long_minutes": round(sum(u.duration or 0 for u in long) / 60, 1)}
    models = {"": model}
    for name, path in (("_no_memory", no_memory), ("_full_attention", full_attention)):
        out[f"wer_short{name}"] = out[f"wer_long_parts{name}"] = out[f"wer_long{name}"] = None
        if path is not None:
            models[name] = load_asr_model(path)[0]
    for name, m in models.items():
        measure = full_attention_wer if m.cfg.full_context else streamed_wer
        for split, utterances in (("short", short), ("long_parts", parts), ("long", long)):
            result = measure(m, utterances, device=device)
            out[f"wer_{split}{name}"] = result["wer"]
            if split == "long" and not name:
                out["rtf_eval_long"] = result["rtf"]
    if lm is not None:
        out["lm"] = {"path": lm.path, "weight": lm.weight, "word_score": lm.word_score, "beam": lm.beam}
        for split, utterances in (("short", short), ("long", long)):
            out[f"wer_{split}_lm"] = streamed_wer(model, utterances, lm, device)["wer"]
    out["long_over_short"] = round(out["wer_long"] / max(out["wer_short"], 1e-9), 3)
    out["long_over_long_parts"] = round(out["wer_long"] / max(out["wer_long_parts"], 1e-9), 3)
    out["wer_real"] = out["real_notes"] = None
    if Path(real).is_dir():
        clips, out["real_notes"] = real_speech(real)
        real_result = streamed_wer(model, clips, device=device)
        out["wer_real"], out["cer_real"] = real_result["wer"], real_result["cer"]
    out["goals"] = {"long_over_short_le_1.05": out["long_over_short"] <= 1.05,
                    "long_over_long_parts_le_1.05": out["long_over_long_parts"] <= 1.05,
                    # None, not False, where no baseline was given: unknown is not failed
                    "memory_le_no_memory_long": (None if out["wer_long_no_memory"] is None
                                                 else out["wer_long"] <= out["wer_long_no_memory"]),
                    "wer_long_le_0.15": out["wer_long"] <= 0.15}
    if lm is not None:
        out["goals"]["wer_long_lm_le_0.15"] = out["wer_long_lm"] <= 0.15
    return out


def speed_and_memory(data: str | Path, checkpoint: str | None = None, *, threads: int = 2,
                     speed_seconds: float = 180.0, rss_seconds: float = 3600.0, onnx_path: str | None = None) -> dict:
    """RTF of torch / ONNX Runtime / pocketsphinx on the first ``speed_seconds`` of ``test/``, and the RSS
    growth over ``rss_seconds`` streamed through the runner (a test-longform recording, looped)."""
    torch.set_num_threads(threads)
    data = Path(data)
    model, _ = load_asr_model(checkpoint)
    short = read_corpus(data / "test")
    picked, total = [], 0.0
    for u in short:
        if total >= speed_seconds:
            break
        picked.append(u)
        total += u.duration or 0.0
    out = speed(model, picked, onnx_path, threads)
    long = read_corpus(data / "test-longform") if (data / "test-longform").is_dir() else []
    out.update(rss_over_stream(model, load_audio((long or short)[0].path), rss_seconds))
    out["goals"] = {"rtf_onnx_le_0.03": out["rtf_onnx"] <= 0.03, "rss_growth_le_5mb": out["rss_growth_mb"] <= 5.0}
    return out


def cli_bench(argv: list[str]) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="memstream bench asr", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a synth-speech corpus root (with test/ and test-longform/)")
    p.add_argument("--checkpoint", help="the memory model (default: the bundled asr-small)")
    p.add_argument("--no-memory", help="checkpoint of the same model trained with --memory none")
    p.add_argument("--full-attention", help="checkpoint of the baseline trained with --full-context")
    p.add_argument("--limit", type=int, help="at most N utterances / recordings per split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="torch device for the accuracy half, e.g. cuda (the speed and RSS figures are always "
                        "measured on the CPU, where their goals are set)")
    p.add_argument("--speed-seconds", type=float, default=180.0, help="audio timed for the RTF figures")
    p.add_argument("--rss-seconds", type=float, default=3600.0, help="audio streamed for the RSS figure")
    p.add_argument("--skip", choices=("accuracy", "speed"), help="leave one half out")
    add_lm_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {}
    if args.skip != "accuracy":
        out.update(accuracy(args.data, args.checkpoint, args.no_memory, args.full_attention, limit=args.limit,
                            lm=lm_from_args(args), device=args.device))
        out["device"] = args.device
    if args.skip != "speed":
        goals = out.pop("goals", {})
        out.update(speed_and_memory(args.data, args.checkpoint, threads=args.threads,
                                    speed_seconds=args.speed_seconds, rss_seconds=args.rss_seconds))
        out["goals"] = {**goals, **out["goals"]}
    print(json.dumps(out))
    return 0
