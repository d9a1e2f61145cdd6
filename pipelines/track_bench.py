"""``memstream bench track``: memstream vs its memory-off ablation vs the IoU baseline vs ByteTrack, and speed.

Accuracy, on held-out synthetic scenes (``memstream data synth-tracks``, its ``test`` split), every tracker on
the **same public detections** (``det/det.txt``); memstream also takes appearance from the images:

- ``memstream``: the bundled (or given) model with its default rules;
- ``no_memory``: the same weights with each track's memory cut to its last observation (core queue reset at
  every observation, long memory = latest embedding): what the memory adds, everything else equal;
- ``iou``: the in-project SORT baseline with SORT's settings (max_age 1, min_hits 3, IoU 0.3);
- ``bytetrack``: Roboflow's ByteTrack (the ``trackers`` package), an external implementation.

Figures: HOTA/DetA/AssA/MOTA/IDF1 over all test scenes (TrackEval's definitions), and IDF1/AssA on the
**re-entry subset**: the identities that leave the view for >= 3 s and come back (``scenes.json``); every
other identity's boxes become distractors (TrackEval's MOT17 preprocessing ignores them and removes the
tracker boxes on them), so the figure measures keeping an identity across the gap. memstream with its own
detector is reported too (``*_own``). On the real MOT15 sequences (public detections, no images: memstream on
boxes alone) HOTA/MOTA/IDF1 of memstream and of the baseline.

Speed: end-to-end frames per second (JPEG decode, resize, backbone, detection, association, decoder) for
PyTorch and ONNX Runtime, interleaved; and the association step alone (no backbone) with 10, 50 and 200 tracks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

GOALS = {"reentry_gain": 0.10}
REENTRY_MIN_GAP_S = 3.0


def _reentry_gt(gt: np.ndarray, ids: set[int]) -> np.ndarray:
    """Ground truth of the re-entry subset: other identities become distractors (class 8)."""
    out = gt.copy()
    out[~np.isin(out[:, 1], list(ids)), 7] = 8
    return out


def reentry_ids(data: Path, name: str, fps: float) -> set[int]:
    scenes = json.loads((data / "scenes.json").read_text())
    entries = scenes.get("sequences", scenes)
    entry = entries[name] if isinstance(entries, dict) else next(e for e in entries if e.get("name") == name)
    return {int(r["id"]) for r in entry.get("reentries", []) if r["gap_frames"] >= REENTRY_MIN_GAP_S * fps}


def accuracy(data: str | Path, checkpoint: str | None, limit: int | None = None, own: bool = True) -> dict:
    from memstream.pipelines.mot_data import find_sequences, read_sequence
    from memstream.pipelines.track_metrics import combine, evaluate_sequence
    from memstream.pipelines.track_task import make_backend, track_sequence

    root = Path(data)
    test = root / "test" if (root / "test").is_dir() else root
    sequences = [read_sequence(p) for p in find_sequences(test)][:limit]
    prepared = make_backend(checkpoint, "torch", public=True)
    runs = {"": dict(tracker="memstream", public=True), "_no_memory": dict(tracker="memstream", public=True,
                                                                          memory=False),
            "_iou": dict(tracker="iou"), "_bytetrack": dict(tracker="bytetrack-peer"),
            "_bytetrack_ours": dict(tracker="bytetrack")}
    if own:
        runs["_own"] = dict(tracker="memstream", public=False)
    out: dict = {"sequences": len(sequences)}
    for key, kwargs in runs.items():
        overall, subset = {}, {}
        for seq in sequences:
            rows = track_sequence(seq, prepared=prepared if kwargs["tracker"] == "memstream" else None, **kwargs)
            n = seq.info.length
            overall[seq.info.name] = evaluate_sequence(seq.gt, rows, n, "MOT17", seq.info.name)
            ids = reentry_ids(root, seq.info.name, seq.info.frame_rate)
            if ids:
                subset[seq.info.name] = evaluate_sequence(_reentry_gt(seq.gt, ids), rows, n, "MOT17", seq.info.name)
        total = combine(overall).summary()
        out[f"hota{key}"] = round(total["HOTA"], 4)
        for name in ("DetA", "AssA", "MOTA", "IDF1", "IDSW"):
            out[f"{name.lower()}{key}"] = round(total[name], 4) if isinstance(total[name], float) else total[name]
        if subset:
            part = combine(subset).summary()
            out[f"idf1_reentry{key}"] = round(part["IDF1"], 4)
            out[f"assa_reentry{key}"] = round(part["AssA"], 4)
            out["reentry_sequences"] = len(subset)
            out["reentry_ids"] = int(part["GT_IDs"])
    return out


def real_mot15(realdata: str | Path, checkpoint: str | None) -> dict:
    """MOT15 public detections without images: memstream on boxes alone vs the SORT baseline."""
    from memstream.pipelines.mot_data import read_sequence
    from memstream.pipelines.track_metrics import combine, evaluate_sequence
    from memstream.pipelines.track_task import make_backend, track_sequence

    root = Path(realdata) / "mot" / "MOT15"
    seqs = []
    for name, size in (("TUD-Campus", (640, 480)), ("TUD-Stadtmitte", (640, 480))):
        if not (root / name / "gt").is_dir():
            return {"mot15": "skipped: ../shared/realdata/mot/MOT15 not found"}
        seq = read_sequence(root / name)
        if not seq.info.width:  # the sample's seqinfo.ini lacks sizes; the TUD sequences are 640x480
            from dataclasses import replace

            seq.info = replace(seq.info, width=size[0], height=size[1])
        seqs.append(seq)
    prepared = make_backend(checkpoint, "torch", public=True)
    out = {}
    for key, kwargs in (("memstream", dict(tracker="memstream", prepared=prepared)), ("iou", dict(tracker="iou"))):
        scores = {s.info.name: evaluate_sequence(s.gt, track_sequence(s, **kwargs), s.info.length, "MOT15",
                                                 s.info.name) for s in seqs}
        total = combine(scores).summary()
        out[f"mot15_{key}"] = {k: round(total[k], 4) if isinstance(total[k], float) else total[k]
                               for k in ("HOTA", "MOTA", "IDF1", "IDSW", "FP", "FN")}
    return out


def speed(data: str | Path, checkpoint: str | None, frames: int = 150, rounds: int = 2, threads: int = 2) -> dict:
    """End-to-end frames/s on the first test sequence (own detections), torch vs ONNX Runtime, interleaved."""
    from dataclasses import replace

    from memstream.pipelines.mot_data import find_sequences, read_sequence
    from memstream.pipelines.track_task import make_backend, track_sequence

    torch.set_num_threads(threads)
    root = Path(data)
    seq = read_sequence(find_sequences(root / "test" if (root / "test").is_dir() else root)[0])
    seq.info = replace(seq.info, length=min(frames, seq.info.length))
    backends = {name: make_backend(checkpoint, name, public=False, threads=threads) for name in ("torch", "onnx")}
    for prepared in backends.values():  # warm-up
        track_sequence(replace(seq, info=replace(seq.info, length=10)), prepared=prepared, public=False)
    totals = {name: 0.0 for name in backends}
    for _ in range(rounds):
        for name, prepared in backends.items():
            start = time.perf_counter()
            track_sequence(seq, prepared=prepared, public=False)
            totals[name] += time.perf_counter() - start
    out = {f"fps_{name}": round(seq.info.length * rounds / s, 1) for name, s in totals.items()}
    out.update(speed_frames=seq.info.length, threads=threads, onnx_over_torch=round(out["fps_onnx"] / out["fps_torch"],
                                                                                     2))
    out["association_ms"] = association_speed(checkpoint, threads=threads)
    return out


def association_speed(checkpoint: str | None, tracks=(10, 50, 200), repeats: int = 20, threads: int = 2) -> dict:
    """The step without the backbone (public boxes, no appearance): detection tokens, memory update of every
    track slot through the core, association; N track slots all alive, N detections per frame."""
    from memstream.models.track import TrackConfig, TrackModel
    from memstream.pipelines.track_task import load_track_model

    torch.set_num_threads(threads)
    base, _ = load_track_model(checkpoint)
    out = {}
    for n in tracks:
        model = TrackModel(TrackConfig.from_dict({**base.cfg.to_dict(), "max_tracks": n, "max_detections": n}))
        model.load_state_dict(base.state_dict())
        model.eval()
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(1, n, 2, generator=g) * 0.9
        dets = torch.cat((xy, xy + 0.05, torch.ones(1, n, 2)), dim=-1)
        x = torch.zeros(1, 1, *model.cfg.image_size, 3, dtype=torch.uint8)
        state = model.init_state(1)
        assign = torch.arange(n).view(1, n)
        with torch.inference_mode():
            _, state = model.step(x, state, None, None, assign, dets, appearance=False)  # every slot alive
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                _, state = model.step(x, state, None, None, assign, dets, appearance=False)
                times.append(time.perf_counter() - start)
        out[str(n)] = round(1000 * float(np.median(times)), 2)
    return out


def cli_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream bench track", description=(
        "Tracking: IDF1/AssA on re-entering identities for memstream vs its memory-off ablation vs the IoU "
        "baseline vs ByteTrack on identical detections, HOTA overall, the real MOT15 sequences, and speed. "
        "Prints one JSON object."))
    p.add_argument("--data", required=True, help="a memstream data synth-tracks folder (its test split is used)")
    p.add_argument("--checkpoint", help="the model (default: the bundled track-small)")
    p.add_argument("--realdata", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "realdata"),
                   help="folder with mot/MOT15 (the real sample material); skipped where absent")
    p.add_argument("--limit", type=int, help="at most N test sequences")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", choices=("accuracy", "speed"), help="leave one half out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {}
    if args.skip != "accuracy":
        result.update(accuracy(args.data, args.checkpoint, args.limit))
        result.update(real_mot15(args.realdata, args.checkpoint))
    if args.skip != "speed":
        result.update(speed(args.data, args.checkpoint, threads=args.threads))
    goals = {}
    if "idf1_reentry" in result:
        for name in ("idf1", "assa"):
            gain = result[f"{name}_reentry"] - result[f"{name}_reentry_iou"]
            result[f"{name}_reentry_gain_over_iou"] = round(gain, 4)
            goals[f"{name}_reentry>=iou+0.10"] = gain >= GOALS["reentry_gain"]
    result["goals"] = goals
    print(json.dumps(result))
    return 0
