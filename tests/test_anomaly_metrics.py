"""Anomaly metrics: AUROCs equal scikit-learn's, pixel AUROC pools all pixels, AUPRO on hand-computed cases (perfect,
constant, two regions, 8-connectivity), equal to anomalib's AUPRO (when installed) on random and real masks,
one-class input gives NaN with a warning, summarise's mean, bad input errors."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.anomaly_metrics import (
    aupro,
    frame_auroc,
    image_auroc,
    image_auroc_interval,
    image_auroc_replicates,
    pixel_auroc,
    pro_curve,
    region_labels,
    roc_curve_points,
    summarise,
)
from sklearn.metrics import roc_auc_score, roc_curve

ANOMALY = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "anomaly"


def _blobs(rng, n: int = 5, size: int = 40) -> np.ndarray:
    """``(n, size, size)`` masks: 1-3 rectangles and scattered single pixels per image, the last image normal."""
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(1, 8, 2)
            masks[i, y:y + h, x:x + w] = True
        masks[i] |= rng.random((size, size)) < 0.01
    return masks


@pytest.mark.parametrize("seed", range(3))
def test_auroc_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.4 * labels, 1)  # with ties
    expected = roc_auc_score(labels, scores)
    assert image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert frame_auroc(labels.astype(bool), scores.astype(np.float32)) == pytest.approx(expected, abs=1e-6)
    fpr, tpr, thresholds = roc_curve_points(labels, scores)
    for ours, ref in zip((fpr, tpr, thresholds), roc_curve(labels, scores), strict=True):
        np.testing.assert_allclose(ours, ref)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected)


def test_bootstrap_replicates_equal_scikit_learn_on_each_resample():
    """Every replicate is scikit-learn's AUROC of its stratified resample (ties included), and every resample keeps
    the set's class counts, so even one anomalous image in twenty gives no NaN."""
    from memstream.pipelines.anomaly_metrics import _stratified_resamples

    rng = np.random.default_rng(0)
    labels = np.array([0] * 19 + [1])
    scores = np.round(rng.random(20), 1)  # with ties
    replicates = image_auroc_replicates(labels, scores, replicates=50, seed=3)
    picked = _stratified_resamples(labels.astype(bool), 50, 3)
    assert (labels[picked].sum(1) == 1).all()
    want = [roc_auc_score(labels[row], scores[row]) for row in picked]
    np.testing.assert_allclose(replicates, want, atol=1e-12)
    assert np.isfinite(replicates).all() and len(set(np.round(replicates, 9))) > 5


def test_bootstrap_interval():
    rng = np.random.default_rng(1)

    def sample(n):  # normal N(0, 1) against anomalous N(1, 1): population AUROC 0.76
        labels = np.repeat([0, 1], n)
        return labels, rng.normal(size=2 * n) + labels

    low, high = image_auroc_interval([sample(50)])
    small = high - low
    assert 0.0 < low < image_auroc(*sample(50)) + 0.2 and 0.1 < small < 0.3
    low4, high4 = image_auroc_interval([sample(200)])
    assert 0.35 < (high4 - low4) / small < 0.65 and low4 < 0.76 < high4  # about half as wide at 4x the images
    assert image_auroc_interval([(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))]) == [1.0, 1.0]
    # the mean over categories: each resampled on its own; a one-class category is left out (as summarise does)
    a, b = sample(30), sample(30)
    both = image_auroc_interval([a, b])
    assert both != image_auroc_interval([a]) and image_auroc_interval([a, b]) == both  # reproducible
    one_class = (np.zeros(5), np.arange(5.0))
    assert image_auroc_interval([a, one_class]) == image_auroc_interval([a])
    assert all(math.isnan(v) for v in image_auroc_interval([one_class]))
    for bad in ({"level": 1.0}, {"replicates": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            image_auroc_interval([a], **bad)
    with pytest.raises(ValueError, match="no"):
        image_auroc_interval([])


def test_one_class_is_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.5, 0.2]))
        assert math.isnan(frame_auroc([1, 1], [0.1, 0.5]))
        assert math.isnan(pixel_auroc(np.zeros((2, 4, 4), bool), np.random.default_rng(0).random((2, 4, 4))))
        assert math.isnan(aupro(np.zeros((2, 4, 4), bool), np.ones((2, 4, 4))))
        assert math.isnan(aupro(np.ones((1, 4, 4), bool), np.ones((1, 4, 4))))
        fpr, tpr, _ = roc_curve_points([0, 0, 0], [0.1, 0.5, 0.2])
    assert np.isnan(tpr).all() and fpr[-1] == 1
    text = caplog.text
    assert "image AUROC: only normal" in text and "frame AUROC: only anomalous" in text
    assert "pixel AUROC" in text and "no anomalous pixels" in text and "no normal pixels" in text


