"""`memstream export core` and `memstream bench core`: the bare memory core as a product."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from memstream.memory import MEMORY_TYPES, CoreConfig, MemoryCore
from memstream.models import build, list_models, load_weights, read_config

INIT_SEED = 0  # weights of a core built from a preset or config (no checkpoint)


def _core_from_args(args: argparse.Namespace) -> MemoryCore:
    """A core from --checkpoint, --config (JSON of CoreConfig fields) or --preset, with --memory on top."""
    overrides = {"memory": args.memory} if args.memory else {}
    if args.checkpoint:
        saved = read_config(args.checkpoint)
        cfg = CoreConfig.from_dict(saved.get("core", saved.get("config", {}))).replace(**overrides)
        return load_weights(args.checkpoint, MemoryCore(cfg))
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path}: not valid JSON ({e})") from e
        cfg = CoreConfig.from_dict(fields).replace(**overrides)
    with torch.random.fork_rng():  # untrained weights from a fixed seed: runs repeat, torch and ONNX compare
        torch.manual_seed(INIT_SEED)
        return MemoryCore(cfg) if args.config else build(args.preset, **overrides)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    cores = [m for m in list_models() if m.startswith("core-")]
    p.add_argument("--preset", default="core-small", choices=cores, help="core preset (default core-small)")
    p.add_argument("--config", help="JSON file of CoreConfig fields (instead of --preset)")
    p.add_argument("--checkpoint", help="checkpoint folder (config.json + model.safetensors) to export")
    p.add_argument("--memory", choices=MEMORY_TYPES, help="memory type, overriding the preset/config")


def cli_export(argv: list[str]) -> int:
    from memstream.export import DEFAULT_OPSET, FALLBACK_OPSET, export_step

    p = argparse.ArgumentParser(prog="memstream export core",
                                description="Export the core's streaming step (state in, state out) to ONNX.")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=(DEFAULT_OPSET, FALLBACK_OPSET),
                   help="23: standard Attention op (default); 18: decomposed attention for older runtimes")
    args = p.parse_args(argv)
    core = _core_from_args(args).eval()
    cfg = core.cfg
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = export_step(core, out, torch.zeros(2, cfg.segment, cfg.dim), opset=args.opset)
    print(json.dumps({
        "onnx": str(out), "opset": args.opset, "memory": cfg.memory, "segment": cfg.segment,
        "inputs": [i.name for i in proto.graph.input], "outputs": [o.name for o in proto.graph.output],
        "bytes": out.stat().st_size,
    }))
    return 0


def cli_bench(argv: list[str]) -> int:
    from memstream.pipelines import core_bench

    p = argparse.ArgumentParser(
        prog="memstream bench core",
        description="Streaming cost of the core: step latency early and late in a stream, RSS growth, state "
                    "bytes, against a growing KV cache, torchaudio's Emformer and ONNX Runtime. One JSON object.")
    p.add_argument("--preset", default="core-small", choices=[m for m in list_models() if m.startswith("core-")])
    p.add_argument("--memory", default=",".join(t for t in MEMORY_TYPES if t != "none"),
                   help="comma-separated memory types to measure")
    p.add_argument("--steps", type=int, default=20_000, help="stream length in segments (default 20000)")
    p.add_argument("--early", type=int, default=100, help="the early step to compare against (default 100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=300, help="timed steps per side-by-side comparison")
    p.add_argument("--no-recall", action="store_true", help="skip recall of the bundled recall models")
    args = p.parse_args(argv)
    types = [t for t in args.memory.split(",") if t]
    for t in types:
        if t not in MEMORY_TYPES:
            raise ValueError(f"--memory: unknown memory type {t!r}; choose from {', '.join(MEMORY_TYPES)}")
    if args.early < 1 or args.steps <= args.early:
        raise ValueError(f"--steps {args.steps} must exceed --early {args.early} >= 1")
    result = core_bench.run(args.preset, types, steps=args.steps, early=args.early, threads=args.threads,
                            repeats=args.repeats, recall=not args.no_recall)
    print(json.dumps(result))
    return 0
