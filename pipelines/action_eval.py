"""``memstream eval action``: detection mAP at tIoU 0.3-0.7, per-frame mAP, detection latency, speed.

Every video is streamed through the backend's step segment by segment and decoded online, exactly as
``memstream run action`` does; events are never revised. Metrics are ActivityNet's detection mAP
(:mod:`memstream.pipelines.action_metrics`), per-frame mAP over the class scores (sklearn AP, ambiguous
frames ignored), and latency = emission time - ground-truth end for each detected instance.

The long-action subset (instances of at least ``long_threshold`` seconds) follows DETAD's bucketing: the
ground truth is the long instances; a prediction belongs to the subset when the instance it overlaps most
is long, or, overlapping none, when it is itself that long.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from memstream.pipelines.action_decoder import DecoderConfig, add_decoder_arguments, decoder_from_args
from memstream.pipelines.action_task import check_onnx_matches, load_action_model, localize

log = logging.getLogger(__name__)


def long_subset(ground_truth: dict, predictions: dict[str, list[dict]], threshold: float) -> tuple[dict, dict]:
    """Ground truth and predictions restricted to long instances (see the module docstring)."""
    from memstream.pipelines.action_metrics import tiou

    gt_long, preds_long = {}, {}
    for name, video in ground_truth.items():
        spans = np.array([[i.start, i.end] for i in video.instances]).reshape(-1, 2)
        is_long = (spans[:, 1] - spans[:, 0]) >= threshold
        gt_long[name] = replace(video, instances=[i for i, k in zip(video.instances, is_long, strict=True) if k])
        kept = []
        for p in predictions.get(name, []):
            s, e = p["segment"]
            overlap = tiou((s, e), spans) if len(spans) else np.zeros(0)
            if len(overlap) and overlap.max() > 0:
                keep = bool(is_long[int(overlap.argmax())])
            else:
                keep = (e - s) >= threshold
            if keep:
                kept.append(p)
        preds_long[name] = kept
    return gt_long, preds_long


def backend_for(model, kind: str, onnx_path: str | None = None, threads: int | None = None):
    """``torch`` or ``onnx`` (exported to a temporary file unless ``onnx_path`` is given; a given graph must
    match the model's classes, rate and segment)."""
    from memstream.pipelines.action import export_action
    from memstream.pipelines.launch import model_backend

    return model_backend(model, kind, export=export_action, check=check_onnx_matches, onnx_path=onnx_path,
                         threads=threads)


def evaluate_clips(model, clips: Sequence, *, backend=None, decoder: DecoderConfig | None = None,
                   long_threshold: float | None = None, progress: bool = False, headline: bool = False) -> dict:
    """Stream each clip (:class:`memstream.pipelines.action.ActionClip`) through ``backend`` (default: the
    model in PyTorch) and score the online events against the clips' annotations."""
    from memstream.pipelines.action_data import ambiguous_mask, frame_targets
    from memstream.pipelines.action_metrics import TIOUS, detection_latency, detection_map, frame_map

    was_training = model.training
    cfg = model.cfg
    if backend is None:
        from memstream.export import TorchBackend

        backend = TorchBackend(model)
    classes = list(cfg.classes)
    ground_truth, predictions, scores, targets, ignore = {}, {}, [], [], []
    frames, start = 0, time.perf_counter()
    bar = _progress(len(clips)) if progress else None
    try:
        for clip in clips:
            result = localize(backend, clip.x, cfg, decoder)
            ground_truth[clip.name] = clip.video
            predictions[clip.name] = [{"label": e["label"], "score": e["score"], "segment": [e["start"], e["end"]],
                                       "emitted": e["emitted"]} for e in result["events"]]
            n = len(clip.x)
            scores.append(result["class_probs"][:, 1:])
            targets.append(frame_targets(clip.video, classes, cfg.fps, n)[:, 1:])
            ignore.append(ambiguous_mask(clip.video, cfg.fps, n))
            frames += n
            if bar is not None:
                bar.advance(bar.task_ids[0])
    finally:
        if bar is not None:
            bar.stop()
        model.train(was_training)
    seconds = time.perf_counter() - start
    det = detection_map(ground_truth, predictions, classes, TIOUS)
    fmap = frame_map(np.concatenate(scores), np.concatenate(targets), ignore=np.concatenate(ignore))
    latency = detection_latency(ground_truth, predictions)
    if headline:
        return {"map50": round(det["map"]["0.5"], 4), "map_mean": round(det["map"]["mean"], 4),
                "frame_map": round(fmap["frame_map"], 4)}
    result = {"map": {k: round(v, 4) for k, v in det["map"].items()}, "frame_map": round(fmap["frame_map"], 4),
              "latency_s": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in latency.items()
                            if k != "values"},
              "ap_per_class": {c: [round(a, 4) for a in v] for c, v in det["ap"].items()},
              "videos": len(clips), "frames": frames, "events": sum(len(v) for v in predictions.values()),
              "instances": sum(len(v.instances) for v in ground_truth.values()),
              "frames_per_second": round(frames / seconds, 1) if seconds > 0 else None,
              "latency_values": [round(v, 3) for v in latency.get("values", [])], "predictions": predictions}
    if long_threshold:
        gt_long, preds_long = long_subset(ground_truth, predictions, long_threshold)
        n_long = sum(len(v.instances) for v in gt_long.values())
        result["long_threshold_s"] = long_threshold
        result["instances_long"] = n_long
        if n_long:
            long_det = detection_map(gt_long, preds_long, classes, TIOUS)
            result["map_long"] = {k: round(v, 4) for k, v in long_det["map"].items()}
    return result


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("eval action"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True, console=None)
    bar.add_task("videos", total=total)
    bar.start()
    return bar


