"""``memstream demo``: the bundled models on bundled media, nothing downloaded.

1. Streaming speech recognition: the bundled ``asr-small`` transcribes the bundled sample recording (voices
   it never heard in training) through the same runner as ``memstream run asr``, the transcript appearing
   as the segments are decoded; then reference, hypothesis, WER and real-time factor.
2. Online action localization: the bundled ``action-small`` watches the bundled clip (a held-out synthetic
   scene) through the same runner as ``memstream run action``; each action is printed when it is emitted, then
   compared with the clip's annotations; an overlay video with the event timeline is written.
3. Multi-object tracking: the bundled ``track-small`` follows the people in the bundled clip (a held-out
   synthetic scene with look-alikes, occlusions and people leaving and coming back) through the same runner as
   ``memstream run track``; then HOTA/IDF1 against the clip's ground truth, next to the SORT baseline on the
   clip's public detections, and which returning people kept their id. An overlay video with ids and trails.
4. Anomaly detection: the bundled ``anomaly-small`` watches a bundled clip of a normal scene (a conveyor, a
   blinking light, a pendulum) into which anomalies were injected, some only in time (the pendulum freezes, the belt
   runs backwards); the first seconds calibrate the threshold in the stream; each anomalous stretch is printed as it is
   flagged, then the frame AUROC against the clip's labels. An overlay video with the heat map.
5. Associative recall: the bundled memory-core models streamed at growing distances (``memstream.pipelines.recall``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def asr_demo(threads: int = 2) -> int:
    from memstream.pipelines.asr import bundled_sample
    from memstream.pipelines.asr_eval import error_rates
    from memstream.pipelines.asr_task import AsrTask, TranscriptLineSink, bundled_asr_dir
    from memstream.pipelines.launch import stream

    sample, reference_file = bundled_sample(), bundled_asr_dir() / "sample.txt"
    if not sample.is_file() or not (bundled_asr_dir() / "model.safetensors").is_file():
        print(f"memstream demo: no bundled ASR model or sample under {bundled_asr_dir()}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    task = AsrTask()
    print(f"Streaming speech recognition: {sample.name}, 640 ms segments, bundled asr-small "
          f"({task.model.cfg.core.memory} memory), greedy CTC with endpointing")
    sink = TranscriptLineSink(sys.stdout)
    finals: list[str] = []

    class Finals:  # the stream's last utterance is finalised when it ends, outside any step's result
        def write(self, event: dict) -> None:
            if event.get("type") == "final" and event.get("text"):
                finals.append(event["text"])

        def close(self) -> None:
            pass

    seconds, start = 0.0, time.perf_counter()
    for result in stream(task, str(sample), sinks=[sink, Finals()]):
        seconds = max(seconds, result.end)
    sink.close()
    wall = time.perf_counter() - start
    hypothesis = " ".join(finals)
    reference = reference_file.read_text().strip() if reference_file.is_file() else ""
    print(f"\nreference : {reference.lower()}\nhypothesis: {hypothesis}")
    if reference:
        rates = error_rates([reference], [hypothesis])
        print(f"WER {rates['wer']:.1%}, CER {rates['cer']:.1%} on {seconds:.0f} s of speech by held-out voices; "
              f"{seconds / wall:.0f}x faster than real time (startup included)\n")
    return 0


def action_demo(threads: int = 2, overlay: str | None = None) -> int:
    import tempfile
    from pathlib import Path

    from memstream.pipelines.action import ActionLineSink, bundled_sample
    from memstream.pipelines.action_data import read_annotations
    from memstream.pipelines.action_metrics import detection_map, tiou
    from memstream.pipelines.action_task import ActionTask, bundled_action_dir
    from memstream.pipelines.launch import stream
    from memstream.pipelines.sinks import OverlayVideoSink

    sample, truth = bundled_sample(), bundled_action_dir() / "sample.json"
    if not sample.is_file() or not (bundled_action_dir() / "model.safetensors").is_file():
        print(f"memstream demo: no bundled action model or clip under {bundled_action_dir()}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    task = ActionTask()
    cfg = task.model.cfg
    overlay = overlay or str(Path(tempfile.gettempdir()) / "memstream-demo-action.mp4")
    print(f"Online action localization: {sample.name}, {cfg.segment}-frame segments at {cfg.fps:g} fps, bundled "
          f"action-small ({cfg.core.memory} memory with a write gate, {cfg.start_memory}-slot boundary queue); "
          "each action is printed when it is emitted:")
    events: list[dict] = []

    class Collect:
        def write(self, event: dict) -> None:
            if event.get("type") == "action":
                events.append(event)

        def close(self) -> None:
            pass

    seconds, start = 0.0, time.perf_counter()
    for result in stream(task, str(sample), sinks=[ActionLineSink(sys.stdout), Collect(),
                                                   OverlayVideoSink(overlay, task.draw)]):
        seconds = max(seconds, result.end)
    wall = time.perf_counter() - start
    videos = read_annotations(truth)
    name = next(iter(videos))
    print(f"\n{'annotated':>24} | {'best emitted event (tIoU)':<40}")
    for inst in videos[name].instances:
        same = [e for e in events if e["label"] == inst.label]
        overlaps = tiou((inst.start, inst.end), np.array([[e["start"], e["end"]] for e in same])) if same else []
        best = int(overlaps.argmax()) if len(overlaps) and overlaps.max() > 0 else None
        found = (f"{same[best]['start']:6.1f}-{same[best]['end']:6.1f} s ({overlaps[best]:.2f}), emitted "
                 f"{same[best]['emitted'] - inst.end:+.1f} s after the end" if best is not None else "missed")
        print(f"{inst.label:>8} {inst.start:6.1f}-{inst.end:6.1f} s | {found}")
    predictions = {name: [{"label": e["label"], "score": e["score"], "segment": [e["start"], e["end"]]}
                          for e in events]}
    score = detection_map(videos, predictions, list(cfg.classes))
    print(f"mAP@0.5 on this clip {score['map']['0.5']:.2f} (tIoU 0.3-0.7 mean {score['map']['mean']:.2f}); "
          f"{seconds:.0f} s of video in {wall:.1f} s; overlay video: {overlay}\n")
    return 0


def track_demo(threads: int = 2, overlay: str | None = None) -> int:
    import json
    import tempfile
    from pathlib import Path

    from memstream.pipelines.iou_tracker import run_sequence
    from memstream.pipelines.launch import stream
    from memstream.pipelines.mot_data import read_mot_file
    from memstream.pipelines.sinks import OverlayVideoSink
    from memstream.pipelines.track_metrics import evaluate_sequence
    from memstream.pipelines.track_task import TrackTask, bundled_track_dir

    folder = bundled_track_dir()
    sample = folder / "sample.mp4"
    if not sample.is_file() or not (folder / "model.safetensors").is_file():
        print(f"memstream demo: no bundled track model or clip under {folder}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    info = json.loads((folder / "sample.json").read_text())
    task = TrackTask(frame_rate=info["fps"])
    overlay = overlay or str(Path(tempfile.gettempdir()) / "memstream-demo-track.mp4")
    print(f"Multi-object tracking: {sample.name} ({info['frames']} frames at {info['fps']:g} fps), bundled "
          f"track-small: each of {task.model.cfg.max_tracks} track slots is a stream of the memory core; a line "
          "every 5 s:")
    rows: list[tuple] = []
    w, h = info["size"]

    class Collect:
        def write(self, event: dict) -> None:
            if event.get("type") != "tracks":
                return
            for t in event["tracks"]:
                x1, y1, x2, y2 = np.asarray(t["box"]) * (w, h, w, h)
                rows.append((event["frame"], t["id"], x1, y1, x2 - x1, y2 - y1, t["score"], -1, -1, -1))
            if event["frame"] % int(5 * info["fps"]) == 0:
                ids = ", ".join(str(t["id"]) for t in sorted(event["tracks"], key=lambda t: t["id"]))
                print(f"  {event['time']:5.1f} s  {len(event['tracks'])} tracked: ids {ids}")

        def close(self) -> None:
            pass

    start = time.perf_counter()
    for _ in stream(task, str(sample), sinks=[Collect(), OverlayVideoSink(overlay, task.draw)]):
        pass
    wall = time.perf_counter() - start
    gt, det = read_mot_file(folder / "sample_gt.txt"), read_mot_file(folder / "sample_det.txt")
    n = info["frames"]
    ours = evaluate_sequence(gt, np.asarray(rows).reshape(-1, 10), n, "MOT17").summary()
    public = evaluate_sequence(gt, _public_run(task, sample, det, info), n, "MOT17").summary()
    sort = evaluate_sequence(gt, run_sequence(det, n, "sort"), n, "MOT17").summary()
    print(f"\n{'':>33} {'HOTA':>6} {'IDF1':>6} {'MOTA':>6} {'IDsw':>5}")
    for name, r in (("memstream, its own detector", ours), ("memstream, the public detections", public),
                    ("SORT, the public detections", sort)):
        print(f"{name:>33} {r['HOTA']:6.1%} {r['IDF1']:6.1%} {r['MOTA']:6.1%} {r['IDSW']:5d}")
    by_frame = {(int(r[0]), int(r[1])): r for r in rows}
    for entry in info["reentries"]:
        before, after = _track_id_at(gt, by_frame, entry["id"], entry["exit_frame"]), \
            _track_id_at(gt, by_frame, entry["id"], entry["return_frame"] + 3)
        verdict = "kept its id" if before is not None and before == after else f"id {before} -> {after}"
        print(f"  person {entry['id']} out of view {entry['gap_frames'] / info['fps']:.1f} s: {verdict}")
    print(f"{info['frames'] / wall:.0f} frames/s end to end on {threads} threads; overlay video: {overlay}\n")
    return 0


def _public_run(task, sample, det: np.ndarray, info: dict) -> np.ndarray:
    """The clip's public detections (MOTChallenge protocol) through memstream, appearance from the frames."""
    import cv2
    from memstream.export import TorchBackend
    from memstream.pipelines.mot_data import rows_by_frame
    from memstream.pipelines.track_decoder import load_rules
    from memstream.pipelines.track_task import MemstreamTracker, public_dets

    cfg = task.model.cfg
    tracker = MemstreamTracker(TorchBackend(task.model), cfg, load_rules(None), info["fps"])
    by_frame, (w, h) = rows_by_frame(det), info["size"]
    cap, rows, f = cv2.VideoCapture(str(sample)), [], 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        f += 1
        rgb = cv2.resize(image, (cfg.image_size[1], cfg.image_size[0]), interpolation=cv2.INTER_AREA)[..., ::-1]
        dets = public_dets(by_frame.get(f, np.zeros((0, 10))), w, h, cfg.max_detections)
        for t in tracker.update(np.ascontiguousarray(rgb), dets):
            x1, y1, x2, y2 = np.asarray(t["box"]) * (w, h, w, h)
            rows.append((f, t["id"], x1, y1, x2 - x1, y2 - y1, t["score"], -1, -1, -1))
    cap.release()
    return np.asarray(rows, np.float64).reshape(-1, 10)


