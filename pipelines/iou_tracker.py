"""IoU + Kalman multi-object tracker (SORT, with ByteTrack-style options): the no-memory tracking baseline.

Why: a memory tracker is only worth its cost against the plain tracking-by-detection baseline on the same
detections. This is SORT (Bewley et al., "Simple Online and Realtime Tracking", arXiv:1602.00763), written from the
paper and the reference program's documented behaviour, so that the ``sort`` preset reproduces SORT's published
MOT15 figures on its own public detections; the ``bytetrack`` preset adds ByteTrack's two-stage association and a
longer miss tolerance to the same machinery (still no appearance, no memory of a lost object beyond ``max_age``).

Per track, a constant-velocity Kalman filter on ``[u, v, s, r, du, dv, ds]`` (box centre, area, aspect ratio; the
aspect ratio has no velocity), measured as ``[u, v, s, r]``, with SORT's noise: ``R = diag(1, 1, 10, 10)``,
``P0 = 10 * diag(1, 1, 1, 1, 1000, 1000, 1000)``, ``Q = diag(1, 1, 1, 1, 0.01, 0.01, 1e-4)``; the update uses the
Joseph form. Each frame (``update``):

1. every track predicts (an area velocity that would make the area non-positive is zeroed first; a missed frame
   resets the track's ``hit_streak``); tracks whose predicted box is not finite are dropped;
2. association on IoU between detections and predicted boxes ``(x1, y1, x2, y2)``: if thresholding IoU above
   ``iou_threshold`` already pairs detections and tracks one to one it is the matching, else scipy's
   ``linear_sum_assignment`` on ``-IoU``; pairs with IoU below ``iou_threshold`` are left unmatched.
   With ``two_stage`` (ByteTrack): detections scoring ``>= track_thresh`` are matched first against all tracks,
   then those in ``[low_thresh, track_thresh)`` against the remaining tracks that were matched in the previous
   frame, with ``low_iou_threshold``. Detections below ``low_thresh`` are never used;
3. matched tracks update; unmatched (first-stage) detections scoring ``>= new_track_thresh`` start tracks;
4. a track is output (its filtered box) when it was matched in this frame and its ``hit_streak >= min_hits`` (the
   detection that starts a track is no hit: after the first ``min_hits`` frames a new track shows on its
   ``min_hits + 1``-th consecutive detection), or while the frame count is ``<= min_hits``, or
   (``keep_confirmed``) when it has been output before; tracks unmatched for more than ``max_age`` frames are
   deleted, tracks never output yet after ``tentative_max_age`` frames. Ids start at 1.

Presets: ``sort`` is SORT's published setting (max_age 1, min_hits 3, IoU 0.3, every detection, one stage).
``bytetrack`` follows ByteTrack's MOT17 defaults: high/low score split 0.5/0.1, new tracks from score >= 0.6
(``track_thresh + 0.1``), first-stage match at IoU >= 0.2 (``match_thresh`` 0.8 as a distance), second stage at
IoU >= 0.5, lost tracks kept 30 frames (``track_buffer`` at 30 fps), a track shown from its second consecutive
detection (``min_hits`` 1; all tracks of the first frame at once) and, once shown, again as soon as it is re-found,
a track not yet shown deleted at its first miss. ByteTrack's own xyah Kalman filter, score fusion, box-area filter
and its separate matching of unconfirmed tracks are not reproduced.

``run_sequence_supervision`` runs the external peer, Roboflow's ByteTrack (``trackers.ByteTrackTracker``, the
successor of ``supervision.ByteTrack``, which supervision removed in 0.30), on the same detections.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)

# Constant-velocity model: [u, v, s, r, du, dv, ds]; r has no velocity.
_F = np.eye(7)
_F[0, 4] = _F[1, 5] = _F[2, 6] = 1.0
_H = np.eye(4, 7)
_R = np.diag([1.0, 1.0, 10.0, 10.0])
_P0 = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
_Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4])
_I7 = np.eye(7)


@dataclass(frozen=True)
class IouTrackerConfig:
    """Settings of :class:`IouTracker` (see the module docstring). Score thresholds are inclusive lower bounds."""

    max_age: int = 1                   # frames a track survives unmatched
    min_hits: int = 3                  # consecutive matches before a track is output
    iou_threshold: float = 0.3         # (first-stage) association: IoU >= this
    two_stage: bool = False            # ByteTrack's high-then-low score association
    track_thresh: float = 0.5          # two_stage: high-score detections score >= this
    low_thresh: float = -math.inf      # detections scoring below are dropped
    new_track_thresh: float = -math.inf  # unmatched detections scoring >= this start tracks
    low_iou_threshold: float = 0.5     # two_stage: second-stage association IoU
    keep_confirmed: bool = False       # a track once output is output whenever matched (ByteTrack)
    tentative_max_age: int | None = None  # frames a never-output track survives unmatched (None: max_age)

    def __post_init__(self) -> None:
        for name in ("max_age", "min_hits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"IouTrackerConfig: {name}={value!r} must be an int >= 0")
        value = self.tentative_max_age
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"IouTrackerConfig: tentative_max_age={value!r} must be an int >= 0 or None")
        for name in ("iou_threshold", "low_iou_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"IouTrackerConfig: {name}={value!r} must be a number in [0, 1]")
        for name in ("track_thresh", "low_thresh", "new_track_thresh"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"IouTrackerConfig: {name}={value!r} must be a number (-.inf allowed)")
        for name in ("two_stage", "keep_confirmed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"IouTrackerConfig: {name}={getattr(self, name)!r} must be true or false")
        if self.two_stage and self.low_thresh > self.track_thresh:
            raise ValueError(f"IouTrackerConfig: low_thresh={self.low_thresh} must be <= "
                             f"track_thresh={self.track_thresh}")


PRESETS: dict[str, IouTrackerConfig] = {
    "sort": IouTrackerConfig(),
    "bytetrack": IouTrackerConfig(max_age=30, min_hits=1, iou_threshold=0.2, two_stage=True, track_thresh=0.5,
                                  low_thresh=0.1, new_track_thresh=0.6, low_iou_threshold=0.5, keep_confirmed=True,
                                  tentative_max_age=0),
}


def load_config(name_or_yaml_path: str | Path) -> IouTrackerConfig:
    """A preset name (``sort``, ``bytetrack``) or an Ultralytics-style YAML file -> :class:`IouTrackerConfig`.

    The YAML holds ``tracker_type: sort|bytetrack`` (the preset its other keys override) and any config fields;
    an unknown key or tracker type is a ``ValueError`` naming it.
    """
    if isinstance(name_or_yaml_path, str) and name_or_yaml_path in PRESETS:
        return PRESETS[name_or_yaml_path]
    path = Path(name_or_yaml_path)
    if not path.is_file():
        raise ValueError(f"tracker config {str(name_or_yaml_path)!r} is neither a preset ({', '.join(PRESETS)}) "
                         "nor a YAML file")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a tracker YAML must be a mapping of settings, got {type(data).__name__}")
    kind = data.pop("tracker_type", None)
    if kind not in PRESETS:
        raise ValueError(f"{path}: tracker_type={kind!r} must be one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(IouTrackerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown tracker settings {unknown} "
                         f"(known: tracker_type, {', '.join(sorted(known))})")
    return replace(PRESETS[kind], **data)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(A, 4)`` with boxes ``(B, 4)``, both ``x1, y1, x2, y2`` (continuous, no +1) -> ``(A, B)``."""
    a = boxes_a[:, None, :4]  # (A, 1, 4)
    b = boxes_b[None, :, :4]  # (1, B, 4)
    w = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    h = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = w * h
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (union - inter)


