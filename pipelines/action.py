"""Online action localization: training (``memstream train action``), export and ``memstream run action``.

Training data is any annotation file :func:`memstream.pipelines.action_data.read_annotations` reads (the
synthetic set's ``annotations.json``, THUMOS14's CSV/JSON) plus the media: video files (decoded once, as the
runtime decodes them, and kept in RAM at the model's size) or a folder of per-video feature arrays.

The loss, per frame of random crops of whole videos (one forward pass each, the parallel form):

- class: cross-entropy over background + classes;
- end and start detectors: binary cross-entropy on the instance's last/first frame (the frames next to it
  are ignored: a boundary one frame off is not an error worth teaching against);
- start estimate: negative log-likelihood of the candidate closest to the true start among those the frame
  may point at (the boundary queue and the segment so far);
- a crop is a stream: an instance already in progress at the crop's first frame starts there, as an action
  in progress when a live stream (or a video) begins starts at its first frame in the ground truth (without
  this the model never learns to open an action at a stream's start: such actions were nearly all missed);
- the core's write flag (MATR): per segment, "contains action".

The boundary queue is teacher-forced with the true starts during training (``start_index``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from memstream.models import build, list_models
from memstream.models.action import ActionConfig, ActionModel
from memstream.pipelines.action_task import (
    ActionTask,
    bundled_action_dir,
    export_metadata,
    load_action_model,
    read_video,
)
from torch import Tensor

log = logging.getLogger(__name__)
POS_WEIGHT = 4.0  # boundary frames are rare: one positive per instance among hundreds of frames


@dataclass
class ActionClip:
    """One training video at the model's rate. x: (N, H, W, 3) uint8 or (N, C) float32; labels: (N,) int64
    (0 = background); instances: (class index, first frame, last frame); video: the annotations."""

    name: str
    x: np.ndarray
    labels: np.ndarray
    instances: list[tuple[int, int, int]]
    video: object = None


def instance_frames(start: float, end: float, fps: float, n: int) -> tuple[int, int] | None:
    """An instance [start, end) in seconds -> (first, last) frame at ``fps`` (frame i covers [i/fps, (i+1)/fps));
    None when it covers no frame of the n."""
    first = max(0, int(round(start * fps)))
    last = min(n - 1, int(round(end * fps)) - 1)
    return (first, last) if last >= first else None


def make_clip(name: str, x: np.ndarray, video, classes: Sequence[str], fps: float) -> ActionClip:
    """Frames or features of one video plus its :class:`ActionVideo` annotations -> an :class:`ActionClip`."""
    index = {c: i for i, c in enumerate(classes)}
    n = len(x)
    labels = np.zeros(n, np.int64)
    instances = []
    for inst in sorted(video.instances, key=lambda a: a.start):
        if inst.label not in index:
            raise ValueError(f"{name}: label {inst.label!r} is not one of the model's classes {list(classes)}")
        span = instance_frames(inst.start, inst.end, fps, n)
        if span is None:
            continue
        labels[span[0]:span[1] + 1] = index[inst.label] + 1
        instances.append((index[inst.label], *span))
    return ActionClip(name, x, labels, instances, video)


def load_clips(annotations: str | Path, subset: str | None, cfg: ActionConfig, features: str | Path | None = None,
               limit: int | None = None) -> list[ActionClip]:
    """Decode (or load features of) every video of ``subset`` in ``annotations`` at the model's rate and size."""
    from memstream.pipelines.action_data import FeatureFolder, read_annotations

    videos = read_annotations(annotations, subset=subset)
    if not videos:
        raise ValueError(f"{annotations}: no videos in subset {subset!r}")
    names = sorted(videos)[:limit]
    folder = FeatureFolder(features, cfg.fps) if features else None
    clips = []
    start = time.perf_counter()
    for name in names:
        video = videos[name]
        if cfg.input == "features":
            if folder is None:
                raise ValueError("the model takes features: give --features DIR (one <video>.npy per video)")
            x = folder.load(name)
            if x.shape[1] != cfg.feature_dim:
                raise ValueError(f"{name}: features have {x.shape[1]} channels, the model takes {cfg.feature_dim}")
        else:
            if video.path is None:
                raise ValueError(f"{annotations}: video {name} names no media file")
            x, _ = read_video(video.path, cfg.fps, cfg.image_size)
        clips.append(make_clip(name, x, video, cfg.classes, cfg.fps))
    log.info("%d videos of %s loaded in %.1f s", len(clips), subset, time.perf_counter() - start)
    return clips


