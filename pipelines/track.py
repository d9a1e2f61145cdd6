"""Training the tracker (`memstream train track`) on MOTChallenge-layout sequences with images.

One training sample is a *clip*: S frames of one sequence, either consecutive (stride 1-3) or a sorted
random draw from a window of up to 25 s, so that exits, re-entries and long occlusions fall inside clips.
The detector and the association are trained together on one backbone pass:

- detector (CenterNet): focal loss on a Gaussian heatmap at stride 4, L1 on log box size and on the
  sub-cell offset, at the centres of ground-truth boxes that are at least 30 % visible (boxes less
  visible, or of other classes, are neither positives nor negatives);
- association, teacher-forced: each ground-truth identity in the clip owns a track slot; the detections of
  a frame are its visible ground-truth boxes, jittered, some dropped (misses, which make gaps), plus a
  few false positives; ``assign`` writes each identity's previous detection into its slot. A detection
  must pick its identity's slot if that identity was seen earlier in the clip, else "new" (false
  positives too). Cross-entropy over [slots ; new]. Appearance is dropped for some clips, so the model
  also tracks on boxes alone (MOT15 public detections without images).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from memstream.models import build, list_models
from memstream.models.track import ASSIGN_NONE, TrackModel
from memstream.pipelines.mot_data import find_sequences, format_result_rows, read_sequence, rows_by_frame
from torch import Tensor

log = logging.getLogger(__name__)
MIN_VIS = 0.3  # boxes less visible than this are ignored in training (neither object nor background)


@dataclass
class TrackSequence:
    """A training sequence in memory: frames (F, H, W, 3) uint8 RGB at the model size, and per frame the
    ground truth ``(ids (M,), boxes (M, 4) cxcywh normalised, visible (M,) bool)``."""

    name: str
    frames: np.ndarray
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def load_sequences(root: str | Path, image_size: tuple[int, int], limit: int = 0) -> list[TrackSequence]:
    """Read every sequence under ``root`` (with images and gt) resized to ``image_size`` (H, W)."""
    out = []
    h, w = image_size
    for folder in find_sequences(root)[: limit or None]:
        seq = read_sequence(folder)
        if seq.gt is None:
            raise ValueError(f"{folder}: training needs ground truth (gt/gt.txt)")
        if not seq.info.width or not seq.info.height:
            raise ValueError(f"{folder}: seqinfo.ini must give imWidth and imHeight")
        frames = np.zeros((seq.info.length, h, w, 3), np.uint8)
        for i, image in seq.frames():
            frames[i - 1] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
        by_frame = rows_by_frame(seq.gt)
        boxes = []
        for i in range(1, seq.info.length + 1):
            rows = by_frame.get(i, np.zeros((0, 10)))
            x, y, bw, bh = (rows[:, c] for c in (2, 3, 4, 5))
            cxcywh = np.stack(((x + bw / 2) / seq.info.width, (y + bh / 2) / seq.info.height,
                               bw / seq.info.width, bh / seq.info.height), axis=1).astype(np.float32)
            visible = (rows[:, 7] == 1) & (rows[:, 6] != 0) & (rows[:, 8] >= MIN_VIS)
            boxes.append((rows[:, 1].astype(np.int64), cxcywh, visible))
        out.append(TrackSequence(seq.info.name, frames, boxes))
        log.info("loaded %s: %d frames", seq.info.name, seq.info.length)
    return out


def _gaussian(heat: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> None:
    h, w = heat.shape
    x0, x1 = max(0, int(cx - 3 * sx)), min(w, int(cx + 3 * sx) + 2)
    y0, y1 = max(0, int(cy - 3 * sy)), min(h, int(cy + 3 * sy) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    xs, ys = np.arange(x0, x1), np.arange(y0, y1)
    g = np.exp(-((xs[None] - cx) ** 2) / (2 * sx * sx) - ((ys[:, None] - cy) ** 2) / (2 * sy * sy))
    np.maximum(heat[y0:y1, x0:x1], g, out=heat[y0:y1, x0:x1])


class TrackObjective:
    """:class:`memstream.pipelines.train.Objective` for :class:`TrackModel` (see the module docstring).

    Args:
        sequences: training sequences. clip_frames: frames S per clip. batch: clips per step.
        miss_rate: detections dropped at random. false_positives: mean false detections per frame.
        drop_appearance: probability that a clip is tracked on boxes alone.
    """

    def __init__(self, model: TrackModel, sequences: list[TrackSequence], *, clip_frames: int = 16, batch: int = 2,
                 miss_rate: float = 0.1, false_positives: float = 0.3, drop_appearance: float = 0.15,
                 steps_per_epoch: int = 200, extra_config: dict | None = None) -> None:
        if not sequences:
            raise ValueError("TrackObjective: no training sequences")
        self.model, self.sequences = model, sequences
        self.clip_frames, self.batch = clip_frames, batch
        self.miss_rate, self.false_positives, self.drop_appearance = miss_rate, false_positives, drop_appearance
        self.steps_per_epoch = steps_per_epoch
        self.extra_config = extra_config or {}

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed * 100_003 + epoch)
        for k in range(self.steps_per_epoch):
            picks = [self._clip(rng) for _ in range(self.batch)]
            if k % world == rank:
                yield self.collate(picks, rng)

    def _clip(self, rng: np.random.Generator) -> tuple[TrackSequence, np.ndarray]:
        seq = self.sequences[rng.integers(len(self.sequences))]
        n, s = len(seq.frames), self.clip_frames
        if rng.random() < 0.5:  # consecutive frames at stride 1-3
            stride = int(rng.integers(1, 4))
            span = min(n, (s - 1) * stride + 1)
            start = int(rng.integers(0, n - span + 1))
            index = np.arange(start, start + span, stride)[:s]
        else:  # a sorted draw from a long window: gaps, exits and re-entries inside the clip
            window = min(n, int(rng.integers(s * 4, 250)))
            start = int(rng.integers(0, n - window + 1))
            index = np.sort(rng.choice(np.arange(start, start + window), size=min(s, window), replace=False))
        return seq, index

    def collate(self, picks: list[tuple[TrackSequence, np.ndarray]], rng: np.random.Generator) -> dict:
        cfg = self.model.cfg
        b, s = len(picks), self.clip_frames
        n, k = cfg.max_tracks, cfg.max_detections
        h, w = cfg.image_size
        hh, ww = h // 4, w // 4
        x = np.zeros((b, s, h, w, 3), np.uint8)
        mask = np.zeros((b, s), bool)
        dets = np.zeros((b, s, k, 6), np.float32)
        assign = np.full((b, s, n), ASSIGN_NONE, np.int64)
        target = np.full((b, s, k), -100, np.int64)
        heat = np.zeros((b, s, hh, ww), np.float32)
        heat_w = np.ones((b, s, hh, ww), np.float32)
        centre = np.zeros((b, s, 64), np.int64)
        centre_ok = np.zeros((b, s, 64), bool)
        size_t = np.zeros((b, s, 64, 4), np.float32)
        frame_gap = np.zeros((b, s, k), np.float32)  # frames since the detection's identity was last detected
        no_appearance = rng.random(b) < self.drop_appearance
        for r, (seq, index) in enumerate(picks):
            slots: dict[int, int] = {}
            last_seen: dict[int, int] = {}
            previous: dict[int, int] = {}  # identity -> detection index in the previous clip frame
            for t, f in enumerate(index):
                x[r, t], mask[r, t] = seq.frames[f], True
                ids, boxes, visible = seq.boxes[f]
                for c, (box, vis) in enumerate(zip(boxes, visible, strict=True)):
                    gx, gy = box[0] * ww, box[1] * hh
                    if not vis:  # ignore region: no loss around nearly hidden objects
                        x0, x1 = int((box[0] - box[2] / 2) * ww), int((box[0] + box[2] / 2) * ww) + 1
                        y0, y1 = int((box[1] - box[3] / 2) * hh), int((box[1] + box[3] / 2) * hh) + 1
                        heat_w[r, t, max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 0.0
                        continue
                    if not (0 <= gx < ww and 0 <= gy < hh):
                        continue
                    # CenterNet: the peak (exactly 1, the focal loss's positive) sits on the centre's cell; the
                    # offset head regresses where in that cell the centre lies.
                    _gaussian(heat[r, t], int(gx), int(gy), max(0.5, box[2] * ww / 6), max(0.5, box[3] * hh / 6))
                    if c < 64:
                        centre[r, t, c] = int(gy) * ww + int(gx)
                        centre_ok[r, t, c] = True
                        size_t[r, t, c] = (np.log(max(box[2], 1e-3) / 0.1), np.log(max(box[3], 1e-3) / 0.1),
                                           gx - int(gx), gy - int(gy))
                for slot_id, det_index in previous.items():
                    assign[r, t, slots[slot_id]] = det_index
                previous = {}
                rows = []
                for i, box, vis in zip(ids, boxes, visible, strict=True):
                    if vis and rng.random() >= self.miss_rate:
                        jitter = np.concatenate((rng.normal(0, 0.04, 2) * box[2:], np.exp(rng.normal(0, 0.05, 2))))
                        rows.append((int(i), np.array([box[0] + jitter[0], box[1] + jitter[1],
                                                       box[2] * jitter[2], box[3] * jitter[3]]),
                                     rng.uniform(0.5, 1.0)))
                for _ in range(rng.poisson(self.false_positives)):
                    bw_, bh_ = rng.uniform(0.04, 0.1), rng.uniform(0.1, 0.25)
                    rows.append((-1, np.array([rng.uniform(0.05, 0.95), rng.uniform(0.1, 0.9), bw_, bh_]),
                                 rng.uniform(0.1, 0.6)))
                order = rng.permutation(len(rows))[:k]
                for j, o in enumerate(order):
                    i, box, score = rows[o]
                    cx, cy, bw_, bh_ = box
                    dets[r, t, j] = (cx - bw_ / 2, cy - bh_ / 2, cx + bw_ / 2, cy + bh_ / 2, score, 1.0)
                    if i < 0:
                        target[r, t, j] = n
                        continue
                    if i not in slots:
                        if len(slots) >= n:  # more identities than track slots in this clip: leave them out
                            dets[r, t, j] = 0.0
                            continue
                        slots[i] = len(slots)
                    target[r, t, j] = slots[i] if i in last_seen else n
                    frame_gap[r, t, j] = f - last_seen[i] if i in last_seen else 0
                    last_seen[i] = f
                    previous[i] = j
        tensors = {"x": x, "mask": mask, "dets": dets, "assign": assign, "target": target, "heat": heat,
                   "heat_w": heat_w, "centre": centre, "centre_ok": centre_ok, "size": size_t, "gap": frame_gap,
                   "no_appearance": no_appearance}
        return {name: torch.from_numpy(v) for name, v in tensors.items()}

    def windows(self, batch) -> int:
        return 1

    def init_state(self, model, batch) -> None:
        return None

    def loss(self, model: TrackModel, batch: dict, window: int, state) -> tuple[Tensor, None, dict[str, float]]:
        device = next(model.parameters()).device
        return track_loss(model, {k: v.to(device) for k, v in batch.items()})

    def checkpoint_config(self) -> dict:
        return {"model": "track", "config": self.model.cfg.to_dict(), **self.extra_config}


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss; logits/target/weight (..., h, w), normalised by the objects."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.ge(0.999).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos) * weight
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def track_loss(model: TrackModel, batch: dict) -> tuple[Tensor, None, dict[str, float]]:
    """The training loss of one batch from :meth:`TrackObjective.collate` (see the module docstring)."""
    x = batch["x"]
    b, s = x.shape[:2]
    fmaps = model.detector.features(x.flatten(0, 1))  # one backbone pass for the detector and the association
    heat_logit, size = model.detector.heads(fmaps)  # (B*S, 1, h, w), (B*S, 4, h, w)
    valid_frame = batch["mask"].flatten()
    heat = focal_loss(heat_logit[:, 0][valid_frame], batch["heat"].flatten(0, 1)[valid_frame],
                      batch["heat_w"].flatten(0, 1)[valid_frame])
    centre, ok = batch["centre"].flatten(0, 1), batch["centre_ok"].flatten(0, 1)  # (B*S, 64)
    at = size.flatten(2).gather(2, centre.unsqueeze(1).expand(-1, 4, -1)).transpose(1, 2)  # (B*S, 64, 4)
    target = batch["size"].flatten(0, 1)
    size_loss = (F.l1_loss(at[..., :2], target[..., :2], reduction="none").sum(-1) * ok).sum() / ok.sum().clamp(min=1)
    offset = (F.binary_cross_entropy_with_logits(at[..., 2:], target[..., 2:], reduction="none").sum(-1) * ok
              ).sum() / ok.sum().clamp(min=1)
    out, _ = model.forward_sequence(x, batch["assign"], batch["dets"], batch["mask"], fmaps=fmaps.unflatten(0, (b, s)),
                                    drop_appearance=batch["no_appearance"])
    labels = batch["target"]
    picked = labels >= 0
    nll = -out.logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assoc = (nll * picked).sum() / picked.sum().clamp(min=1)
    total = heat + size_loss + offset + 2.0 * assoc
    with torch.no_grad():
        right = (out.logp.argmax(-1) == labels) & picked
        continuing = picked & (labels < model.cfg.max_tracks)
        long_gap = continuing & (batch["gap"] > 10)
        stats = {"assoc_acc": float(right.sum() / picked.sum().clamp(min=1)),
                 "cont_acc": float((right & continuing).sum() / continuing.sum().clamp(min=1)),
                 "long_gap_acc": float((right & long_gap).sum() / long_gap.sum().clamp(min=1)),
                 "samples": int(picked.sum())}
    parts = {"heat": heat, "size": size_loss, "offset": offset, "assoc": assoc}
    return total, None, {**{k: float(v.detach()) for k, v in parts.items()}, **stats}


def sequences_fingerprint(sequences: Sequence[TrackSequence]) -> str:
    h = hashlib.sha256()
    for q in sequences:
        h.update(f"{q.name}:{len(q.frames)}:{sum(len(b[0]) for b in q.boxes)}".encode())
    return h.hexdigest()[:16]


def cli_train(argv: list[str]) -> int:
    from memstream.pipelines.train import TrainConfig, check_resume_data, train

    p = argparse.ArgumentParser(prog="memstream train track", description=(
        "Train the tracker (detector + memory association) on MOTChallenge-layout sequences with images "
        "(memstream data synth-tracks)."))
    p.add_argument("--data", required=True, help="a sequence folder or a folder of them (e.g. data/tracks/train)")
    p.add_argument("--preset", default="track-small", choices=[m for m in list_models() if m.startswith("track-")])
    p.add_argument("--memory", choices=("queue", "none"), help="core memory type (none: the no-memory ablation)")
    p.add_argument("--out", required=True, help="output folder: checkpoint, train_log.jsonl, trainer state")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per training clip")
    p.add_argument("--limit", type=int, default=0, help="use only the first N sequences (0: all)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    overrides = {"memory": args.memory} if args.memory else {}
    model = build(args.preset, **overrides).to(args.device)
    sequences = load_sequences(args.data, model.cfg.image_size, args.limit)
    fingerprint = sequences_fingerprint(sequences)
    check_resume_data(args.out, fingerprint, not args.no_resume)
    command = "memstream train track " + " ".join(argv)
    objective = TrackObjective(model, sequences, clip_frames=args.clip_frames, batch=args.batch, extra_config={
        "preset": args.preset, "command": command, "data_fingerprint": fingerprint,
        "data": str(Path(args.data).resolve())})
    cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, threads=args.threads, log_every=args.log_every,
                      checkpoint_every=max(100, args.steps // 10))
    summary = train(model, objective, cfg, args.out, resume=not args.no_resume)
    summary.update(sequences=len(sequences), frames=int(sum(len(q.frames) for q in sequences)))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


# -- export and run ------------------------------------------------------------------------------------------
def export_track(model: TrackModel, path: str | Path, *, public: bool = False, opset: int | None = None):
    """Export the step (frame, state, assign [, dets]) -> (detections, association, state) to ONNX."""
    from memstream.export import DEFAULT_OPSET, export_step
    from memstream.pipelines.track_task import export_metadata

    cfg = model.cfg
    h, w = cfg.image_size
    x = torch.zeros(2, 1, h, w, 3, dtype=torch.uint8)
    extra = {"assign": torch.full((2, cfg.max_tracks), ASSIGN_NONE, dtype=torch.long)}
    if public:
        extra["dets"] = torch.zeros(2, cfg.max_detections, 6)
    return export_step(model.eval(), path, x, opset=opset or DEFAULT_OPSET, metadata=export_metadata(model, public),
                       extra=extra)


def cli_export(argv: list[str]) -> int:
    from memstream.pipelines.track_task import load_track_model

    p = argparse.ArgumentParser(prog="memstream export track", description=(
        "Export the tracker's step to ONNX: frame (B, 1, H, W, 3) uint8, the state, the decoder's assignment of "
        "the previous frame's detections (and, with --public, the frame's detections) -> detections, association "
        "log-probabilities and the new state."))
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled track-small)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--public", action="store_true", help="take public detections (B, K, 6) as an input")
    p.add_argument("--opset", type=int, help="ONNX opset (default: memstream's)")
    args = p.parse_args(argv)
    model, _ = load_track_model(args.checkpoint)
    export_track(model, args.out, public=args.public, opset=args.opset)
    print(json.dumps({"out": str(args.out), "public": args.public, "image_size": list(model.cfg.image_size),
                      "max_tracks": model.cfg.max_tracks, "max_detections": model.cfg.max_detections}))
    return 0


RUN_EXAMPLES = """\
examples:
  memstream run track                                    # the bundled model on the bundled sample clip
  memstream run track --source street.mp4 --overlay tracks.mp4 --out runs/street   # + MOT results, JSONL
  memstream run track --source 0 --view                  # a camera, live view
  memstream run track --source clip.mp4 --rules my_tracker.yaml --backend onnx