def plot_results(result: dict, path: str | Path) -> Path:
    """Two panels: AP@0.5 per class, and the histogram of detection latency."""
    from memstream.pipelines.figures import pyplot, save_figure

    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(result["ap_per_class"])
    ap50 = [result["ap_per_class"][c][2] for c in names]  # tIoU 0.3, 0.4, 0.5, ...
    a.barh(names, ap50, color="#3b7dd8")
    a.set_xlim(0, 1)
    a.set_xlabel("AP at tIoU 0.5")
    a.set_title(f"mAP@0.5 {result['map']['0.5']:.3f}  (mean 0.3-0.7: {result['map']['mean']:.3f})")
    a.invert_yaxis()
    values = result.get("latency_values") or []
    if values:
        b.hist(values, bins=30, color="#d8843b")
        b.axvline(float(np.median(values)), color="k", linestyle="--", label=f"median {np.median(values):.2f} s")
        b.legend()
    b.set_xlabel("emission time - ground-truth end (s)")
    b.set_ylabel("detected instances")
    b.set_title(f"detection latency ({len(values)} instances at tIoU >= 0.5)")
    return save_figure(fig, path)


def cli_eval(argv: list[str]) -> int:
    from memstream.pipelines.action import _annotations_path, load_clips

    p = argparse.ArgumentParser(prog="memstream eval action", description=(
        "Stream annotated videos through an action model and report detection mAP (tIoU 0.3-0.7), per-frame "
        "mAP and detection latency."))
    p.add_argument("--data", required=True, help="annotations file, or a folder holding annotations.json")
    p.add_argument("--subset", default="test", help="subset to evaluate (default test)")
    p.add_argument("--features", help="folder of per-video (T, C) .npy features (feature-input models)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled action-small)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--onnx", help="with --backend onnx: an exported graph to use instead of exporting")
    p.add_argument("--limit", type=int, help="evaluate the first N videos only")
    p.add_argument("--long-threshold", type=float, help="seconds from which an instance is long (default: the "
                                                        "annotations' long_threshold, if any)")
    add_decoder_arguments(p)
    p.add_argument("--results", help="write the events as ActivityNet results JSON to this file")
    p.add_argument("--plot", help="write a PNG: AP per class and the latency histogram")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    annotations = _annotations_path(args.data)
    model, _ = load_action_model(args.checkpoint)
    clips = load_clips(annotations, args.subset, model.cfg, args.features, limit=args.limit)
    threshold = args.long_threshold
    if threshold is None:
        try:
            threshold = json.loads(annotations.read_text()).get("long_threshold")
        except (json.JSONDecodeError, AttributeError):
            threshold = None
    backend = backend_for(model, args.backend, args.onnx, args.threads)
    decoder = decoder_from_args(args)
    result = evaluate_clips(model, clips, backend=backend, decoder=decoder, long_threshold=threshold,
                            progress=not args.json and sys.stderr.isatty())
    result["backend"] = args.backend
    if args.results:
        from memstream.pipelines.action_data import write_activitynet_results

        write_activitynet_results(args.results, result["predictions"])
    if args.plot:
        result["plot"] = str(plot_results(result, args.plot))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("latency_values", "predictions")}))
        return 0
    print(f"videos {result['videos']}  instances {result['instances']}  events {result['events']}  "
          f"({result['frames_per_second']} frames/s, {args.backend})")
    print("tIoU   " + "  ".join(f"{k:>6}" for k in result["map"]))
    print("mAP    " + "  ".join(f"{v:6.3f}" for v in result["map"].values()))
    if "map_long" in result:
        print("long   " + "  ".join(f"{v:6.3f}" for v in result["map_long"].values())
              + f"   ({result['instances_long']} instances >= {result['long_threshold_s']:g} s)")
    print(f"per-frame mAP {result['frame_map']:.3f}")
    lat = result["latency_s"]
    if lat.get("matched"):
        print(f"latency (emission - end, {lat['matched']}/{lat['total']} detected): mean {lat['mean']:.2f} s, "
              f"median {lat['median']:.2f} s, p90 {lat['p90']:.2f} s")
    return 0