def associate(iou: np.ndarray, threshold: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """SORT's association of an IoU matrix ``(D, T)`` -> (matched ``(d, t)`` pairs, unmatched d, unmatched t).

    A thresholded one-to-one matching is used as is; otherwise ``linear_sum_assignment(-iou)``; pairs below
    ``threshold`` are unmatched.
    """
    n_det, n_trk = iou.shape
    if n_det == 0 or n_trk == 0:
        return [], list(range(n_det)), list(range(n_trk))
    above = iou > threshold
    if above.sum(1).max() == 1 and above.sum(0).max() == 1:
        rows, cols = np.nonzero(above)
    else:
        rows, cols = linear_sum_assignment(-iou)
    pairs = [(int(d), int(t)) for d, t in zip(rows, cols) if iou[d, t] >= threshold]
    matched_d = {d for d, _ in pairs}
    matched_t = {t for _, t in pairs}
    return pairs, [d for d in range(n_det) if d not in matched_d], [t for t in range(n_trk) if t not in matched_t]


def box_to_z(box: np.ndarray) -> np.ndarray:
    """``x1, y1, x2, y2`` -> measurement ``[u, v, s, r]`` (centre, area, aspect w/h)."""
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2.0, box[1] + h / 2.0, w * h, w / h])


def x_to_box(x: np.ndarray) -> np.ndarray:
    """State ``(7,)`` -> ``x1, y1, x2, y2`` (NaN where area * aspect < 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.sqrt(x[2] * x[3])
        h = x[2] / w
    return np.array([x[0] - w / 2.0, x[1] - h / 2.0, x[0] + w / 2.0, x[1] + h / 2.0])


class KalmanBoxTrack:
    """One track: SORT's constant-velocity Kalman filter over a box, with its hit and miss counters."""

    def __init__(self, box: np.ndarray, track_id: int) -> None:
        self.x = np.zeros(7)
        self.x[:4] = box_to_z(box)
        self.P = _P0.copy()
        self.id = track_id
        self.time_since_update = 0
        self.hits = 0
        self.hit_streak = 0
        self.age = 0
        self.confirmed = False

    def predict(self) -> np.ndarray:
        """Advance one frame -> predicted box ``(4,)``."""
        if self.x[6] + self.x[2] <= 0:
            self.x[6] = 0.0
        self.x = _F @ self.x
        self.P = _F @ self.P @ _F.T + _Q
        self.age += 1
        if self.time_since_update > 0:
            self.hit_streak = 0
        self.time_since_update += 1
        return x_to_box(self.x)

    def update(self, box: np.ndarray) -> None:
        """Correct with a matched detection box ``(4,)`` (Joseph-form covariance update)."""
        self.time_since_update = 0
        self.hits += 1
        self.hit_streak += 1
        y = box_to_z(box) - _H @ self.x
        pht = self.P @ _H.T
        gain = pht @ np.linalg.inv(_H @ pht + _R)
        self.x = self.x + gain @ y
        i_kh = _I7 - gain @ _H
        self.P = i_kh @ self.P @ i_kh.T + gain @ _R @ gain.T

    def box(self) -> np.ndarray:
        return x_to_box(self.x)