class ActionObjective:
    """:class:`memstream.pipelines.train.Objective` for :class:`ActionModel` (see the module docstring).

    Args:
        clips: training videos. clip_segments: segments per training crop. batch: crops per step.
    """

    def __init__(self, model: ActionModel, clips: list[ActionClip], *, clip_segments: int = 24, batch: int = 2,
                 extra_config: dict | None = None) -> None:
        if not clips:
            raise ValueError("ActionObjective: no training videos")
        if clip_segments < 1 or batch < 1:
            raise ValueError(f"clip_segments={clip_segments} and batch={batch} must be >= 1")
        self.model, self.clips = model, clips
        self.length = clip_segments * model.cfg.segment
        self.batch = batch
        self.extra_config = extra_config or {}

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed * 100_003 + epoch)
        order = rng.permutation(len(self.clips))
        starts = rng.random(len(self.clips))
        step_batches = [order[i:i + self.batch] for i in range(0, len(order) - self.batch + 1, self.batch)]
        for k, picks in enumerate(step_batches):
            if k % world == rank:
                yield self.collate([(self.clips[i], starts[i]) for i in picks])

    def collate(self, picks: list[tuple[ActionClip, float]]) -> dict:
        """Crops of ``length`` frames (random start given as a fraction) -> batch tensors."""
        cfg = self.model.cfg
        b, s, t = len(picks), self.length, cfg.segment
        n = s // t
        x = np.zeros((b, s, *picks[0][0].x.shape[1:]), picks[0][0].x.dtype)
        mask = np.zeros((b, s), bool)
        labels = np.zeros((b, s), np.int64)
        end_t, end_w = np.zeros((b, s), np.float32), np.zeros((b, s), np.float32)
        start_t, start_w = np.zeros((b, s), np.float32), np.zeros((b, s), np.float32)
        start_of = np.full((b, s), -1, np.int64)  # crop position of the true start of the frame's instance
        teacher = np.full((b, n), -1, np.int64)
        for r, (clip, u) in enumerate(picks):
            c0 = int(u * max(0, len(clip.x) - s))
            k = min(s, len(clip.x) - c0)
            x[r, :k], mask[r, :k], labels[r, :k] = clip.x[c0:c0 + k], True, clip.labels[c0:c0 + k]
            end_w[r, :k] = start_w[r, :k] = 1.0
            for _, first, last in clip.instances:
                f, e = first - c0, last - c0
                if e < 0 or f >= k:
                    continue
                f = max(f, 0)  # in progress when the crop (a stream) begins: it starts with the stream
                if 0 <= e < k:
                    end_w[r, max(0, e - 1):e + 2] = 0.0
                    end_t[r, e], end_w[r, e] = 1.0, 1.0
                start_w[r, max(0, f - 1):f + 2] = 0.0
                start_t[r, f], start_w[r, f] = 1.0, 1.0
                start_of[r, f:min(e, k - 1) + 1] = f
                teacher[r, f // t] = f % t  # the latest start in a segment wins
        end_w *= mask
        start_w *= mask
        return {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask), "labels": torch.from_numpy(labels),
                "end": torch.from_numpy(end_t), "end_w": torch.from_numpy(end_w), "start": torch.from_numpy(start_t),
                "start_w": torch.from_numpy(start_w), "start_of": torch.from_numpy(start_of),
                "teacher": torch.from_numpy(teacher)}

    def windows(self, batch) -> int:
        return 1

    def init_state(self, model, batch) -> None:
        return None

    def loss(self, model: ActionModel, batch: dict, window: int, state) -> tuple[Tensor, None, dict[str, float]]:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        return action_loss(model, batch)

    def checkpoint_config(self) -> dict:
        return {"model": "action", "config": self.model.cfg.to_dict(), **self.extra_config}


