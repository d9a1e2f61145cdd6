"""Anomaly-detection metrics: image / frame AUROC, pixel AUROC and AUPRO, as MVTec AD results are reported.

Why: published MVTec AD numbers are image AUROC (one score per image), pixel AUROC (all pixels of the test set
pooled) and AUPRO (the per-region overlap curve of Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021, which weighs small defects as much as large ones). AUROC comes from scikit-learn; AUPRO follows the
definition as anomalib (``anomalib.metrics.AUPRO``, 2.x) and the MVTec AD evaluation script compute it:

1. regions: connected components of each image's ground-truth mask with 8-connectivity (anomalib labels them with
   ``cv2.connectedComponents``, whose default is 8; its GPU path uses a 3x3 max-pool, also 8);
2. thresholds: every distinct score of the pooled maps, from the highest down (curve start (0, 0) above it);
3. at each threshold t: FPR(t) = share of all normal pixels (of all images) with score >= t, and
   PRO(t) = mean over all regions of the share of the region's pixels with score >= t;
4. the curve is cut at ``fpr_limit``, with PRO linearly interpolated at FPR = ``fpr_limit``, integrated with the
   trapezoid rule and divided by ``fpr_limit`` (so 1.0 is perfect and a constant map gives ``fpr_limit / 2``).

``num_thresholds`` (not in anomalib 2.x; its 1.x binned mode) uses that many thresholds evenly spaced from the
lowest to the highest score instead of every distinct score: less exact, same cost order. Scores are used as
given (anomalib 1.x passed maps outside [0, 1] through a sigmoid first).

Shapes: ``labels (N,)`` 0/1 or bool, ``scores (N,)`` float; ``masks (N, H, W)`` bool (or 0/1), ``maps (N, H, W)``
float (a single ``(H, W)`` image is accepted). Where a value is undefined (one class only: no anomalous or no
normal samples / pixels / regions) the result is NaN with a logged warning, never an exception; anomalib returns
0.0 for AUPRO there. Bad input (shape mismatch, NaN or infinite scores, non-binary labels) raises ValueError.
"""

from __future__ import annotations

import logging
import math
import warnings

import cv2
import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score, roc_curve

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _binary(values, what: str) -> np.ndarray:
    """0/1 or bool values -> bool array; ValueError naming ``what`` for anything else."""
    array = np.asarray(values)
    if array.dtype != bool:
        if array.size and not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))].ravel()[0].item()
            hint = " (use `> 0` on 0/255 masks)" if what == "masks" else ""
            raise ValueError(f"{what} must be 0/1 or bool, found {bad!r}{hint}")
        array = array.astype(bool)
    return array


