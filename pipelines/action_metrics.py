"""Temporal action localization metrics: detection mAP at tIoU thresholds, per-frame mAP, online detection latency.

Why: THUMOS14 results are reported as ActivityNet-style detection mAP at tIoU 0.3..0.7, online detectors
additionally as per-frame mAP (TeSTra/OadTR convention) and by how late after an action's end it is reported.

- ``average_precision_detection`` is ActivityNet's ``compute_average_precision_detection`` (Evaluation/
  eval_detection.py) without pandas: predictions by decreasing score, each matched to the unmatched ground truth
  of its video with the highest tIoU >= threshold (else a false positive; a duplicate of a matched detection is a
  false positive), AP the area under the VOC precision envelope (``interpolated_prec_rec``). Ties are broken
  deterministically: equal scores keep the input order, equal tIoUs the ground-truth order (the reference's
  ``argsort()[::-1]`` leaves both to numpy's sort).
- ``detection_map``: per-class AP averaged over the classes that have ground truth; ``Ambiguous`` ground truth is
  not counted (as in G-TAD's ``thumos_gt.json``).
- ``frame_map``: per-class ``sklearn.metrics.average_precision_score`` over frames, classes without a positive
  frame skipped, ``ignore`` frames (THUMOS14: Ambiguous) left out.
- ``detection_latency``: stream seconds between a ground-truth action's end and the first output of a detection
  that matches it.

Segments are ``[start, end]`` seconds; predictions are ``{video: [{"label", "score", "segment", ("emitted")}]}``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from memstream.pipelines.action_data import AMBIGUOUS, ActionVideo, parse_result
from sklearn.metrics import average_precision_score

TIOUS = (0.3, 0.4, 0.5, 0.6, 0.7)


def tiou(segment, segments) -> np.ndarray:
    """Temporal IoU of one ``segment`` ``(2,)`` with each of ``segments`` ``(N, 2)`` -> ``(N,)`` float64.

    Disjoint segments give 0; so does a pair of zero-length segments (empty union).
    """
    target = np.asarray(segment, np.float64).reshape(2)
    candidates = np.asarray(segments, np.float64).reshape(-1, 2)
    inter = (np.minimum(target[1], candidates[:, 1]) - np.maximum(target[0], candidates[:, 0])).clip(0)  # (N,)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter  # (N,)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _thresholds(tious) -> np.ndarray:
    t = np.asarray(tious, np.float64).reshape(-1)
    if t.size == 0 or not np.all((t > 0) & (t <= 1)):
        raise ValueError(f"tIoU thresholds must be in (0, 1], got {list(tious)}")
    return t


def interpolated_prec_rec(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 AP: area under the precision envelope, sum of (recall step) * (envelope at that recall)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]  # mprec[i] = max(mprec[i:])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision_detection(gt: list[tuple], preds: list[tuple], tious=TIOUS) -> np.ndarray:
    """AP of one class's detections at each tIoU threshold -> ``(len(tious),)``.

    ``gt``: ``[(video, start, end)]``; ``preds``: ``[(video, start, end, score)]``. ``npos = len(gt)``; no
    predictions give AP 0; no ground truth is an error (AP undefined).
    """
    thresholds = _thresholds(tious)
    if not gt:
        raise ValueError("average precision needs at least one ground-truth instance")
    ap = np.zeros(len(thresholds))
    if not preds:
        return ap
    gt_segments = np.array([(s, e) for _, s, e in gt], np.float64)  # (G, 2)
    gt_of_video: dict[str, list[int]] = defaultdict(list)
    for j, (video, _, _) in enumerate(gt):
        gt_of_video[video].append(j)
    by_video = {v: np.array(j) for v, j in gt_of_video.items()}
    scores = np.array([p[3] for p in preds], np.float64)  # (P,)
    order = np.argsort(-scores, kind="stable")
    locked = np.zeros((len(thresholds), len(gt)), bool)  # (K, G) ground truth already matched
    tp = np.zeros((len(thresholds), len(preds)))  # (K, P) in score order
    for rank, p in enumerate(order):
        video, s, e, _ = preds[p]
        idx = by_video.get(video)
        if idx is None:
            continue  # no ground truth in this video: a false positive at every threshold
        overlap = tiou((s, e), gt_segments[idx])
        by_overlap = np.argsort(-overlap, kind="stable")
        ranked, ranked_overlap = idx[by_overlap], overlap[by_overlap]
        for k, thr in enumerate(thresholds):
            free = ranked[(ranked_overlap >= thr) & ~locked[k, ranked]]
            if free.size:
                tp[k, rank] = 1.0
                locked[k, free[0]] = True
    tp_cum = np.cumsum(tp, axis=1)  # (K, P)
    fp_cum = np.cumsum(1.0 - tp, axis=1)
    recall = tp_cum / len(gt)
    precision = tp_cum / (tp_cum + fp_cum)
    for k in range(len(thresholds)):
        ap[k] = interpolated_prec_rec(precision[k], recall[k])
    return ap


def _tiou_key(t: float) -> str:
    return f"{t:g}"


def _ground_truth_by_class(ground_truth: dict[str, ActionVideo], classes) -> dict[str, list[tuple]]:
    by_class: dict[str, list[tuple]] = {c: [] for c in classes}
    if len(by_class) != len(classes):
        raise ValueError(f"classes has duplicates: {list(classes)}")
    for name, video in ground_truth.items():
        for a in video.instances:
            if a.label == AMBIGUOUS:
                continue
            if a.label not in by_class:
                raise ValueError(f"ground truth, video {name}: unknown label {a.label!r} (classes: {list(classes)})")
            by_class[a.label].append((name, a.start, a.end))
    return by_class


def detection_map(ground_truth: dict[str, ActionVideo], predictions: dict[str, list[dict]], classes,
                  tious=TIOUS) -> dict:
    """Detection mAP at each tIoU -> ``{"map": {"0.3": .., ..., "mean": ..}, "ap": {class: [AP per tIoU]},
    "classes_without_gt": [...], "ignored_videos": n, "ignored_predictions": n}``.

    ``map[t]`` averages AP over the classes with ground truth (``ap`` lists only those); ``"mean"`` averages over
    the thresholds. Predictions for videos not in ``ground_truth`` are ignored and counted.
    """
    thresholds = _thresholds(tious)
    gt_by_class = _ground_truth_by_class(ground_truth, classes)
    preds_by_class: dict[str, list[tuple]] = {c: [] for c in classes}
    ignored_videos = ignored_predictions = 0
    for video, entries in predictions.items():
        if video not in ground_truth:
            ignored_videos += 1
            ignored_predictions += len(entries)
            continue
        for k, entry in enumerate(entries):
            r = parse_result(entry, f"predictions, video {video}: result {k}")
            if r["label"] not in preds_by_class:
                raise ValueError(f"predictions, video {video}: result {k}: unknown label {r['label']!r} "
                                 f"(classes: {list(classes)})")
            preds_by_class[r["label"]].append((video, *r["segment"], r["score"]))
    ap = {c: average_precision_detection(gt_by_class[c], preds_by_class[c], thresholds).tolist()
          for c in classes if gt_by_class[c]}
    if not ap:
        raise ValueError(f"the ground truth has no instance of any of the classes {list(classes)}")
    per_tiou = np.array(list(ap.values())).mean(axis=0)  # (K,)
    table = {_tiou_key(t): float(m) for t, m in zip(thresholds, per_tiou)}
    table["mean"] = float(per_tiou.mean())
    return {"map": table, "ap": ap, "classes_without_gt": [c for c in classes if not gt_by_class[c]],
            "ignored_videos": ignored_videos, "ignored_predictions": ignored_predictions}


def frame_map(scores: np.ndarray, targets: np.ndarray, *, ignore: np.ndarray | None = None) -> dict:
    """Per-frame mAP: ``scores`` ``(N, C)``, ``targets`` ``(N, C)`` 0/1, ``ignore`` ``(N,)`` bool frames to leave out.

    -> ``{"frame_map": mean AP over classes with a positive frame (None if none), "ap": [AP or None] * C,
    "skipped": [class columns with no positive frame]}``. Pass only the action columns (drop background).
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain non-finite values")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    if ignore is not None:
        ignore = np.asarray(ignore, bool)
        if ignore.shape != (len(scores),):
            raise ValueError(f"ignore must be ({len(scores)},) bool, got shape {ignore.shape}")
        scores, targets = scores[~ignore], targets[~ignore]
    ap: list[float | None] = []
    for c in range(scores.shape[1]):
        positive = targets[:, c] == 1
        ap.append(float(average_precision_score(positive, scores[:, c])) if positive.any() else None)
    kept = [a for a in ap if a is not None]
    return {"frame_map": float(np.mean(kept)) if kept else None, "ap": ap,
            "skipped": [c for c, a in enumerate(ap) if a is None]}


