"""Action localization metrics: AP against a loop port of ActivityNet's evaluation, hand cases, real THUMOS14 checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.action_data import AMBIGUOUS, THUMOS14_CLASSES, ActionInstance, ActionVideo, read_annotations
from memstream.pipelines.action_metrics import (
    TIOUS,
    average_precision_detection,
    detection_latency,
    detection_map,
    frame_map,
    tiou,
)
from sklearn.metrics import average_precision_score

TAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "tal"


def _reference_ap(ground_truth, prediction, tiou_thresholds):
    """ActivityNet Evaluation/eval_detection.py compute_average_precision_detection, ported line by line to plain
    Python loops (no pandas); ties in score and in tIoU resolved in input order (stable sorts)."""
    ap = np.zeros(len(tiou_thresholds))
    if len(prediction) == 0:
        return ap
    npos = float(len(ground_truth))
    lock_gt = np.ones((len(tiou_thresholds), len(ground_truth))) * -1
    sort_idx = sorted(range(len(prediction)), key=lambda i: -prediction[i][3])
    prediction = [prediction[i] for i in sort_idx]
    tp = np.zeros((len(tiou_thresholds), len(prediction)))
    fp = np.zeros((len(tiou_thresholds), len(prediction)))
    for idx, (video, t_start, t_end, _) in enumerate(prediction):
        this_gt = [(j, g) for j, g in enumerate(ground_truth) if g[0] == video]
        if not this_gt:
            fp[:, idx] = 1
            continue
        tiou_arr = []
        for _, (_, g_start, g_end) in this_gt:
            inter = max(min(t_end, g_end) - max(t_start, g_start), 0.0)
            union = (g_end - g_start) + (t_end - t_start) - inter
            tiou_arr.append(inter / union)
        tiou_sorted_idx = sorted(range(len(this_gt)), key=lambda j: -tiou_arr[j])
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for jdx in tiou_sorted_idx:
                if tiou_arr[jdx] < tiou_thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt[jdx][0]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt[jdx][0]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1)
    fp_cumsum = np.cumsum(fp, axis=1)
    recall_cumsum = tp_cumsum / npos
    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(tiou_thresholds)):
        mprec = [0.0, *precision_cumsum[tidx], 0.0]
        mrec = [0.0, *recall_cumsum[tidx], 1.0]
        for i in range(len(mprec) - 2, -1, -1):
            mprec[i] = max(mprec[i], mprec[i + 1])
        ap[tidx] = sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap


def _random_case(rng, n_gt=30, n_pred=80, videos=5, tied_scores=False):
    gt = []
    for _ in range(n_gt):
        s = float(rng.integers(0, 200)) / 2
        gt.append((f"v{rng.integers(videos)}", s, s + float(rng.integers(1, 40)) / 2))
    preds = []
    for _ in range(n_pred):
        if rng.random() < 0.6:  # near a ground truth (possibly of the same one twice: a duplicate)
            v, s, e = gt[rng.integers(n_gt)]
            d = e - s
            s, e = s + rng.normal(0, 0.3) * d, e + rng.normal(0, 0.3) * d
            if e <= s:
                e = s + 0.5
        else:  # anywhere, including a video without ground truth
            v, s = f"v{rng.integers(videos + 1)}", float(rng.uniform(0, 100))
            e = s + float(rng.uniform(0.5, 20))
        score = float(rng.integers(0, 5)) / 4 if tied_scores else float(rng.random())
        preds.append((v, float(s), float(e), score))
    return gt, preds


@pytest.mark.parametrize("seed", range(12))
def test_ap_matches_loop_port_of_activitynet(seed):
    rng = np.random.default_rng(seed)
    gt, preds = _random_case(rng, tied_scores=seed % 3 == 0)
    thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
    ours = average_precision_detection(gt, preds, thresholds)
    assert ours.shape == (5,)
    np.testing.assert_allclose(ours, _reference_ap(gt, preds, thresholds), rtol=0, atol=1e-9)
    assert 0 < ours[0] < 1


def test_tiou_values():
    segments = np.array([[5, 15], [10, 20], [0, 10], [2, 4], [-5, 0]], float)
    np.testing.assert_allclose(tiou((0, 10), segments), [1 / 3, 0, 1, 0.2, 0])
    assert tiou((3, 3), np.array([[3.0, 3.0]])).tolist() == [0.0]


def test_ap_hand_cases():
    gt = [("a", 0.0, 10.0), ("a", 20.0, 30.0)]
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 0.5 * 1 + 0.5 * 2/3.
    preds = [("a", 0.0, 10.0, 0.9), ("a", 40.0, 50.0, 0.8), ("a", 20.0, 30.0, 0.7)]
    np.testing.assert_allclose(average_precision_detection(gt, preds, [0.5]), [5 / 6])
    # A duplicate of a matched detection is a false positive: the same AP.
    dup = [("a", 0.0, 10.0, 0.9), ("a", 0.5, 10.0, 0.8), ("a", 20.0, 30.0, 0.7)]
    np.testing.assert_allclose(average_precision_detection(gt, dup, [0.5]), [5 / 6])
    # A detection in another video is a false positive; one of half the ground truth (tIoU 0.5) is a true
    # positive at 0.5 (tIoU >= threshold) and a false one at 0.6. FP, TP, TP: the envelope is 2/3 at recall 1/2
    # and 1 -> AP 2/3; FP, FP, TP: precision 1/3 at recall 1/2 -> AP 1/6.
    preds = [("b", 0.0, 10.0, 0.9), ("a", 0.0, 5.0, 0.8), ("a", 20.0, 30.0, 0.7)]
    np.testing.assert_allclose(average_precision_detection(gt, preds, [0.5, 0.6]), [2 / 3, 1 / 6])
    np.testing.assert_allclose(average_precision_detection(gt, [], [0.5]), [0.0])
    with pytest.raises(ValueError, match="ground-truth"):
        average_precision_detection([], preds, [0.5])
    with pytest.raises(ValueError, match="tIoU"):
        average_precision_detection(gt, preds, [0.0])


def _as_predictions(videos, shift=0.0, score=1.0):
    return {n: [{"label": a.label, "score": score,
                 "segment": [a.start + shift * (a.end - a.start), a.end + shift * (a.end - a.start)]}
                for a in v.instances if a.label != AMBIGUOUS] for n, v in videos.items()}


@pytest.fixture(scope="module")
def thumos_test():
    if not (TAL / "test_Annotation.csv").is_file():
        pytest.skip(f"THUMOS14 annotations not found at {TAL} (shared/realdata/tal, see shared/realdata/README.md)")
    return read_annotations(TAL / "test_Annotation.csv", keep_ambiguous=True)


@pytest.mark.parametrize("source", ["test_Annotation.csv", "thumos_gt.json"])
def test_ground_truth_as_predictions_scores_one(source, thumos_test):
    gt = read_annotations(TAL / source, subset="test", keep_ambiguous=True)
    result = detection_map(gt, _as_predictions({n: v for n, v in gt.items()}), THUMOS14_CLASSES)
    assert result["map"] == {"0.3": 1.0, "0.4": 1.0, "0.5": 1.0, "0.6": 1.0, "0.7": 1.0, "mean": 1.0}
    assert sorted(result["ap"]) == list(THUMOS14_CLASSES) and result["classes_without_gt"] == []


def test_shifted_predictions_lose_high_tiou_only(thumos_test):
    # Shifted by 20% of their length, every detection has tIoU 0.8 / 1.2 = 2/3 with its ground truth.
    result = detection_map(thumos_test, _as_predictions(thumos_test, shift=0.2), THUMOS14_CLASSES)
    assert result["map"] == {"0.3": 1.0, "0.4": 1.0, "0.5": 1.0, "0.6": 1.0, "0.7": 0.0, "mean": 0.8}


def test_detection_map_bookkeeping():
    gt = {"a": ActionVideo("a", "test", [ActionInstance("x", 0, 10), ActionInstance(AMBIGUOUS, 10, 20)]),
          "b": ActionVideo("b", "test", [ActionInstance("y", 5, 15)])}
    preds = {"a": [{"label": "x", "score": 0.9, "segment": [0, 10]}, {"label": "y", "score": 0.8, "segment": [10, 20]}],
             "zzz": [{"label": "x", "score": 1.0, "segment": [0, 10]}] * 3}
    result = detection_map(gt, preds, ["x", "y", "z"], tious=[0.5])
    assert result["ap"] == {"x": [1.0], "y": [0.0]} and result["classes_without_gt"] == ["z"]
    assert result["map"] == {"0.5": 0.5, "mean": 0.5}
    assert (result["ignored_videos"], result["ignored_predictions"]) == (1, 3)
    with pytest.raises(ValueError, match="video a: result 0: unknown label 'w'"):
        detection_map(gt, {"a": [{"label": "w", "score": 1, "segment": [0, 1]}]}, ["x", "y"])
    with pytest.raises(ValueError, match="video b: unknown label 'y'"):
        detection_map(gt, {}, ["x"])
    assert TIOUS == (0.3, 0.4, 0.5, 0.6, 0.7)


def test_frame_map_against_sklearn():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.2).astype(np.float32)
    targets[:, 3] = 0
    scores = rng.random((200, 4)) + targets
    ignore = rng.random(200) < 0.1
    result = frame_map(scores, targets, ignore=ignore)
    expected = [average_precision_score(targets[~ignore, c], scores[~ignore, c]) for c in range(3)]
    np.testing.assert_allclose(result["ap"][:3], expected, rtol=0, atol=1e-12)
    assert result["ap"][3] is None and result["skipped"] == [3]
    assert result["frame_map"] == pytest.approx(np.mean(expected))
    assert frame_map(targets, targets)["frame_map"] == 1.0
    with pytest.raises(ValueError, match="0/1"):
        frame_map(scores, targets * 0.5)
    with pytest.raises(ValueError, match="ignore"):
        frame_map(scores, targets, ignore=ignore[:10])


def test_detection_latency():
    gt = {"a": ActionVideo("a", "test", [ActionInstance("x", 0, 10), ActionInstance("x", 20, 30),
                                         ActionInstance(AMBIGUOUS, 40, 50)]),
          "b": ActionVideo("b", "test", [ActionInstance("y", 5, 15)])}
    preds = {"a": [{"label": "x", "score": 0.5, "segment": [1, 10], "emitted": 12.0},
                   {"label": "x", "score": 0.9, "segment": [0, 9], "emitted": 10.5},
                   {"label": "x", "score": 0.9, "segment": [0, 3], "emitted": 4.0},  # tIoU 0.3: no match
                   {"label": "y", "score": 0.9, "segment": [20, 30], "emitted": 25.0}],  # other class
             "b": [{"label": "y", "score": 0.9, "segment": [5, 14], "emitted": 14.0}]}
    result = detection_latency(gt, preds)
    assert (result["matched"], result["total"]) == (2, 3)
    assert result["values"] == [0.5, -1.0]
    assert result["mean"] == -0.25 and result["median"] == -0.25 and result["p90"] == pytest.approx(0.35)
    none = detection_latency(gt, {})
    assert none["matched"] == 0 and none["mean"] is None and none["p90"] is None
    with pytest.raises(ValueError, match="video b: result 0: no \"emitted\""):
        detection_latency(gt, {"b": [{"label": "y", "score": 1, "segment": [5, 15]}]})