def action_loss(model: ActionModel, batch: dict) -> tuple[Tensor, None, dict[str, float]]:
    """The training loss of one batch from :meth:`ActionObjective.collate` (see the module docstring)."""
    t = model.cfg.segment
    mask = batch["mask"]
    out = model.forward_sequence(batch["x"], mask, start_index=batch["teacher"] if model.cfg.start_memory else None)
    cls = F.cross_entropy(out.class_logits[mask], batch["labels"][mask])
    pos_weight = torch.tensor(POS_WEIGHT, device=mask.device)

    def boundary(logit: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(logit, target, pos_weight=pos_weight, reduction="none")
        return (loss * weight).sum() / weight.sum().clamp(min=1.0)

    end = boundary(out.end_logit, batch["end"], batch["end_w"])
    start = boundary(out.start_logit, batch["start"], batch["start_w"])
    start_of = batch["start_of"]
    pointed = start_of >= 0
    cost = (out.candidate_pos - start_of.unsqueeze(-1)).abs().float()
    cost = cost.masked_fill(~out.candidate_ok, float("inf"))
    target = cost.argmin(-1, keepdim=True)
    nll = -out.pointer.gather(-1, target).squeeze(-1)
    pointer = (nll * pointed).sum() / pointed.sum().clamp(min=1)
    seg_mask = mask.view(mask.shape[0], -1, t).any(-1)
    has_action = (batch["labels"].view(mask.shape[0], -1, t) > 0).any(-1).float()
    gate = F.binary_cross_entropy_with_logits(out.gate_logit, has_action, reduction="none")
    gate = (gate * seg_mask).sum() / seg_mask.sum().clamp(min=1)
    total = cls + end + start + pointer + 0.5 * gate
    with torch.no_grad():
        accuracy = (out.class_logits[mask].argmax(-1) == batch["labels"][mask]).float().mean()
        back = (out.candidate_pos.gather(-1, out.pointer.argmax(-1, keepdim=True)).squeeze(-1) - start_of).abs()
        start_err = (back.float() * pointed).sum() / pointed.sum().clamp(min=1)
    parts = {"cls": cls, "end": end, "start": start, "pointer": pointer, "gate": gate}
    return total, None, {**{k: float(v.detach()) for k, v in parts.items()}, "frame_acc": float(accuracy),
                         "start_err_frames": float(start_err), "samples": int(mask.sum())}


def clips_fingerprint(clips: Sequence[ActionClip]) -> str:
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.name}:{len(c.x)}:{c.instances}".encode())
    return h.hexdigest()[:16]