def _track_id_at(gt: np.ndarray, rows: dict, gt_id: int, frame: int) -> int | None:
    """The tracker id whose box overlaps ground-truth identity ``gt_id`` best around ``frame`` (IoU >= 0.5)."""
    for f in range(frame, frame - 6, -1):
        truth = gt[(gt[:, 0] == f) & (gt[:, 1] == gt_id)]
        if not len(truth):
            continue
        x, y, bw, bh = truth[0, 2:6]
        best, best_iou = None, 0.5
        for (rf, rid), r in rows.items():
            if rf != f:
                continue
            ix = max(0.0, min(x + bw, r[2] + r[4]) - max(x, r[2]))
            iy = max(0.0, min(y + bh, r[3] + r[5]) - max(y, r[3]))
            iou = ix * iy / (bw * bh + r[4] * r[5] - ix * iy)
            if iou >= best_iou:
                best, best_iou = rid, iou
        if best is not None:
            return best
    return None


def anomaly_demo(threads: int = 2, overlay: str | None = None) -> int:
    import json
    import tempfile
    from pathlib import Path

    from memstream.pipelines.anomaly_metrics import frame_auroc
    from memstream.pipelines.anomaly_task import AnomalyTask, bundled_anomaly_dir
    from memstream.pipelines.launch import stream
    from memstream.pipelines.sinks import OverlayVideoSink

    folder = bundled_anomaly_dir()
    sample = folder / "sample.mp4"
    if not sample.is_file() or not (folder / "model.safetensors").is_file():
        print(f"memstream demo: no bundled anomaly model or clip under {folder}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    info = json.loads((folder / "sample.json").read_text())
    task = AnomalyTask(calibration_s=4.0)
    overlay = overlay or str(Path(tempfile.gettempdir()) / "memstream-demo-anomaly.mp4")
    print(f"Anomaly detection: {sample.name} ({info['frames']} frames at {info['fps']:g} fps), bundled anomaly-small "
          f"(a bank of normal patch features from its masked autoencoder + a temporal memory that predicts how "
          "each part of the scene moves next); the first 4 s calibrate the threshold; anomalous stretches as they "
          "are flagged:")
    scores: list[float] = []
    state = {"start": None}

    class Flag:
        def write(self, event: dict) -> None:
            if event.get("type") != "anomaly":
                return
            scores.append(event["score"])
            if event.get("anomalous") and state["start"] is None:
                state["start"] = event["time"]
            elif not event.get("anomalous") and state["start"] is not None:
                print(f"  anomalous {state['start']:5.1f}-{event['time']:5.1f} s")
                state["start"] = None

        def close(self) -> None:
            pass

    start = time.perf_counter()
    for _ in stream(task, str(sample), sinks=[Flag(), OverlayVideoSink(overlay, task.draw)]):
        pass
    wall = time.perf_counter() - start
    fps = info["fps"]
    for (a, b), event in zip(info["intervals"], info["events"], strict=True):
        print(f"  labelled  {a / fps:5.1f}-{(b + 1) / fps:5.1f} s  {event['type']} ({event['kind']})")
    labels = np.asarray(info["frame_labels"][: len(scores)])
    print(f"frame AUROC {frame_auroc(labels, np.asarray(scores[: len(labels)])):.3f}; {len(scores) / wall:.0f} "
          f"frames/s end to end; overlay video: {overlay}\n")
    return 0


def cli_demo(argv: list[str] | None = None) -> int:
    from memstream.pipelines import recall

    parser = argparse.ArgumentParser(prog="memstream demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=256, help="recall: sequences per distance (default 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("asr", "action", "track", "anomaly", "recall"), help="run one part only")
    parser.add_argument("--overlay", help="action/track/anomaly: the overlay video (default: in the temp folder)")
    args = parser.parse_args(argv)
    code = 0
    if args.only in (None, "asr"):
        code = asr_demo(args.threads)
    if args.only in (None, "action"):
        code = max(code, action_demo(args.threads, args.overlay))
    if args.only in (None, "track"):
        code = max(code, track_demo(args.threads, args.overlay if args.only == "track" else None))
    if args.only in (None, "anomaly"):
        code = max(code, anomaly_demo(args.threads, args.overlay if args.only == "anomaly" else None))
    if args.only in (None, "recall"):
        code = max(code, recall.cli_demo(["--sequences", str(args.sequences), "--threads", str(args.threads)]))
    return code
