"""``memstream bench action``: accuracy with and without memory, and end-to-end speed, in one JSON object.

Accuracy (held-out synthetic videos, streamed and decoded online as ``memstream run action`` does): the memory
model against the same model trained without memory (``--window-only``: one segment, no boundary queue) and
against a window-only model with segments twice as long; mAP@0.5 overall and on the long-action subset
(DETAD-style bucketing, see :mod:`memstream.pipelines.action_eval`).

Speed: end-to-end frames per second through the runtime on 2 cores, decode (memstream's video source),
resampling and resizing (the segmenter), encode, backbone, core, heads and the online decoder, for PyTorch
and ONNX Runtime, interleaved rounds on the same videos (ratios are what to compare on a noisy machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

GOALS = {"map50": 0.7, "long_gain_over_window": 0.10, "fps_onnx": 30.0}


def accuracy(data: str | Path, memory: str | None, window: str | None, window2x: str | None,
             limit: int | None = None, threads: int = 2) -> dict:
    from memstream.pipelines.action import _annotations_path, load_clips
    from memstream.pipelines.action_eval import evaluate_clips
    from memstream.pipelines.action_task import load_action_model

    annotations = _annotations_path(data)
    threshold = json.loads(annotations.read_text()).get("long_threshold", 6.0)
    torch.set_num_threads(threads)
    out: dict = {"long_threshold_s": threshold}
    clips_by_size: dict = {}
    for key, checkpoint in (("", memory), ("_no_memory", window), ("_window2x", window2x)):
        if key and checkpoint is None:
            continue
        model, _ = load_action_model(checkpoint)
        size = (model.cfg.fps, model.cfg.image_size)
        if size not in clips_by_size:
            clips_by_size[size] = load_clips(annotations, "test", model.cfg, limit=limit)
        clips = clips_by_size[size]
        r = evaluate_clips(model, clips, long_threshold=threshold)
        out[f"map50{key}"] = r["map"]["0.5"]
        out[f"map_mean{key}"] = r["map"]["mean"]
        out[f"map50_long{key}"] = r.get("map_long", {}).get("0.5")
        out[f"frame_map{key}"] = r["frame_map"]
        out[f"latency_median_s{key}"] = r["latency_s"].get("median")
        out[f"segment_frames{key}"] = model.cfg.segment
        if not key:
            out.update(videos=r["videos"], instances=r["instances"], instances_long=r.get("instances_long"),
                       map=r["map"], map_long=r.get("map_long"), latency_s=r["latency_s"], events=r["events"])
            out.update(onnx_agreement(model, clips, r))
    return out


def onnx_agreement(model, clips, torch_result: dict) -> dict:
    """The same evaluation through the exported graph in ONNX Runtime: its mAP and how many events equal
    PyTorch's (label, start, end and emission time exactly; score to 1e-4)."""
    from memstream.pipelines.action_eval import backend_for, evaluate_clips

    r = evaluate_clips(model, clips, backend=backend_for(model, "onnx"))

    def key(e: dict) -> tuple:
        return e["label"], e["segment"][0], e["segment"][1], e["emitted"], round(e["score"], 4)

    same = total = 0
    for name, events in torch_result["predictions"].items():
        theirs = {key(e) for e in r["predictions"].get(name, [])}
        same += sum(key(e) in theirs for e in events)
        total += max(len(events), len(r["predictions"].get(name, [])))
    return {"map50_onnx": r["map"]["0.5"], "onnx_events_equal": same, "onnx_events_total": total}


def speed(data: str | Path, checkpoint: str | None, videos: int = 3, rounds: int = 2, threads: int = 2) -> dict:
    """End-to-end frames/s of ``memstream run action`` on ``videos`` test videos, torch vs ONNX Runtime."""
    import tempfile

    from memstream.export import OnnxBackend, TorchBackend
    from memstream.pipelines.action import _annotations_path, export_action
    from memstream.pipelines.action_data import read_annotations
    from memstream.pipelines.action_task import ActionTask
    from memstream.pipelines.launch import stream

    torch.set_num_threads(threads)
    task = ActionTask(checkpoint=checkpoint)
    paths = [v.path for _, v in sorted(read_annotations(_annotations_path(data), subset="test").items())][:videos]
    onnx_path = Path(tempfile.mkdtemp(prefix="memstream-bench-action-")) / "action.onnx"
    export_action(task.model, onnx_path)
    backends = {"torch": TorchBackend(task.model), "onnx": OnnxBackend(onnx_path, providers=["CPUExecutionProvider"],
                                                                        threads=threads)}
    totals = {name: [0, 0.0] for name in backends}
    for backend in backends.values():  # warm-up, not timed: kernels and allocations made on first use
        for _ in stream(task, str(paths[0]), backend=backend):
            pass
    for _ in range(rounds):
        for name, backend in backends.items():  # interleaved: drift on a shared machine hits both
            for path in paths:
                start = time.perf_counter()
                frames = 0
                for result in stream(task, str(path), backend=backend):
                    frames += int(result.segment.num_valid) if result.segment is not None else 0
                totals[name][0] += frames
                totals[name][1] += time.perf_counter() - start
    out = {f"fps_{name}": round(f / s, 1) for name, (f, s) in totals.items()}
    out.update(speed_videos=len(paths), speed_frames=totals["torch"][0] // rounds, threads=threads,
               image_size=task.model.cfg.image_size, model_fps=task.fps,
               onnx_over_torch=round(out["fps_onnx"] / out["fps_torch"], 2))
    return out


def cli_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream bench action", description=(
        "Action localization: mAP@0.5 of memory vs window-only vs a window twice as long (overall and on long "
        "actions), and end-to-end frames per second for PyTorch and ONNX Runtime. Prints one JSON object."))
    p.add_argument("--data", required=True, help="a memstream data synth-actions folder (its test subset is used)")
    p.add_argument("--checkpoint", help="the memory model (default: the bundled action-small)")
    p.add_argument("--window", help="checkpoint trained with --window-only (same data and steps)")
    p.add_argument("--window2x", help="checkpoint trained with --window-only --segment 2T")
    p.add_argument("--limit", type=int, help="at most N test videos for accuracy")
    p.add_argument("--speed-videos", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", choices=("accuracy", "speed"), help="leave one half out")
    args = p.parse_args(argv)
    result: dict = {}
    if args.skip != "accuracy":
        result.update(accuracy(args.data, args.checkpoint, args.window, args.window2x, args.limit, args.threads))
    if args.skip != "speed":
        result.update(speed(args.data, args.checkpoint, args.speed_videos, threads=args.threads))
    goals = {}
    if "map50" in result:
        goals["map50>=0.7"] = result["map50"] >= GOALS["map50"]
        if result.get("map50_long") is not None and result.get("map50_long_no_memory") is not None:
            gain = result["map50_long"] - result["map50_long_no_memory"]
            result["long_gain_over_window"] = round(gain, 4)
            goals["memory>=window+0.10_on_long"] = gain >= GOALS["long_gain_over_window"]
    if "fps_onnx" in result:
        goals["fps_onnx>=30"] = result["fps_onnx"] >= GOALS["fps_onnx"]
    result["goals"] = goals
    print(json.dumps(result))
    return 0