def detection_latency(ground_truth: dict[str, ActionVideo], predictions: dict[str, list[dict]],
                      tiou_threshold: float = 0.5) -> dict:
    """How late matching detections are output, in stream seconds after the ground-truth action's end.

    For each (non-Ambiguous) ground-truth instance, the earliest-``"emitted"`` prediction of the same video and
    class with tIoU >= ``tiou_threshold``; latency = emitted - end (negative: reported before the action ended).
    -> ``{"matched", "total", "mean", "median", "p90", "values"}`` (statistics None when nothing matched).
    """
    _thresholds([tiou_threshold])
    preds: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for video, entries in predictions.items():
        if video not in ground_truth:
            continue
        for k, entry in enumerate(entries):
            r = parse_result(entry, f"predictions, video {video}: result {k}")
            if "emitted" not in r:
                raise ValueError(f"predictions, video {video}: result {k}: no \"emitted\" time")
            preds[video, r["label"]].append((*r["segment"], r["emitted"]))
    values, total = [], 0
    for name, video in ground_truth.items():
        for a in video.instances:
            if a.label == AMBIGUOUS:
                continue
            total += 1
            candidates = np.array(preds.get((name, a.label), []), np.float64).reshape(-1, 3)  # (P, 3) s, e, emitted
            good = candidates[tiou((a.start, a.end), candidates[:, :2]) >= tiou_threshold]
            if len(good):
                values.append(float(good[:, 2].min()) - a.end)
    stats = {"mean": None, "median": None, "p90": None}
    if values:
        v = np.array(values)
        stats = {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
    return {"matched": len(values), "total": total, **stats, "values": values}

