"""Track decisions outside the graph: Hungarian assignment, birth, miss tolerance and death (YAML rules).

:class:`TrackDecoder` (one per stream, plain Python) turns one :class:`memstream.models.track.TrackOutput`
frame into tracked boxes with stable ids and the ``assign`` vector the model takes with the next frame.
The rules come from a YAML file in the style of Ultralytics' tracker files::

    tracker_type: memstream
    det_thresh: 0.3        # detections below this score are ignored
    new_track_thresh: 0.5  # an unmatched detection at least this confident starts a track
    match_thresh: 0.3      # a match needs P(detection continues the track) >= this
    min_hits: 2            # observations before a track is reported (every track in the first frames)
    max_lost_s: 20.0       # a confirmed track unseen this long (seconds) is deleted: its memory is kept until then

A tentative track (fewer than ``min_hits`` observations) dies at its first miss, as in SORT. The defaults
suit public detections (scores of true boxes mostly >= 0.6); the model's own heatmap peaks are lower, so
tracking on its own detections starts from ``OWN_DETECTIONS`` (chosen on the synthetic validation split).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

ASSIGN_NONE, ASSIGN_REMOVE = -1, -2


@dataclass(frozen=True)
class TrackRules:
    """Birth, match and death rules of :class:`TrackDecoder` (see the module docstring)."""

    det_thresh: float = 0.3
    new_track_thresh: float = 0.5
    match_thresh: float = 0.3
    min_hits: int = 2
    max_lost_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ("det_thresh", "new_track_thresh", "match_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TrackRules: {name}={value!r} must be in [0, 1]")
        if not isinstance(self.min_hits, int) or self.min_hits < 1:
            raise ValueError(f"TrackRules: min_hits={self.min_hits!r} must be an integer >= 1")
        if not self.max_lost_s >= 0:
            raise ValueError(f"TrackRules: max_lost_s={self.max_lost_s!r} must be >= 0")

    def replace(self, **changes) -> TrackRules:
        return dataclasses.replace(self, **changes)


OWN_DETECTIONS = TrackRules(det_thresh=0.2, new_track_thresh=0.4)


def load_rules(source: str | Path | dict | None = None, own_detections: bool = False) -> TrackRules:
    """Rules from a YAML file (or a dict); None gives the defaults (``OWN_DETECTIONS`` for the model's own
    detections). Keys a file leaves out keep those defaults; unknown keys fail, naming them."""
    base = OWN_DETECTIONS if own_detections else TrackRules()
    if source is None:
        return base
    if isinstance(source, dict):
        data = dict(source)
        where = "rules"
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"tracker rules {source}: no such file")
        data = yaml.safe_load(path.read_text()) or {}
        where = str(path)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of rule names to values")
    kind = data.pop("tracker_type", "memstream")
    if kind != "memstream":
        raise ValueError(f"{where}: tracker_type={kind!r}; this file is for another tracker (expected memstream)")
    known = {f.name for f in dataclasses.fields(TrackRules)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return base.replace(**data)


@dataclass
class _Track:
    id: int
    hits: int = 1
    lost: int = 0


class TrackDecoder:
    """Per-stream decisions on the model's association log-probs.

    Args:
        rules: :class:`TrackRules`. max_tracks: the model's track slots N. frame_rate: frames per second of
        the stream (turns ``max_lost_s`` into frames).
    """

    def __init__(self, rules: TrackRules, max_tracks: int, frame_rate: float) -> None:
        self.rules, self.max_tracks = rules, max_tracks
        self.max_lost = max(1, int(round(rules.max_lost_s * frame_rate)))
        self.slots: dict[int, _Track] = {}
        self.next_id = 1
        self.frame = 0

    def update(self, det_box: np.ndarray, det_score: np.ndarray, det_valid: np.ndarray,
               logp: np.ndarray) -> tuple[list[dict], np.ndarray]:
        """One frame: det_box (K, 4) x1y1x2y2 normalised, det_score (K,), det_valid (K,), logp (K, N + 1)
        -> (tracked boxes ``{"id", "box", "score", "slot"}``, assign (N,) int64 for the next step)."""
        r = self.rules
        n = self.max_tracks
        assign = np.full(n, ASSIGN_NONE, np.int64)
        dets = np.flatnonzero(det_valid & (det_score >= r.det_thresh))
        alive = sorted(self.slots)
        matched_dets: set[int] = set()
        out: list[dict] = []
        warmup = self.frame < r.min_hits
        if len(dets) and alive:
            scores = logp[np.ix_(dets, alive)]  # (D, A)
            rows, cols = linear_sum_assignment(-scores)
            for i, j in zip(rows, cols, strict=True):
                if scores[i, j] < math.log(max(r.match_thresh, 1e-12)):
                    continue
                slot, det = alive[j], int(dets[i])
                track = self.slots[slot]
                track.hits += 1
                track.lost = 0
                assign[slot] = det
                matched_dets.add(det)
                if track.hits >= r.min_hits or warmup:
                    out.append(self._event(track, slot, det_box[det], det_score[det]))
        for slot in alive:
            if assign[slot] >= 0:
                continue
            track = self.slots[slot]
            track.lost += 1
            if track.hits < r.min_hits or track.lost > self.max_lost:
                del self.slots[slot]
                assign[slot] = ASSIGN_REMOVE
        free = [s for s in range(n) if s not in self.slots and assign[s] != ASSIGN_REMOVE]
        for det in dets:
            det = int(det)
            if det in matched_dets or det_score[det] < r.new_track_thresh:
                continue
            if not free:
                self._evict(assign)
                break
            slot = free.pop(0)
            track = _Track(self.next_id)
            self.next_id += 1
            self.slots[slot] = track
            assign[slot] = det
            if r.min_hits <= 1 or warmup:
                out.append(self._event(track, slot, det_box[det], det_score[det]))
        self.frame += 1
        return out, assign

    def _evict(self, assign: np.ndarray) -> None:
        """All slots in use: free the longest-lost track for the next frame (a birth waits one frame)."""
        lost = [(t.lost, s) for s, t in self.slots.items() if assign[s] == ASSIGN_NONE]
        if lost:
            _, slot = max(lost)
            del self.slots[slot]
            assign[slot] = ASSIGN_REMOVE

    @staticmethod
    def _event(track: _Track, slot: int, box: np.ndarray, score: float) -> dict:
        return {"id": track.id, "box": [float(v) for v in box], "score": float(score), "slot": slot}