def _finite(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: {int((~np.isfinite(array)).sum())} NaN or infinite value(s)")
    return array


def _scored(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``labels (N,)`` bool and ``scores (N,)`` float64 for an AUROC over ``what``."""
    labels = _binary(labels, f"{what} labels").ravel()
    scores = _finite(scores, f"{what} scores").ravel()
    if labels.shape != scores.shape or labels.size == 0:
        raise ValueError(f"{what}: need as many labels as scores (and at least one), got {labels.size} labels and "
                         f"{scores.size} scores")
    return labels, scores


def _one_class(labels: np.ndarray, what: str) -> bool:
    if labels.all() or not labels.any():
        log.warning("%s: only %s samples (%d): AUROC is undefined, reported as NaN", what,
                    "anomalous" if labels.all() else "normal", labels.size)
        return True
    return False


def _auroc(labels, scores, what: str) -> float:
    labels, scores = _scored(labels, scores, what)
    return math.nan if _one_class(labels, what) else float(roc_auc_score(labels, scores))


def image_auroc(labels, scores) -> float:
    """Image-level AUROC: ``labels (N,)`` 1 anomalous, ``scores (N,)`` higher = more anomalous (scikit-learn's
    ``roc_auc_score``); NaN with a logged warning when only one class is present."""
    return _auroc(labels, scores, "image AUROC")


def frame_auroc(labels, scores) -> float:
    """Frame-level AUROC of a video set (all frames pooled), computed as :func:`image_auroc`."""
    return _auroc(labels, scores, "frame AUROC")


def image_auroc_replicates(labels, scores, replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """(replicates,) image AUROC of the test set resampled with replacement within each class: a stratified
    bootstrap, so every replicate keeps the set's numbers of normal and anomalous images and none is one-class.
    Each value is scikit-learn's AUROC of its resample (computed at once from average ranks: the Mann-Whitney
    identity, ties counting a half). All NaN, with a logged warning, when the set holds one class only."""
    labels, scores = _scored(labels, scores, "image AUROC interval")
    if replicates < 1:
        raise ValueError(f"replicates={replicates} must be >= 1")
    if _one_class(labels, "image AUROC interval"):
        return np.full(replicates, math.nan)
    picked = _stratified_resamples(labels, replicates, seed)
    ranks = rankdata(scores[picked], axis=1)  # (replicates, N)
    n1 = int(labels.sum())
    n0 = labels.size - n1
    return (ranks[:, n0:].sum(1) - n1 * (n1 + 1) / 2) / (n0 * n1)


def _stratified_resamples(labels: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(replicates, N) indices: each row the normal samples drawn with replacement, then the anomalous ones."""
    rng = np.random.default_rng(seed)
    normal, anomalous = np.flatnonzero(~labels), np.flatnonzero(labels)
    return np.concatenate([rng.choice(normal, (replicates, normal.size)),
                           rng.choice(anomalous, (replicates, anomalous.size))], axis=1)


def image_auroc_interval(sets, level: float = 0.95, replicates: int = 1000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of the mean image AUROC over ``sets``: ``[(labels, scores),
    ...]``, e.g. one per category, each resampled on its own (:func:`image_auroc_replicates`). Why: a test set of
    20 normal and 40 anomalous images (a synthetic seed's category) moves its AUROC by about 0.03 from one draw of
    images to the next, so a figure near a goal needs its interval beside it. A one-class set is left out, as
    :func:`summarise` leaves its NaN out of the mean; NaN when every set is."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    sets = list(sets)
    if not sets:
        raise ValueError("image AUROC interval: no (labels, scores) sets given")
    draws = np.stack([image_auroc_replicates(lab, sc, replicates, seed + i) for i, (lab, sc) in enumerate(sets)])
    kept = draws[np.isfinite(draws[:, 0])]
    if not len(kept):
        return [math.nan, math.nan]
    low, high = np.percentile(kept.mean(0), [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def roc_curve_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, each ``(K,)``, of scikit-learn's ``roc_curve`` for plots (first threshold is
    +inf). With one class only, a logged warning and the undefined rate is NaN."""
    labels, scores = _scored(labels, scores, "ROC curve")
    with warnings.catch_warnings():
        if _one_class(labels, "ROC curve"):  # scikit-learn's own warning says the same
            warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = roc_curve(labels, scores)
    return fpr, tpr, thresholds


def _pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``masks (N, H, W)`` bool and ``maps (N, H, W)`` float64 (an ``(H, W)`` pair becomes N = 1)."""
    masks = _binary(masks, "masks")
    maps = _finite(maps, "anomaly maps")
    if masks.ndim == 2 and maps.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3 or masks.shape != maps.shape or masks.size == 0:
        raise ValueError(f"masks and maps must both be (N, H, W) with N, H, W > 0, got masks {masks.shape} and "
                         f"maps {maps.shape}")
    return masks, maps


def pixel_auroc(masks, maps) -> float:
    """Pixel AUROC: all pixels of all images pooled (anomalib's pixel AUROC), ``masks (N, H, W)`` bool,
    ``maps (N, H, W)`` float; NaN with a logged warning without anomalous or without normal pixels."""
    masks, maps = _pixels(masks, maps)
    return _auroc(masks.ravel(), maps.ravel(), "pixel AUROC")


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    labels = np.zeros(masks.shape, np.int32)  # (N, H, W)
    count = 0
    for i, mask in enumerate(masks):
        n, comps = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        labels[i] = np.where(comps > 0, comps + count, 0)
        count += n - 1
    return labels, count


def region_labels(masks) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of each mask of ``masks (N, H, W)``: ``(N, H, W)`` int32 labels,
    0 = normal, regions numbered 1..R across all images; and R."""
    masks = _binary(masks, "masks")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {masks.shape}")
    return _regions(masks)


def _check_pro_options(fpr_limit: float, num_thresholds: int | None) -> None:
    if not (isinstance(fpr_limit, int | float) and 0 < fpr_limit <= 1):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    if num_thresholds is not None and not (isinstance(num_thresholds, int) and num_thresholds >= 2):
        raise ValueError(f"num_thresholds must be None (every distinct score) or an int >= 2, got {num_thresholds!r}")


def pro_curve(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve up to ``fpr_limit`` (steps 1-4 of the module docstring): ``(fpr, pro)``, each ``(K,)``,
    ``fpr`` rising from 0 to ``fpr_limit``. Empty arrays (and a logged warning) where it is undefined."""
    _check_pro_options(fpr_limit, num_thresholds)
    masks, maps = _pixels(masks, maps)
    labels, regions = _regions(masks)
    labels, scores = labels.ravel(), maps.ravel()
    normal = labels == 0
    if regions == 0 or not normal.any():
        log.warning("AUPRO: %s: undefined, reported as NaN", "no anomalous pixels" if regions == 0 else
                    "no normal pixels")
        return np.zeros(0), np.zeros(0)
    sizes = np.bincount(labels, minlength=regions + 1).astype(np.float64)
    overlap = np.where(normal, 0.0, 1.0 / (regions * sizes[labels]))  # per pixel: its share of mean PRO
    order = np.argsort(-scores, kind="stable")
    desc = scores[order]
    fp = np.r_[0.0, np.cumsum(normal[order])] / normal.sum()  # (P + 1,): FPR with the k highest pixels taken
    pro = np.r_[0.0, np.cumsum(overlap[order])]
    if num_thresholds is None:
        taken = np.r_[np.flatnonzero(np.diff(desc)) + 1, desc.size]  # pixels >= each distinct score
    else:
        thresholds = np.linspace(desc[-1], desc[0], num_thresholds)[::-1]
        taken = np.searchsorted(-desc, -thresholds, side="right")
    fpr, pro = np.r_[0.0, fp[taken]], np.r_[0.0, np.minimum(pro[taken], 1.0)]
    last = int(np.searchsorted(fpr, fpr_limit, side="right")) - 1  # last point with fpr <= fpr_limit
    fpr_cut, pro_cut = fpr[: last + 1], pro[: last + 1]
    if fpr_cut[-1] < fpr_limit and last + 1 < fpr.size:
        step = (fpr_limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        fpr_cut = np.r_[fpr_cut, fpr_limit]
        pro_cut = np.r_[pro_cut, pro[last] + step * (pro[last + 1] - pro[last])]
    return fpr_cut, pro_cut


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (module docstring): ``masks
    (N, H, W)`` bool, ``maps (N, H, W)`` float. NaN with a logged warning without anomalous or normal pixels."""
    fpr, pro = pro_curve(masks, maps, fpr_limit, num_thresholds)
    if fpr.size == 0:
        return math.nan
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def summarise(per_category: dict[str, dict]) -> dict:
    """``{category: {metric: value}}`` -> the same with a ``"mean"`` entry: the mean over categories of
    image_auroc, pixel_auroc and aupro (each where present). NaN values are left out of the mean, with a logged
    warning naming the categories; a metric with no finite value has a NaN mean."""
    if "mean" in per_category:
        raise ValueError("a category named 'mean' collides with the summary entry")
    out: dict = {}
    for name, metrics in per_category.items():
        if not isinstance(metrics, dict):
            raise ValueError(f"category {name!r}: metrics must be a dict, got {type(metrics).__name__}")
        out[name] = dict(metrics)
    mean = {}
    for metric in SUMMARY_METRICS:
        values = {name: float(m[metric]) for name, m in per_category.items() if m.get(metric) is not None}
        if not values:
            continue
        finite = [v for v in values.values() if math.isfinite(v)]
        left_out = sorted(name for name, v in values.items() if not math.isfinite(v))
        if left_out:
            log.warning("mean %s: %s is NaN for %s, left out of the mean", metric, metric, ", ".join(left_out))
        mean[metric] = float(np.mean(finite)) if finite else math.nan
    out["mean"] = mean
    return out