def test_pixel_auroc_pools_all_pixels():
    rng = np.random.default_rng(1)
    masks = _blobs(rng)
    maps = rng.random(masks.shape) + 0.5 * masks + 0.3 * np.arange(len(masks))[:, None, None]  # per-image offsets
    pooled = pixel_auroc(masks, maps)
    assert pooled == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    per_image = np.mean([roc_auc_score(m.ravel(), s.ravel()) for m, s in zip(masks[:-1], maps[:-1], strict=True)])
    assert abs(pooled - per_image) > 0.01  # pooling is not the mean of per-image AUROCs
    assert pixel_auroc(masks[0], maps[0]) == pytest.approx(roc_auc_score(masks[0].ravel(), maps[0].ravel()))


def test_aupro_perfect_and_constant():
    masks = _blobs(np.random.default_rng(2))
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, masks + 0.9 * np.random.default_rng(3).random(masks.shape)) == pytest.approx(1.0)
    # A constant map: one threshold takes every pixel, the curve is the line (0, 0) -> (1, 1); cut at the limit
    # it is a triangle of area limit^2 / 2, so AUPRO = limit / 2.
    for limit in (0.3, 0.05, 1.0):
        assert aupro(masks, np.full(masks.shape, 0.5), fpr_limit=limit) == pytest.approx(limit / 2)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0)  # anomalous pixels scored lowest


def test_aupro_two_regions_by_hand():
    # One row of 7 pixels: region A = pixels 0-1, region B = pixel 6, 4 normal pixels.
    masks = np.array([[[1, 1, 0, 0, 0, 0, 1]]], bool)
    maps = np.array([[[0.9, 0.4, 0.8, 0.5, 0.3, 0.1, 0.6]]])
    # threshold: 0.9 (A)   0.8 (n)   0.6 (B)   0.5 (n)   0.4 (A)   0.3 (n)   0.1 (n)
    # FPR:       0         1/4       1/4       1/2       1/2       3/4       1
    # PRO:       (1/2)/2   1/4       (1/2+1)/2 3/4       1         1         1
    fpr, pro = pro_curve(masks, maps, fpr_limit=1.0)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 0.75, 1, 1, 1])
    # limit 1: 0.25 * 0.25 + 0.25 * 0.75 + 0.5 * 1 = 0.75
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.75)
    # limit 0.3: PRO at FPR 0.3 interpolates 0.75 (FPR 0.25) .. 0.75 (FPR 0.5) -> 0.75;
    # area 0.25 * 0.25 + 0.05 * 0.75 = 0.1, / 0.3
    assert aupro(masks, maps) == pytest.approx(0.1 / 0.3)
    fpr, pro = pro_curve(masks, maps, fpr_limit=0.3)
    assert fpr[-1] == pytest.approx(0.3) and pro[-1] == pytest.approx(0.75)
    # limit 0.6: PRO at 0.6 interpolates 1 (FPR 0.5) .. 1 (0.75); area 0.0625 + 0.1875 + 0.1 * 1 = 0.35, / 0.6
    assert aupro(masks, maps, fpr_limit=0.6) == pytest.approx(0.35 / 0.6)
    # a rising segment cut by the limit: B ties with two normal pixels at 0.5
    tied = np.array([[[0.9, 0.9, 0.5, 0.5, 0.2, 0.1, 0.5]]])
    # curve (0, 0), (0, 1/2) [A], (1/2, 1) [two normal pixels and B], (3/4, 1), (1, 1); at FPR 0.3 PRO is
    # 1/2 + 0.6 * 1/2 = 0.8: area (0.5 + 0.8) / 2 * 0.3 = 0.195, / 0.3
    assert aupro(masks, tied) == pytest.approx(0.65)


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 3, 3), bool)
    masks[0, 0, :2] = masks[0, 1, 2] = True  # (0,1) and (1,2) touch diagonally: one region of 3 pixels
    labels, count = region_labels(masks)
    assert count == 1 and set(labels[masks].tolist()) == {1}
    maps = np.linspace(0.1, 0.6, 9).reshape(1, 3, 3)
    maps[0, 1, 2], maps[0, 0, 0], maps[0, 0, 1] = 0.9, 0.05, 0.05
    # The diagonal pixel first: PRO 1/3 (8-connectivity; with 4-connectivity it would be (1 + 0) / 2), held up to
    # FPR 1 where the other two come: AUPRO up to 1 = 1/3.
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(1 / 3)
    two = np.zeros((2, 3, 3), bool)
    two[:, 0, 0] = True
    assert region_labels(two)[1] == 2  # regions are numbered across images


