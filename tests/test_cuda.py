"""The CUDA path: every memory type streams on the GPU as on the CPU, every task's bundled model gives the
same events through the runner with ``device="cuda"`` as with the CPU, ``eval asr --device cuda`` gives the
CPU's transcripts, and ``train asr --device cuda`` trains.

Skipped where no CUDA device is visible (CI and the development machines have none); run it on a GPU machine
with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import VARIANTS, build_core, make_stream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

B = 3


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    """TF32 would make CUDA differ from the CPU by ~1e-3, which hides real mistakes: compare in fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _stream(core, x: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """x: (B, S, D), resets: (segments, B) bool -> outputs (B, S, D), segment by segment through ``step``."""
    t, device = core.cfg.segment, x.device
    state = core.init_state(x.shape[0], device)
    mask = torch.ones(x.shape[0], t, dtype=torch.bool, device=device)
    ys = []
    for i in range(x.shape[1] // t):
        y, state = core.step(x[:, i * t:(i + 1) * t], state, resets[i].to(device), mask)
        ys.append(y)
    return torch.cat(ys, dim=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_cuda_streaming_equals_sequence_and_cpu(variant):
    core = build_core(variant)
    t, n = core.cfg.segment, 9
    x = make_stream(B, n, t, core.cfg.dim)
    no_resets = torch.zeros(n, B, dtype=torch.bool)
    resets = torch.rand(n, B, generator=torch.Generator().manual_seed(1)) < 0.2
    resets[0] = False
    cpu = _stream(core, x, resets)
    gpu_core = core.to("cuda")
    gpu = _stream(gpu_core, x.cuda(), resets)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() <= 1e-4, "CUDA step differs from the CPU step"
    whole = gpu_core.forward_sequence(x.cuda(), torch.ones(B, n * t, dtype=torch.bool, device="cuda"))
    streamed = _stream(gpu_core, x.cuda(), no_resets)
    assert (whole - streamed).abs().max().item() <= 1e-4, "CUDA streaming differs from forward_sequence"


def _close(a, b, path: str = "") -> None:
    """Events from two devices: same structure and strings, numbers within 1e-3 (relative for large ones)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-3), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _events(task, sample, device: str) -> list[dict]:
    from memstream.pipelines.launch import stream

    events: list[dict] = []

    class Collect:
        def write(self, event: dict) -> None:
            events.append(json.loads(json.dumps(event, default=float)))

        def close(self) -> None:
            pass

    for _ in stream(task, str(sample), device=device, sinks=[Collect()]):
        pass
    return events


def _task_and_sample(name: str):
    if name == "asr":
        from memstream.pipelines.asr import bundled_sample
        from memstream.pipelines.asr_task import AsrTask

        return AsrTask, bundled_sample()
    if name == "action":
        from memstream.pipelines.action import bundled_sample
        from memstream.pipelines.action_task import ActionTask

        return ActionTask, bundled_sample()
    if name == "track":
        from memstream.pipelines.track_task import TrackTask, bundled_track_dir

        info = json.loads((bundled_track_dir() / "sample.json").read_text())
        return (lambda: TrackTask(frame_rate=info["fps"])), bundled_track_dir() / "sample.mp4"
    from memstream.pipelines.anomaly_task import AnomalyTask, bundled_anomaly_dir

    return (lambda: AnomalyTask(calibration_s=4.0)), bundled_anomaly_dir() / "sample.mp4"


@pytest.mark.parametrize("name", ["asr", "action", "track", "anomaly"])
def test_cuda_task_events_equal_cpu(name):
    make_task, sample = _task_and_sample(name)
    if not sample.is_file():
        pytest.skip(f"no bundled sample {sample}")
    cpu = _events(make_task(), sample, "cpu")
    gpu = _events(make_task(), sample, "cuda")
    assert cpu, f"{name}: the bundled sample gave no events"
    _close(gpu, cpu, name)


def _sample_corpus(folder) -> str:
    """The bundled ASR sample cut into four ~7 s clips, each with a quarter of the words (alignment is not the
    point), as a ``transcripts.tsv`` corpus."""
    import soundfile as sf
    from memstream.pipelines.asr import bundled_sample
    from memstream.pipelines.asr_task import bundled_asr_dir

    audio, rate = sf.read(str(bundled_sample()), dtype="float32")
    words = (bundled_asr_dir() / "sample.txt").read_text().split()
    folder.mkdir()
    rows = ["file\treference"]
    for i in range(4):
        n = len(audio) // 4
        sf.write(str(folder / f"u{i}.flac"), audio[i * n:(i + 1) * n], rate)
        rows.append(f"u{i}.flac\t{' '.join(words[i * len(words) // 4:(i + 1) * len(words) // 4])}")
    (folder / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    return str(folder)


def test_cuda_eval_asr_gives_the_cpus_transcripts(tmp_path, capsys):
    from memstream.pipelines import cli

    corpus = _sample_corpus(tmp_path / "corpus")
    hypotheses = {}
    for device in ("cpu", "cuda"):
        details = tmp_path / f"{device}.jsonl"
        assert cli.main(["eval", "asr", "--data", corpus, "--json", "--device", device, "--details", str(details)]) == 0
        assert json.loads(capsys.readouterr().out)["device"] == device
        hypotheses[device] = [json.loads(line)["hypothesis"] for line in details.read_text().splitlines()]
    assert hypotheses["cuda"] == hypotheses["cpu"]


def test_cuda_train_asr_runs_and_loads_on_cpu(tmp_path):
    """A few optimiser steps of ``memstream train asr --device cuda``; the checkpoint loads on the CPU."""
    from memstream.pipelines.asr import cli_train
    from memstream.pipelines.asr_task import load_asr_model

    corpus = _sample_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    assert cli_train(["--data", corpus, "--out", str(out), "--steps", "3", "--batch-seconds", "30",
                      "--device", "cuda", "--log-every", "1"]) == 0
    model, _ = load_asr_model(str(out))
    assert next(model.parameters()).device.type == "cpu"
    assert all(torch.isfinite(p).all() for p in model.parameters())