# -- CLI ---------------------------------------------------------------------------------------------------
def _preset_overrides(args) -> dict:
    overrides: dict = {}
    if args.memory:
        overrides["memory"] = args.memory
    if args.window_only:
        overrides.update(memory="none", start_memory=0)
    if args.segment:
        overrides["segment"] = args.segment
    for name in ("fps", "image_size", "backbone", "feature_dim", "spatial_grid"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def cli_train(argv: list[str]) -> int:
    from memstream.pipelines.action_data import read_annotations, read_classes
    from memstream.pipelines.action_eval import evaluate_clips
    from memstream.pipelines.train import TrainConfig, check_resume_data, train

    p = argparse.ArgumentParser(prog="memstream train action", description=(
        "Train an online action localizer on annotated videos (memstream data synth-actions, or THUMOS14 "
        "annotations with --features)."))
    p.add_argument("--data", required=True, help="annotations file, or a folder holding annotations.json")
    p.add_argument("--features", help="folder of per-video (T, C) .npy features (feature-input presets)")
    p.add_argument("--subset", default="train", help="training subset of the annotations (default train)")
    p.add_argument("--dev-subset", default="validation", help="subset for the logged mAP ('' for none)")
    p.add_argument("--preset", default="action-small", choices=[m for m in list_models() if m.startswith("action-")])
    p.add_argument("--memory", choices=("queue", "none", "tokens", "slots", "knn", "ntm"),
                   help="core memory type, overriding the preset's")
    p.add_argument("--window-only", action="store_true",
                   help="the no-memory baseline: core memory 'none' and no boundary queue (sees one segment)")
    p.add_argument("--segment", type=int, help="frames per segment (the window of a --window-only model)")
    p.add_argument("--fps", type=float, help="model frame rate (default: the preset's)")
    p.add_argument("--image-size", type=int, help="model input size (default: the preset's)")
    p.add_argument("--backbone", help="timm backbone name (random init; see --backbone-weights)")
    p.add_argument("--backbone-weights", help="a local file of backbone weights to start from (never downloaded)")
    p.add_argument("--feature-dim", type=int, help="feature presets: channels of the per-frame features")
    p.add_argument("--spatial-grid", type=int, help="pool each frame's feature map to k x k cells (0: global)")
    p.add_argument("--out", required=True, help="output folder: checkpoint, train_log.jsonl, trainer state")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=2, help="crops per step")
    p.add_argument("--clip-segments", type=int, default=24, help="segments per training crop")
    p.add_argument("--eval-every", type=int, default=0, help="steps between dev evaluations")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    args = p.parse_args(argv)
    annotations = _annotations_path(args.data)
    classes = read_classes(annotations)
    torch.manual_seed(args.seed)
    overrides = {"classes": tuple(classes), **_preset_overrides(args)}
    model = build(args.preset, **overrides)
    if args.backbone_weights:
        from memstream.models.action import load_backbone_weights

        report = load_backbone_weights(model, args.backbone_weights)
        log.warning("backbone weights %s: %s", args.backbone_weights, report)
    model = model.to(args.device)
    clips = load_clips(annotations, args.subset, model.cfg, args.features)
    dev = None
    if args.dev_subset and read_annotations(annotations, subset=args.dev_subset):
        dev = load_clips(annotations, args.dev_subset, model.cfg, args.features)
    fingerprint = clips_fingerprint(clips)
    check_resume_data(args.out, fingerprint, not args.no_resume)
    command = "memstream train action " + " ".join(argv)
    objective = ActionObjective(model, clips, clip_segments=args.clip_segments, batch=args.batch, extra_config={
        "preset": args.preset, "command": command, "data_fingerprint": fingerprint,
        "data": str(Path(annotations).resolve())})
    cfg = TrainConfig(steps=args.steps, lr=args.lr, eval_every=args.eval_every, seed=args.seed, threads=args.threads,
                      log_every=args.log_every, checkpoint_every=max(100, args.steps // 10))
    evaluate = (lambda m: evaluate_clips(m, dev, headline=True)) if dev else None
    summary = train(model, objective, cfg, args.out, resume=not args.no_resume, evaluate=evaluate)
    summary.update(videos=len(clips), frames=int(sum(len(c.x) for c in clips)))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


def _annotations_path(data: str | Path) -> Path:
    path = Path(data)
    if path.is_dir():
        path = path / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data}: no annotations file (a folder needs annotations.json)")
    return path


def export_action(model: ActionModel, path: str | Path, opset: int | None = None):
    """The action step as one ONNX graph (frames or features + state -> per-frame outputs + state)."""
    from memstream.export import DEFAULT_OPSET, export_step

    cfg = model.cfg
    shape = cfg.input_shape()
    x = torch.zeros(2, *shape, dtype=torch.uint8 if cfg.input == "frames" else torch.float32)
    return export_step(model, path, x, opset=opset or DEFAULT_OPSET, metadata=export_metadata(model))


def cli_export(argv: list[str]) -> int:
    from memstream.export import DEFAULT_OPSET, FALLBACK_OPSET

    p = argparse.ArgumentParser(prog="memstream export action", description=(
        "Export the action step (frames or features + state -> per-frame class, end, start outputs + state) "
        "to one ONNX graph."))
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled action-small)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=(DEFAULT_OPSET, FALLBACK_OPSET))
    args = p.parse_args(argv)
    model, _ = load_action_model(args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = export_action(model, out, opset=args.opset)
    print(json.dumps({"onnx": str(out), "opset": args.opset, "segment_frames": model.cfg.segment,
                      "fps": model.cfg.fps, "inputs": [i.name for i in proto.graph.input],
                      "outputs": [o.name for o in proto.graph.output], "bytes": out.stat().st_size}))
    return 0


RUN_EXAMPLES = """\
examples:
  memstream run action                                        # the bundled model on the bundled clip
  memstream run action --source match.mp4 --out runs/match --overlay runs/match/overlay.mp4
  memstream run action --source 0 --view                      # a camera, live view of the events
  memstream run action --source rtsp://cam/1 --backend onnx --out runs/cam
"""


def bundled_sample() -> Path:
    return bundled_action_dir() / "sample.mp4"


def cli_run(argv: list[str]) -> int:
    from memstream.pipelines.action_decoder import add_decoder_arguments, decoder_from_args
    from memstream.pipelines.launch import add_run_arguments, run_from_args, specs_from_args

    p = argparse.ArgumentParser(prog="memstream run action", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RUN_EXAMPLES, description=(
                                    "Online action localization: action events (class, start, end, score, emission "
                                    "time) as JSON Lines while the video plays; --overlay draws them."))
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled action-small)")
    add_decoder_arguments(p)
    args = p.parse_args(argv)
    if not args.source and not args.streams:
        args.source = [str(bundled_sample())]
    specs = specs_from_args(args)
    task = ActionTask(checkpoint=args.checkpoint,
                      decoder=decoder_from_args(args))
    sinks = [] if args.view else [ActionLineSink(sys.stderr)]
    return run_from_args(task, specs, args, extra_sinks=sinks)


class ActionLineSink:
    """Each emitted action on its own line (stderr), as it happens: its most probable class (rank 1) only."""

    def __init__(self, file=None) -> None:
        self.file = file if file is not None else sys.stderr

    def write(self, event: dict) -> None:
        if event.get("type") != "action" or event.get("rank", 1) != 1:
            return
        prefix = f"[{event['stream']}] " if event.get("stream") not in (None, "0") else ""
        self.file.write(f"{prefix}[{event['start']:8.2f}-{event['end']:8.2f}] {event['label']:<16} "
                        f"score {event['score']:.2f} (emitted at {event['emitted']:.2f} s)\n")
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