def test_aupro_binned_thresholds():
    rng = np.random.default_rng(4)
    masks = _blobs(rng)
    levels = np.linspace(0.0, 1.0, 11)
    maps = levels[rng.integers(0, 11, masks.shape)]
    maps[masks] = levels[rng.integers(5, 11, int(masks.sum()))]
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=11) == pytest.approx(exact)  # the thresholds are the score levels
    smooth = rng.random(masks.shape) + 0.5 * masks
    assert aupro(masks, smooth, num_thresholds=1000) == pytest.approx(aupro(masks, smooth), abs=2e-3)


def _anomalib_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    torch = pytest.importorskip("torch")
    module = pytest.importorskip("anomalib.metrics.aupro", reason="anomalib is not installed (optional reference)")
    metric = getattr(module, "_AUPRO", module.AUPRO)(fpr_limit=fpr_limit)  # 2.x: _AUPRO is the bare torchmetric
    metric.update(torch.from_numpy(maps.astype(np.float32)), torch.from_numpy(masks.astype(np.int64)))
    return float(metric.compute())


@pytest.mark.parametrize("seed,fpr_limit", [(0, 0.3), (1, 0.05), (2, 1.0), (3, 0.3)])
def test_aupro_equals_anomalib(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    masks = _blobs(rng)
    maps = (rng.random(masks.shape) + 0.3 * seed * masks).astype(np.float32)
    maps = np.round(maps / maps.max(), 2 if seed % 2 else 6).astype(np.float32)  # [0, 1]; ties when rounded
    assert aupro(masks, maps, fpr_limit) == pytest.approx(_anomalib_aupro(masks, maps, fpr_limit), abs=1e-4)


def test_aupro_equals_anomalib_on_real_masks():
    from memstream.pipelines.anomaly_data import find_categories, load_mask, read_mvtec

    if not ANOMALY.is_dir():
        pytest.skip(f"real MVTec AD sample not present ({ANOMALY})")
    samples = [s for c in find_categories(ANOMALY) for s in read_mvtec(c).test]
    masks = np.stack([load_mask(s.mask_path, 64) if s.mask_path else np.zeros((64, 64), bool) for s in samples])
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    maps = (np.random.default_rng(5).random(masks.shape) + 0.5 * masks).astype(np.float32) / 1.5
    assert aupro(masks, maps) == pytest.approx(_anomalib_aupro(masks, maps, 0.3), abs=1e-4)


def test_summarise(caplog):
    per = {"hazelnut": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7, "images": 10},
           "transistor": {"image_auroc": 0.7, "pixel_auroc": math.nan, "aupro": 0.5}}
    with caplog.at_level(logging.WARNING):
        out = summarise(per)
    assert out["hazelnut"] == per["hazelnut"] and out["hazelnut"] is not per["hazelnut"]
    assert out["mean"] == pytest.approx({"image_auroc": 0.8, "pixel_auroc": 0.8, "aupro": 0.6})
    assert "transistor" in caplog.text
    assert math.isnan(summarise({"a": {"aupro": math.nan}})["mean"]["aupro"])
    assert summarise({})["mean"] == {}
    with pytest.raises(ValueError, match="mean"):
        summarise({"mean": {}})
    with pytest.raises(ValueError, match="'a'"):
        summarise({"a": 0.5})


def test_bad_input():
    with pytest.raises(ValueError, match="as many labels as scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0/1 or bool, found 2"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        frame_auroc([], [])
    masks, maps = np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5))
    with pytest.raises(ValueError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        pixel_auroc(masks, maps)
    with pytest.raises(ValueError, match="use `> 0`"):
        aupro(np.full((1, 4, 4), 255), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="infinite"):
        aupro(masks, np.full((2, 4, 4), np.inf))
    for limit in (0, 1.5, "0.3"):
        with pytest.raises(ValueError, match="fpr_limit"):
            aupro(masks, np.zeros((2, 4, 4)), fpr_limit=limit)
    for n in (1, 2.5):
        with pytest.raises(ValueError, match="num_thresholds"):
            aupro(masks, np.zeros((2, 4, 4)), num_thresholds=n)