"""


def cli_run(argv: list[str]) -> int:
    from memstream.pipelines.launch import add_run_arguments, run_from_args, specs_from_args
    from memstream.pipelines.track_task import TrackTask, bundled_track_dir

    p = argparse.ArgumentParser(prog="memstream run track", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RUN_EXAMPLES, description=(
                                    "Multi-object tracking: boxes with ids per frame as JSON Lines while the video "
                                    "plays, MOTChallenge result files with --out, ids and trails with --overlay."))
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled track-small)")
    p.add_argument("--rules", help="tracker rules YAML (birth, match, miss tolerance, death)")
    p.add_argument("--frame-rate", type=float, default=25.0,
                   help="frame rate assumed for max_lost_s when the source reports none")
    args = p.parse_args(argv)
    if not args.source and not args.streams:
        args.source = [str(bundled_track_dir() / "sample.mp4")]
    specs = specs_from_args(args)
    task = TrackTask(checkpoint=args.checkpoint, rules=args.rules, frame_rate=args.frame_rate)
    sinks = [MotResultSink(Path(args.out))] if getattr(args, "out", None) else []
    return run_from_args(task, specs, args, extra_sinks=sinks)


class MotResultSink:
    """Writes each stream's ``tracks`` events as a MOTChallenge result file ``<out>/<stream>.txt``, boxes in the
    source's pixels (normalised x 1000 where a source reports no frame size). Rows are written frame by frame
    (frames arrive in order, ids sorted within a frame), so a stream of any length holds no rows in memory and
    a killed run keeps every finished frame."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, IO[str]] = {}

    def write(self, event: dict) -> None:
        if event.get("type") != "tracks":
            return
        stream = str(event.get("stream", "0"))
        if stream not in self.files:
            self.out.mkdir(parents=True, exist_ok=True)
            self.files[stream] = open(self.out / f"{stream}.txt", "w", buffering=1)  # noqa: SIM115 - closed in close()
        w, h = event.get("size") or (1000, 1000)
        rows = sorted((event["frame"], t["id"], t["box"][0] * w, t["box"][1] * h, (t["box"][2] - t["box"][0]) * w,
                       (t["box"][3] - t["box"][1]) * h, t["score"]) for t in event["tracks"])
        kept = [r for r in rows if np.isfinite(r).all() and r[4] > 0 and r[5] > 0]  # what a MOT reader accepts
        if len(kept) < len(rows):
            log.warning("stream %s frame %s: %d track box(es) not finite or of zero size, left out of %s.txt",
                        stream, event["frame"], len(rows) - len(kept), stream)
        self.files[stream].write(format_result_rows(kept))

    def end_stream(self, stream: str) -> None:
        """The stream has left the run: its file is complete and closed (a service whose cameras come and go
        for days must not hold a descriptor per stream it ever served)."""
        f = self.files.pop(stream, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
