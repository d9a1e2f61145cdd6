"""Multi-object tracking metrics: HOTA, CLEAR (MOTA, MOTP, IDSW, ...) and Identity (IDF1) as TrackEval computes them.

Why: published MOT17 / MOT20 / DanceTrack numbers come from TrackEval; to compare with them we use TrackEval's own
metric classes (``trackeval.metrics.HOTA``, ``CLEAR``, ``Identity``, ``Count``) and feed them the data dict that
``trackeval.datasets.MotChallenge2DBox`` would build, without its folder layout, seqmaps and prints.

The preprocessing is a port of ``MotChallenge2DBox.get_preprocessed_seq_data`` (TrackEval 1.3.0):

- similarity: box IoU of every gt and tracker box of a frame (TrackEval's ``_calculate_box_ious``, xywh);
- MOT16/17/20: tracker boxes matched (Hungarian on IoU >= 0.5) to a gt box of a distractor class (2 person on
  vehicle, 7 static person, 8 distractor, 12 reflection; MOT20 adds 6 non-MOT vehicle) are removed; then only gt
  boxes with ``conf != 0`` (zero-marked = ignored) and class 1 (pedestrian) are kept;
- MOT15: no classes, no distractor removal; gt boxes with ``conf != 0`` are kept;
- gt and tracker ids are relabelled to 0..n-1.

Inputs are ``(N, 10)`` rows of :func:`memstream.pipelines.mot_data.read_mot_file` (``frame, id, x, y, w, h, conf,
cls, vis, z``); frames run 1..``num_frames``. Stricter than TrackEval where its own behaviour would be silently
wrong: negative ids and invalid gt classes (MOT16/17/20) are rejected for the whole sequence, not per frame.
HOTA-family values are the mean over the 19 localisation thresholds alpha = 0.05..0.95, as TrackEval reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

BENCHMARKS = ("MOT15", "MOT16", "MOT17", "MOT20")
PEDESTRIAN = 1
_DISTRACTORS = (2, 7, 8, 12)  # person_on_vehicle, static_person, distractor, reflection
_NON_MOT_VEHICLE = 6  # a distractor in MOT20 only
_VALID_CLASSES = tuple(range(1, 14))  # MOTChallenge classes 1 pedestrian .. 13 crowd
_EPS = np.finfo("float").eps
_COUNTS = {"IDSW": ("CLEAR", "IDSW"), "FP": ("CLEAR", "CLR_FP"), "FN": ("CLEAR", "CLR_FN"), "TP": ("CLEAR", "CLR_TP"),
           "Frag": ("CLEAR", "Frag"), "MT": ("CLEAR", "MT"), "PT": ("CLEAR", "PT"), "ML": ("CLEAR", "ML"),
           "IDTP": ("Identity", "IDTP"), "IDFP": ("Identity", "IDFP"), "IDFN": ("Identity", "IDFN"),
           "GT_IDs": ("Count", "GT_IDs"), "IDs": ("Count", "IDs"), "GT_Dets": ("Count", "GT_Dets"),
           "Dets": ("Count", "Dets")}
_FRACTIONS = {"MOTA": ("CLEAR", "MOTA"), "MOTP": ("CLEAR", "MOTP"), "MODA": ("CLEAR", "MODA"),
              "IDF1": ("Identity", "IDF1"), "IDP": ("Identity", "IDP"), "IDR": ("Identity", "IDR"),
              "Recall": ("CLEAR", "CLR_Re"), "Precision": ("CLEAR", "CLR_Pr")}
HOTA_FIELDS = ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr")


def _metrics() -> dict:
    """name -> TrackEval metric object (its configs kept from printing)."""
    from trackeval.metrics import CLEAR, HOTA, Count, Identity

    quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    return {"HOTA": HOTA(), "CLEAR": CLEAR(dict(quiet)), "Identity": Identity(dict(quiet)), "Count": Count()}


def _check(rows, what: str, seq: str, num_frames: int, is_gt: bool) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return np.zeros((0, 10))
    if rows.ndim != 2 or rows.shape[1] < 7:
        raise ValueError(f"sequence {seq}: {what} rows must be (N, 10) frame,id,x,y,w,h,conf,cls,..., "
                         f"got shape {rows.shape}")
    if rows.shape[1] < 10:
        rows = np.column_stack([rows, np.full((len(rows), 10 - rows.shape[1]), -1.0)])
    for i in np.flatnonzero(~np.isfinite(rows[:, :8]).all(axis=1))[:1]:
        raise ValueError(f"sequence {seq}: {what}: NaN or infinite value in frame {rows[i, 0]}: {rows[i].tolist()}")
    frames = rows[:, 0]
    outside = (frames < 1) | (frames > num_frames) | (frames != np.round(frames))
    if outside.any():
        raise ValueError(f"sequence {seq}: {what}: frame {frames[outside][0]:g} is outside 1..{num_frames}")
    negative = rows[:, 1] < 0
    if negative.any():
        raise ValueError(f"sequence {seq}: {what}: negative id {rows[negative][0, 1]:g} in frame "
                         f"{rows[negative][0, 0]:g} (tracks need ids >= 0; -1 marks detections, not tracks)")
    by_id = rows[np.lexsort((rows[:, 1], rows[:, 0])), :2]  # (N, 2) frame, id
    twice = (by_id[1:] == by_id[:-1]).all(axis=1)
    if twice.any():
        frame = int(by_id[1:][twice][0, 0])
        ids = np.unique(by_id[1:][twice & (by_id[1:, 0] == frame), 1]).astype(int).tolist()
        raise ValueError(f"sequence {seq}: {what} has the same id more than once in frame {frame}: ids {ids}")
    if not is_gt and (rows[:, 7] > 1).any():
        raise ValueError(f"sequence {seq}: results: class {rows[rows[:, 7] > 1][0, 7]:g} found; only pedestrians "
                         "(class 1 or -1) can be evaluated")
    return rows


def preprocess(gt, results, num_frames: int, benchmark: str = "MOT17", seq: str = "sequence") -> dict:
    """TrackEval's preprocessed data dict for one sequence (see the module docstring): per frame t,
    ``gt_ids (n_gt,)``, ``tracker_ids (n_tr,)``, ``gt_dets (n_gt, 4)``, ``tracker_dets (n_tr, 4)`` xywh,
    ``tracker_confidences (n_tr,)``, ``similarity_scores (n_gt, n_tr)``; plus the counts ``num_*``."""
    from trackeval.datasets._base_dataset import _BaseDataset

    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"sequence {seq}: num_frames must be a count >= 1, got {num_frames!r}")
    num_frames = int(num_frames)
    gt = _check(gt, "ground truth", seq, num_frames, True)
    results = _check(results, "results", seq, num_frames, False)
    classes_matter = benchmark != "MOT15"
    distractors = _DISTRACTORS + ((_NON_MOT_VEHICLE,) if benchmark == "MOT20" else ())
    if classes_matter and len(gt):
        invalid = np.setdiff1d(gt[:, 7].astype(int), _VALID_CLASSES)
        if len(invalid):
            raise ValueError(f"sequence {seq}: ground truth has classes {invalid.tolist()}, not MOTChallenge classes "
                             f"1..13 (benchmark {benchmark}; MOT15 ground truth has no classes: use MOT15)")
    keys = ("gt_ids", "tracker_ids", "gt_dets", "tracker_dets", "tracker_confidences", "similarity_scores")
    data: dict = {k: [None] * num_frames for k in keys}
    gt = gt[np.argsort(gt[:, 0], kind="stable")]
    results = results[np.argsort(results[:, 0], kind="stable")]
    gt_at = np.searchsorted(gt[:, 0], np.arange(1, num_frames + 2))
    tr_at = np.searchsorted(results[:, 0], np.arange(1, num_frames + 2))
    for t in range(num_frames):
        g, r = gt[gt_at[t]:gt_at[t + 1]], results[tr_at[t]:tr_at[t + 1]]
        similarity = _BaseDataset._calculate_box_ious(g[:, 2:6], r[:, 2:6], box_format="xywh")  # (n_gt, n_tr)
        remove = np.zeros(0, int)
        if classes_matter and len(g) and len(r):
            scores = similarity.copy()
            scores[scores < 0.5 - _EPS] = 0
            rows, cols = linear_sum_assignment(-scores)
            matched = scores[rows, cols] > 0 + _EPS
            rows, cols = rows[matched], cols[matched]
            remove = cols[np.isin(g[rows, 7].astype(int), distractors)]
        r = np.delete(r, remove, axis=0)
        similarity = np.delete(similarity, remove, axis=1)
        keep = g[:, 6].astype(int) != 0
        if classes_matter:
            keep &= g[:, 7].astype(int) == PEDESTRIAN
        data["gt_ids"][t], data["gt_dets"][t] = g[keep, 1].astype(int), g[keep, 2:6]
        data["tracker_ids"][t], data["tracker_dets"][t] = r[:, 1].astype(int), r[:, 2:6]
        data["tracker_confidences"][t] = r[:, 6]
        data["similarity_scores"][t] = similarity[keep]
    for side in ("gt", "tracker"):
        ids = data[f"{side}_ids"]
        unique = np.unique(np.concatenate(ids))
        for t in range(num_frames):
            ids[t] = np.searchsorted(unique, ids[t]).astype(int)  # contiguous 0..n-1, order kept
        data[f"num_{side}_ids"] = len(unique)
        data[f"num_{side}_dets"] = sum(len(i) for i in ids)
    data["num_timesteps"], data["seq"] = num_frames, seq
    return data


@dataclass
class SequenceScore:
    """TrackEval's raw results of one sequence (or of combined sequences): ``results[metric][field]``, metric in
    HOTA, CLEAR, Identity, Count; HOTA fields are ``(19,)`` arrays over alpha."""

    name: str
    results: dict[str, dict]

    def summary(self) -> dict:
        """Headline numbers: HOTA, DetA, AssA, LocA, ... (alpha-averaged), MOTA, MOTP, IDF1, IDP, IDR, Recall,
        Precision as fractions 0..1 (floats); IDSW, FP, FN, TP, Frag, MT, PT, ML, GT_IDs, ... as ints."""
        out = {k: float(np.mean(self.results["HOTA"][k])) for k in HOTA_FIELDS}
        out.update({k: float(self.results[m][f]) for k, (m, f) in _FRACTIONS.items()})
        out.update({k: int(self.results[m][f]) for k, (m, f) in _COUNTS.items()})
        return out

    def hota_alpha_curve(self) -> dict[str, np.ndarray]:
        """``{"alpha": (19,), "HOTA": (19,), "DetA": (19,), "AssA": (19,), "LocA": (19,)}``: the HOTA family at each
        localisation threshold alpha = 0.05..0.95."""
        from trackeval.metrics import HOTA

        out = {"alpha": np.asarray(HOTA().array_labels, dtype=float)}
        out.update({k: np.asarray(self.results["HOTA"][k], dtype=float) for k in ("HOTA", "DetA", "AssA", "LocA")})
        return out


def evaluate_sequence(gt, results, num_frames: int, benchmark: str = "MOT17", name: str = "sequence") \
        -> SequenceScore:
    """Score tracker ``results`` against ``gt`` (``(N, 10)`` rows each) over frames 1..``num_frames``."""
    data = preprocess(gt, results, num_frames, benchmark, name)
    return SequenceScore(name, {k: m.eval_sequence(data) for k, m in _metrics().items()})


def combine(scores: dict[str, SequenceScore]) -> SequenceScore:
    """Sequences combined as TrackEval's ``COMBINED_SEQ`` (counts summed, HOTA association terms weighted by TP)."""
    if not scores:
        raise ValueError("no sequence scores to combine")
    metrics = _metrics()
    return SequenceScore("combined", {k: m.combine_sequences({n: s.results[k] for n, s in scores.items()})
                                      for k, m in metrics.items()})


def evaluate(sequences: dict[str, tuple], benchmark: str = "MOT17") -> dict:
    """``sequences[name] = (gt, results, num_frames)`` -> ``{"sequences": {name: summary}, "combined": summary}``."""
    scores = {name: evaluate_sequence(gt, res, n, benchmark, name) for name, (gt, res, n) in sequences.items()}
    return {"sequences": {n: s.summary() for n, s in scores.items()}, "combined": combine(scores).summary()}