class IouTracker:
    """Online IoU tracker over one stream; ``update`` once per frame, in order, including frames without detections.

    Args:
        config: :class:`IouTrackerConfig`, or a preset name / YAML path for :func:`load_config`.
    """

    def __init__(self, config: IouTrackerConfig | str | Path = "sort") -> None:
        self.config = config if isinstance(config, IouTrackerConfig) else load_config(config)
        self.tracks: list[KalmanBoxTrack] = []
        self.frame_count = 0
        self.next_id = 1

    def reset(self) -> None:
        """Forget all tracks; ids start at 1 again."""
        self.tracks, self.frame_count, self.next_id = [], 0, 1

    def _check(self, dets: np.ndarray | None) -> np.ndarray:
        if dets is None or np.size(dets) == 0:
            return np.zeros((0, 5))
        dets = np.asarray(dets, np.float64)
        if dets.ndim != 2 or dets.shape[1] != 5:
            raise ValueError(f"detections must be (N, 5) x1, y1, x2, y2, score; got shape {dets.shape}")
        if not np.isfinite(dets).all():
            raise ValueError(f"frame {self.frame_count}: detections contain NaN or inf")
        empty = (dets[:, 2] <= dets[:, 0]) | (dets[:, 3] <= dets[:, 1])
        if empty.any():
            log.warning("frame %d: skipped %d detection(s) with zero or negative width/height",
                        self.frame_count, int(empty.sum()))
            dets = dets[~empty]
        return dets[dets[:, 4] >= self.config.low_thresh]

    def update(self, dets: np.ndarray | None) -> np.ndarray:
        """dets: ``(N, 5)`` ``x1, y1, x2, y2, score`` of this frame -> ``(M, 5)`` ``x1, y1, x2, y2, id`` by id."""
        cfg = self.config
        self.frame_count += 1
        dets = self._check(dets)
        predicted = [t.predict() for t in self.tracks]
        keep = [i for i, box in enumerate(predicted) if np.isfinite(box).all()]
        self.tracks = [self.tracks[i] for i in keep]
        trk_boxes = np.array([predicted[i] for i in keep]).reshape(-1, 4)  # (T, 4)

        if cfg.two_stage:
            high = np.flatnonzero(dets[:, 4] >= cfg.track_thresh)
            low = np.flatnonzero(dets[:, 4] < cfg.track_thresh)
        else:
            high, low = np.arange(len(dets)), np.zeros(0, int)
        pairs, free_high, free_trk = associate(iou_matrix(dets[high], trk_boxes), cfg.iou_threshold)
        matches = [(high[d], t) for d, t in pairs]
        recent = [t for t in free_trk if self.tracks[t].time_since_update == 1]  # matched in the previous frame
        if len(low) and recent:
            pairs, _, _ = associate(iou_matrix(dets[low], trk_boxes[recent]), cfg.low_iou_threshold)
            matches += [(low[d], recent[t]) for d, t in pairs]
        for d, t in matches:
            self.tracks[t].update(dets[d, :4])
        for d in high[free_high]:
            if dets[d, 4] >= cfg.new_track_thresh:
                self.tracks.append(KalmanBoxTrack(dets[d, :4], self.next_id))
                self.next_id += 1

        out = []
        for t in self.tracks:
            shown = t.hit_streak >= cfg.min_hits or self.frame_count <= cfg.min_hits or (
                cfg.keep_confirmed and t.confirmed)
            if t.time_since_update < 1 and shown:
                out.append(np.append(t.box(), t.id))
                t.confirmed = True
        tentative_max_age = cfg.max_age if cfg.tentative_max_age is None else cfg.tentative_max_age
        self.tracks = [t for t in self.tracks
                       if t.time_since_update <= (cfg.max_age if t.confirmed else tentative_max_age)]
        return np.array(sorted(out, key=lambda r: r[4])).reshape(-1, 5)


