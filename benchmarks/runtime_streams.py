"""Throughput of the runtime with N streams batched into one step vs the same streams stepped one at a time.

    python benchmarks/runtime_streams.py [--preset core-tiny] [--set dim=32] [--streams 1,2,4,8] [--repeats 5]
                                         [--device cuda] [--backend onnx]

Prints one JSON object:
- ``throughput``: segments/s through the whole runner (segmenter, encode, step, decoder, a JSON Lines sink
  to /dev/null) with N streams, ``batched`` (one step for every ready stream) and ``sequential``
  (``max_batch=1``: the same streams, one step per segment);
- ``throughput_speedup``: batched / sequential per N; ``speedup_vs_one_stream``: batched(N) / batched(1),
  the figure of the goal "8 streams batched >= 5x one stream's throughput";
- ``runtime_overhead_ms``: runner wall time per segment minus model step time per segment (batched; the
  sequential figure beside it);
- ``model_only``: the bare ``backend.step`` at batch 1 and N (no runner), the ceiling batching can reach;
- ``speedup_vs_one_stream_per_repeat``: batched(N) / batched(1) within each repeat, the spread behind the median
  (on a shared 2-core machine runs of the same code differ by 20% and more);
- ``speedup_vs_one_stream_reader_threads``, ``throughput_reader_threads``, ``runtime_overhead_ms_reader_threads``:
  batched again with a reader thread per source, as live sources (cameras, microphones, network streams) have.

With ``--device cuda`` every step time includes the GPU's work: the backend returns the outputs on the CPU.
``--backend onnx`` runs the step exported to ONNX (a temporary file) in ONNX Runtime, ``--threads`` intra-op
threads, the CUDA provider with ``--device cuda``.

Sources are in memory (one packet per segment of 16 kHz mono noise), so decoding does not dominate; like local
audio files they are read on the runner's loop (``Source.read_on_loop``). Every repeat runs every configuration in
turn (interleaved) and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from memstream.export import OnnxBackend, TorchBackend, export_step
from memstream.models import build
from memstream.pipelines.core_task import CoreProbeTask
from memstream.pipelines.runner import StreamRunner
from memstream.pipelines.sinks import JsonlSink
from memstream.pipelines.streams import Packet, Source, SourceInfo


class MemorySource(Source):
    """Pre-made audio packets, no pacing; read on the runner's loop like a local audio file, or (``read_on_loop``
    False) by a reader thread of its own, as a live source is."""

    def __init__(self, name: str, packets: list[Packet], read_on_loop: bool = True) -> None:
        self.name, self.packets, self.read_on_loop = name, packets, read_on_loop

    def open(self) -> SourceInfo:
        self.info = SourceInfo("audio", 16000, 1)
        return self.info

    def __iter__(self):
        yield from self.packets


def make_packets(task: CoreProbeTask, segments: int, seed: int) -> list[Packet]:
    rng = np.random.default_rng(seed)
    n = task.segment_size
    x = (0.1 * rng.standard_normal((segments * n, 1))).astype(np.float32)
    return [Packet(x[i:i + n], i / 16000) for i in range(0, len(x), n)]


def run_once(task, backend, packets: list[list[Packet]], sequential: bool, reader_threads: bool = False) -> dict:
    n = len(packets)
    sink = JsonlSink(os.devnull)  # events serialised as in a real run, then dropped
    runner = StreamRunner(task, backend, [sink], max_streams=n, batch_timeout=0.005,
                          max_batch=1 if sequential else None, queue_size=8)
    for k, p in enumerate(packets):
        runner.add(MemorySource(f"m{k}", p, read_on_loop=not reader_threads))
    t0 = time.perf_counter()
    summary = runner.run()
    wall = time.perf_counter() - t0
    total = summary["total"]
    segments = total["segments"]
    step_s = runner.stats.steps.total
    return {"throughput": segments / wall, "overhead_ms": 1e3 * (wall - step_s) / segments,
            "step_ms": 1e3 * step_s / segments, "mean_batch": total["mean_batch"]}


def model_only(task, backend, n: int, steps: int = 100) -> float:
    """Segments/s of the bare backend step at batch n."""
    x, mask = task.encode([task_segment(task)] * n)
    state = backend.init_state(n)
    reset = torch.zeros(n, dtype=torch.bool)
    for _ in range(5):
        _, state = backend.step(x, state, reset, mask)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, state = backend.step(x, state, reset, mask)
    return n * steps / (time.perf_counter() - t0)


def make_backend(task, name: str, device: str, threads: int, folder: str):
    """The model behind ``task`` as a ``torch`` or ``onnx`` backend on ``device``."""
    if name == "torch":
        return TorchBackend(task.model, device)
    cfg = task.model.cfg
    path = Path(folder) / "core.onnx"
    export_step(task.model, path, torch.zeros(2, cfg.segment, cfg.dim))
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return OnnxBackend(path, providers=providers, threads=threads)


def device_of(backend) -> tuple[str, str | None]:
    """(device, its name) of a backend: the torch device, or ONNX Runtime's first provider."""
    if isinstance(backend, OnnxBackend):
        return backend.session.get_providers()[0], None
    cuda = backend.device.type == "cuda"
    return str(backend.device), torch.cuda.get_device_name(backend.device) if cuda else None


