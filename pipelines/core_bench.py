"""Streaming cost of the memory core, side by side with its peers in one run (``memstream bench core``).

Machines here are noisy, so every comparison interleaves the contenders step by step and reports
ratios of medians:
- each memory type streamed for ``steps`` segments at batch 1: p50/p99 step latency early and late,
  RSS growth, state bytes;
- a growing KV cache (full attention over all history, same blocks and weights) at the same lengths;
- torchaudio's ``Emformer`` with the same width, depth, segment, memory size and feed-forward (GELU, as the core;
  torchaudio's default ReLU beside it, ``speedup_vs_emformer_relu``);
- the same step exported to ONNX and run by ONNX Runtime.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from memstream.memory import MemoryCore
from memstream.models import build
from torch import Tensor


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


def _ms(values: list[float]) -> dict:
    return {"p50_ms": round(1e3 * statistics.median(values), 4), "p99_ms": round(1e3 * percentile(values, 99), 4)}


def state_bytes(state) -> int:
    """Bytes the state holds: its tensors' storages, each counted once (an eager step may return views of a
    buffer a little larger than the fields, e.g. the queue's [memory ; segment])."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state}
    return sum(storages.values())


def stream(core: MemoryCore, steps: int, early: int, repeats: int = 300) -> dict:
    """Stream ``steps`` random segments through ``core.step`` at batch 1.

    Latency at step ``early`` and at step ``steps`` is measured side by side: the states of both moments
    are kept, and rounds alternate one step from each (always from the same saved state), so machine
    noise hits both alike. The whole run's per-step times are reported too. RSS growth is measured from
    step max(early, 1000) to the end.
    """
    cfg = core.cfg
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 1, cfg.segment, cfg.dim, generator=gen)  # cycled: input content does not change cost
    reset = torch.zeros(1, dtype=torch.bool)
    mask = torch.ones(1, cfg.segment, dtype=torch.bool)
    state = core.init_state(1)
    times: list[float] = []
    # RSS is compared from the end of a warm-up (the allocator's pools settle in the first ~1000 steps,
    # and the saved early state is held from then on) to the end of the stream.
    warm = min(max(early, 1000), steps)
    gc.collect()
    rss_start = rss_mb()
    with torch.inference_mode():
        for i in range(steps):
            t0 = time.perf_counter()
            _, state = core.step(xs[i % 64], state, reset, mask)
            times.append(time.perf_counter() - t0)
            if i + 1 == early:
                saved_early = state
            if i + 1 == warm:
                gc.collect()
                rss_warm = rss_mb()
        gc.collect()
        rss_late = rss_mb()
        x = xs[0]
        paired = interleaved({"early": lambda: core.step(x, saved_early, reset, mask),
                              "late": lambda: core.step(x, state, reset, mask)}, repeats)
    ratio = statistics.median(paired["late"]) / statistics.median(paired["early"])
    return {
        "early": {"step": early, **_ms(paired["early"])}, "late": {"step": steps, **_ms(paired["late"])},
        "latency_ratio": round(ratio, 4),
        "run": {"first_half": _ms(times[: steps // 2]), "second_half": _ms(times[steps // 2:])},
        "rss_growth_mb": round(rss_late - rss_warm, 3), "rss_from_step": warm,
        "rss_mb": {"before": round(rss_start, 1), f"step_{warm}": round(rss_warm, 1), "after": round(rss_late, 1)},
        "state_bytes": state_bytes(state), "state_bytes_early": state_bytes(saved_early),
    }


class GrowingKVCache:
    """Full attention over all history: the same blocks and weights, a KV cache that grows per segment.

    The cache is preallocated (as a static cache would be) so a step costs attention over the history,
    not a copy of it.
    """

    def __init__(self, core: MemoryCore, capacity_tokens: int) -> None:
        self.core = core
        cfg = core.cfg
        shape = (len(core.blocks), 1, cfg.heads, capacity_tokens, cfg.head_dim)
        self.keys = torch.randn(shape) * 0.1
        self.values = torch.randn(shape) * 0.1
        self.length = 0

    def fill(self, tokens: int) -> None:
        """Pretend ``tokens`` of history were seen (their content does not change the cost)."""
        self.length = tokens

    @property
    def bytes(self) -> int:
        per_token = self.keys[:, :, :, :1].numel() * 2 * self.keys.element_size()
        return per_token * self.length

    def step(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        pos = (self.length + torch.arange(t)).unsqueeze(0)
        cos, sin = self.core.rotary(pos)
        h = x
        end = self.length + t
        for layer, block in enumerate(self.core.blocks):
            q, k, v = block.project(h, cos, sin)
            self.keys[layer, :, :, self.length:end] = k
            self.values[layer, :, :, self.length:end] = v
            attn = torch.nn.functional.scaled_dot_product_attention(
                q, self.keys[layer, :, :, :end], self.values[layer, :, :, :end])
            h = block.finish(h, attn)
        self.length = end
        return self.core.norm(h)


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 20,
                block: int = 1) -> dict[str, list]:
    """Time each contender ``block`` steps in a row per round, round after round, so load changes hit all
    alike; ``repeats`` timed steps per contender in all."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(max(1, repeats // block)):
        for name, fn in contenders.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


ONNX_BLOCK = 100


def _stepper(step: Callable, state0, x: Tensor, reset: Tensor, mask: Tensor) -> Callable[[], None]:
    box = [state0]

    def run() -> None:
        _, box[0] = step(x, box[0], reset, mask)

    return run


def compare_peers(core: MemoryCore, repeats: int, late_tokens: int) -> dict:
    """Eager core vs growing KV cache (early and late) vs Emformer vs ONNX Runtime, interleaved."""
    from memstream.export import OnnxBackend, export_step
    from torchaudio.models import Emformer

    cfg = core.cfg
    x = torch.randn(1, cfg.segment, cfg.dim)
    reset = torch.zeros(1, dtype=torch.bool)
    mask = torch.ones(1, cfg.segment, dtype=torch.bool)
    mem = max(cfg.layer_memory_lengths)
    same = {"activation": "gelu"}  # the core's feed-forward; torchaudio's default is ReLU, a cheaper one
    emformers = {
        # Same width, depth, segment and feed-forward; Emformer's memory bank holds `mem` summary vectors, so both
        # attend over mem + segment keys per layer.
        "emformer": Emformer(cfg.dim, cfg.heads, cfg.ff_mult * cfg.dim, cfg.layers, cfg.segment,
                             left_context_length=0, right_context_length=0, max_memory_size=mem, **same).eval(),
        # The other reading of "memory size": `mem` frames of cached left context, no memory bank.
        "emformer_left_context": Emformer(cfg.dim, cfg.heads, cfg.ff_mult * cfg.dim, cfg.layers, cfg.segment,
                                          left_context_length=mem, right_context_length=0,
                                          max_memory_size=0, **same).eval(),
        # torchaudio's default activation, for reference: the same Emformer with a ReLU feed-forward.
        "emformer_relu": Emformer(cfg.dim, cfg.heads, cfg.ff_mult * cfg.dim, cfg.layers, cfg.segment,
                                  left_context_length=0, right_context_length=0, max_memory_size=mem).eval(),
    }
    lengths = torch.tensor([cfg.segment])

    def emformer_runner(model) -> Callable[[], None]:
        box = [None]

        def run() -> None:
            _, _, box[0] = model.infer(x, lengths, box[0])

        return run

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        path = Path(tmp) / "core.onnx"
        with torch.inference_mode(False):
            export_step(core, path, torch.zeros(2, cfg.segment, cfg.dim))
        # ORT as deployed (it owns the cores, its pool spin-waits between runs); the contenders take turns
        # in blocks of 100 steps so a spinning thread pool (ORT's or OpenMP's) only overlaps the first steps.
        onnx = OnnxBackend(path, providers=["CPUExecutionProvider"], threads=torch.get_num_threads())
        session = onnx.session
        feeds = {"x": x.numpy(), "reset": reset.numpy(), "mask": mask.numpy()}
        feeds.update({f"state.{f}": t.numpy() for f, t in zip(onnx.fields, onnx.init_state(1), strict=True)})
        n_out = len(onnx.output_names)

        def onnx_raw() -> None:
            # The runtime alone: state stays in numpy between steps, no torch conversion.
            out = session.run(None, feeds)
            for f, t in zip(onnx.fields, out[n_out:], strict=True):
                feeds[f"state.{f}"] = t

        growing_early = GrowingKVCache(core, 100 * cfg.segment + (repeats + 40) * cfg.segment)
        growing_early.fill(99 * cfg.segment)
        eager = _stepper(core.step, core.init_state(1), x, reset, mask)
        # Two rounds of side-by-side timing: PyTorch contenders together, then eager vs ONNX Runtime.
        times = interleaved({"eager": eager, "growing_kv_early": lambda: growing_early.step(x),
                             **{k: emformer_runner(m) for k, m in emformers.items()}}, repeats)
        vs_onnx = interleaved({"eager": eager, "onnx": _stepper(onnx.step, onnx.init_state(1), x, reset, mask),
                               "onnx_raw": onnx_raw}, repeats, block=ONNX_BLOCK)
        times.update({"eager_vs_onnx": vs_onnx["eager"], "onnx": vs_onnx["onnx"], "onnx_raw": vs_onnx["onnx_raw"]})
        # The growing cache at the late length is slow: fewer rounds, timed on its own.
        growing_late = GrowingKVCache(core, late_tokens + 40 * cfg.segment)
        growing_late.fill(late_tokens - cfg.segment)
        late = interleaved({"growing_kv_late": lambda: growing_late.step(x)}, max(5, repeats // 20), warmup=3)
        late_bytes = growing_late.bytes
        growing_late.keys = growing_late.values = None  # gigabytes at long lengths
    med = {k: statistics.median(v) for k, v in {**times, **late}.items()}
    return {
        "latency": {k: _ms(v) for k, v in {**times, **late}.items()},
        "speedup_vs_emformer": round(med["emformer"] / med["eager"], 3),
        "speedup_vs_emformer_left_context": round(med["emformer_left_context"] / med["eager"], 3),
        "speedup_vs_emformer_relu": round(med["emformer_relu"] / med["eager"], 3),
        "onnx_speedup": round(med["eager_vs_onnx"] / med["onnx"], 3),
        "onnx_runtime_only_speedup": round(med["eager_vs_onnx"] / med["onnx_raw"], 3),
        "growing_kv_latency_ratio": round(med["growing_kv_late"] / med["growing_kv_early"], 3),
        "growing_kv_state_bytes_late": late_bytes,
    }


def run(preset: str, types: list[str], steps: int, early: int, threads: int, repeats: int,
        recall: bool = True) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    per_type = {}
    for memory in types:
        core = build(preset, memory=memory).eval()
        per_type[memory] = stream(core, steps, early, repeats)
    main = "queue" if "queue" in per_type else types[0]
    core = build(preset, memory=main).eval()
    peers = compare_peers(core, repeats, late_tokens=steps * core.cfg.segment)
    cfg = core.cfg
    result = {
        "preset": preset, "threads": threads, "steps": steps, "early_step": early, "main_memory": main,
        "shape": {"dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads, "segment": cfg.segment,
                  "memory_length": max(cfg.layer_memory_lengths)},
        "latency_ratio": per_type[main]["latency_ratio"],
        "rss_growth_mb": max(v["rss_growth_mb"] for v in per_type.values()),
        "state_bytes": {k: v["state_bytes"] for k, v in per_type.items()},
        **{k: v for k, v in peers.items() if k != "latency"},
        "latency": peers["latency"],
        "per_memory": per_type,
    }
    if recall:
        from memstream.pipelines.recall import bundled_recall

        result["recall"] = bundled_recall()
    return result