def _frames_of(det_rows: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate MOT det rows ``(N, >= 7)`` -> (frame numbers ``(N,)`` int, ``x1, y1, x2, y2, score`` ``(N, 5)``)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 0:
        raise ValueError(f"num_frames={num_frames!r} must be an int >= 0")
    rows = np.asarray(det_rows, np.float64)
    if rows.size == 0:
        rows = np.zeros((0, 10))
    if rows.ndim != 2 or rows.shape[1] < 7:
        raise ValueError(f"MOT detection rows need >= 7 columns (frame, id, x, y, w, h, score); got {rows.shape}")
    frames = rows[:, 0].astype(np.int64)
    if len(rows) and (frames.min() < 1 or frames.max() > num_frames or (frames != rows[:, 0]).any()):
        raise ValueError(f"detection frame numbers must be integers in [1, num_frames={num_frames}]; "
                         f"got {rows[:, 0].min():g}..{rows[:, 0].max():g}")
    boxes = rows[:, [2, 3, 4, 5, 6]].copy()
    boxes[:, 2:4] += boxes[:, 0:2]  # x, y, w, h -> x1, y1, x2, y2
    return frames, boxes


def _result_rows(frame: int, boxes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(M, 4)`` x1, y1, x2, y2 and ``(M,)`` ids -> MOT result rows ``(M, 10)``."""
    rows = np.full((len(boxes), 10), -1.0)
    rows[:, 0], rows[:, 1] = frame, ids
    rows[:, 2:4] = boxes[:, :2]
    rows[:, 4:6] = boxes[:, 2:4] - boxes[:, :2]
    rows[:, 6] = 1.0
    return rows


def run_sequence(det_rows: np.ndarray, num_frames: int,
                 config: IouTrackerConfig | str | Path = "sort") -> np.ndarray:
    """Track one sequence of MOT detection rows ``(N, 10)`` (``frame, -1, x, y, w, h, score, ...``, frames from 1)
    over frames ``1..num_frames`` -> MOT result rows ``(K, 10)`` ``frame, id, x, y, w, h, 1, -1, -1, -1``.
    """
    frames, boxes = _frames_of(det_rows, num_frames)
    tracker = IouTracker(config)
    out = []
    for frame in range(1, num_frames + 1):
        tracked = tracker.update(boxes[frames == frame])
        out.append(_result_rows(frame, tracked[:, :4], tracked[:, 4]))
    return np.concatenate(out) if out else np.zeros((0, 10))


def run_sequence_supervision(det_rows: np.ndarray, num_frames: int, frame_rate: float,
                             **tracker_kwargs) -> np.ndarray:
    """The external peer: Roboflow's ByteTrack on the same MOT detection rows -> MOT result rows ``(K, 10)``.

    Uses ``trackers.ByteTrackTracker`` (Roboflow's ``trackers`` package), or ``supervision.ByteTrack`` where an
    older supervision (< 0.30) still has it; ``tracker_kwargs`` go to its constructor (its own defaults otherwise).
    Boxes are kept as the tracker returns them (the matched detections); detections it returns without an id
    (``-1``: not yet confirmed) are left out; its ids (from 0) are shifted by 1 so that ids start at 1.
    """
    import supervision as sv

    frames, boxes = _frames_of(det_rows, num_frames)
    if frame_rate <= 0:
        raise ValueError(f"frame_rate={frame_rate!r} must be > 0")
    try:
        from trackers import ByteTrackTracker
    except ImportError:
        if not hasattr(sv, "ByteTrack"):
            raise ImportError("the ByteTrack peer needs the `trackers` package (pip install trackers), or "
                              "supervision < 0.30") from None
        tracker = sv.ByteTrack(frame_rate=frame_rate, **tracker_kwargs)
        step = tracker.update_with_detections
    else:
        tracker = ByteTrackTracker(frame_rate=frame_rate, **tracker_kwargs)
        step = tracker.update
    out = []
    for frame in range(1, num_frames + 1):
        these = boxes[frames == frame]
        result = step(sv.Detections(xyxy=these[:, :4].reshape(-1, 4), confidence=these[:, 4],
                                    class_id=np.zeros(len(these), int)))
        ids = np.asarray(result.tracker_id if result.tracker_id is not None else [], np.int64)
        shown = ids >= 0
        order = np.argsort(ids[shown], kind="stable")
        out.append(_result_rows(frame, np.asarray(result.xyxy)[shown][order], ids[shown][order] + 1))
    return np.concatenate(out) if out else np.zeros((0, 10))