def task_segment(task):
    from memstream.pipelines.launch import _dummy_segment

    return _dummy_segment(task)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="core-tiny", help="core preset (default core-tiny, the `run core` default)")
    p.add_argument("--streams", default="1,2,4,8", help="stream counts to measure")
    p.add_argument("--segments", type=int, default=150, help="segments per stream per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a CoreConfig field of the preset (e.g. --set dim=32 --set heads=2)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of torch or ONNX Runtime (default 1: at these sizes more threads only add "
                        "sync cost)")
    p.add_argument("--device", default="cpu", help="torch device of the model step, e.g. cuda (default cpu)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="eager PyTorch (default) or the exported step in ONNX Runtime")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.streams.split(",")]
    overrides = {k: int(v) if v.isdigit() else v for k, v in (item.split("=", 1) for item in args.set)}
    task = CoreProbeTask("audio", build(args.preset, **overrides))
    with tempfile.TemporaryDirectory() as folder:
        backend = make_backend(task, args.backend, args.device, args.threads, folder)
        print(json.dumps(measure(args, task, backend, counts)))


def measure(args, task, backend, counts: list[int]) -> dict:
    """Every configuration, interleaved within each repeat -> the result object."""
    packets = [make_packets(task, args.segments, seed=k) for k in range(max(counts))]
    run_once(task, backend, packets[:2], sequential=False)  # warm-up
    runs: dict[tuple[int, str], list[dict]] = {}
    models: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        for n in counts:
            for mode in ("batched", "sequential", "batched_reader_threads"):
                runs.setdefault((n, mode), []).append(run_once(task, backend, packets[:n], mode == "sequential",
                                                               mode == "batched_reader_threads"))
            models.setdefault(n, []).append(model_only(task, backend, n))
        models.setdefault(1, [])
        if 1 not in counts:
            models[1].append(model_only(task, backend, 1))

    def med(n, mode, key):
        return statistics.median(r[key] for r in runs[(n, mode)])

    base = med(counts[0], "batched", "throughput") if counts[0] == 1 else None
    model_1 = statistics.median(models[1])
    cfg = task.model.cfg
    device, device_name = device_of(backend)
    result = {
        "preset": args.preset, "core": {"dim": cfg.dim, "heads": cfg.heads, "layers": cfg.layers,
                                        "segment": cfg.segment, "memory": cfg.memory},
        "backend": args.backend, "threads": args.threads, "cpu_count": os.cpu_count(),
        "device": device, "device_name": device_name,
        "segments_per_stream": args.segments, "repeats": args.repeats,
        "throughput": {str(n): {"batched": round(med(n, "batched", "throughput"), 1),
                                "sequential": round(med(n, "sequential", "throughput"), 1)} for n in counts},
        "throughput_speedup": {str(n): round(med(n, "batched", "throughput") / med(n, "sequential", "throughput"), 3)
                               for n in counts},
        "speedup_vs_one_stream": ({str(n): round(med(n, "batched", "throughput") / base, 3) for n in counts}
                                  if base else None),
        # The same with a reader thread per source (as live sources have), in the same repeats.
        "speedup_vs_one_stream_reader_threads": (
            {str(n): round(med(n, "batched_reader_threads", "throughput")
                           / med(1, "batched_reader_threads", "throughput"), 3) for n in counts} if base else None),
        "throughput_reader_threads": {str(n): round(med(n, "batched_reader_threads", "throughput"), 1)
                                      for n in counts},
        "runtime_overhead_ms_reader_threads": {str(n): round(med(n, "batched_reader_threads", "overhead_ms"), 4)
                                               for n in counts},
        "runtime_overhead_ms": {str(n): round(med(n, "batched", "overhead_ms"), 4) for n in counts},
        "runtime_overhead_ms_sequential": {str(n): round(med(n, "sequential", "overhead_ms"), 4) for n in counts},
        "model_step_ms_per_segment": {str(n): round(med(n, "batched", "step_ms"), 4) for n in counts},
        "mean_batch": {str(n): med(n, "batched", "mean_batch") for n in counts},
        "model_only": {"throughput": {str(n): round(statistics.median(models[n]), 1) for n in counts},
                       "speedup": {str(n): round(statistics.median(models[n]) / model_1, 3) for n in counts}},
        "speedup_vs_one_stream_per_repeat": (
            {str(n): [round(r["throughput"] / r1["throughput"], 3) for r, r1 in zip(runs[(n, "batched")],
                                                                                     runs[(1, "batched")], strict=True)]
             for n in counts} if base else None),
    }
    return result


if __name__ == "__main__":
    main()
