"""IoU + Kalman tracker: Kalman filter against filterpy, toy scenes, configs, the ByteTrack peer, and SORT's published
MOT15 TUD-Campus row reproduced on SORT's own public detections (track_metrics: TrackEval's CLEAR, MOT15 mode)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.iou_tracker import (
    PRESETS,
    IouTracker,
    IouTrackerConfig,
    KalmanBoxTrack,
    associate,
    iou_matrix,
    load_config,
    run_sequence,
    run_sequence_supervision,
)
from memstream.pipelines.mot_data import read_sequence
from memstream.pipelines.track_metrics import evaluate_sequence

MOT15 = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "mot" / "MOT15"
needs_mot15 = pytest.mark.skipif(not (MOT15 / "TUD-Campus").is_dir(), reason="shared/realdata MOT15 not present")


# Kalman filter


def test_kalman_matches_filterpy():
    filterpy = pytest.importorskip("filterpy.kalman")
    kf = filterpy.KalmanFilter(dim_x=7, dim_z=4)
    kf.F = np.eye(7)
    kf.F[0, 4] = kf.F[1, 5] = kf.F[2, 6] = 1.0
    kf.H = np.eye(4, 7)
    kf.R[2:, 2:] *= 10.0
    kf.P[4:, 4:] *= 1000.0
    kf.P *= 10.0
    kf.Q[-1, -1] *= 0.01
    kf.Q[4:, 4:] *= 0.01
    rng = np.random.default_rng(0)
    box = np.array([10.0, 20.0, 50.0, 120.0])
    track = KalmanBoxTrack(box, 1)
    kf.x[:4, 0] = track.x[:4]
    for _ in range(12):
        track.predict()
        kf.predict()
        np.testing.assert_allclose(track.x, kf.x[:, 0], rtol=1e-12, atol=1e-9)
        box = box + np.array([3.0, 1.0, 3.5, 1.5]) + rng.normal(0, 0.5, 4)
        track.update(box)
        z = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) * (box[3] - box[1]),
                      (box[2] - box[0]) / (box[3] - box[1])])
        kf.update(z)
        np.testing.assert_allclose(track.x, kf.x[:, 0], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(track.P, kf.P, rtol=1e-10, atol=1e-9)


def test_kalman_predict_update_sanity():
    box = np.array([100.0, 50.0, 140.0, 150.0])
    track = KalmanBoxTrack(box, 7)
    np.testing.assert_allclose(track.box(), box)
    np.testing.assert_allclose(track.predict(), box)  # no velocity yet
    assert (track.time_since_update, track.age, track.hit_streak) == (1, 1, 0)
    for step in range(1, 20):  # moving right 5 px per frame: the filter learns the velocity
        track.update(box + [5.0 * step, 0, 5.0 * step, 0])
        predicted = track.predict()
    assert predicted[0] == pytest.approx(box[0] + 5.0 * 20, abs=1.0)
    assert (track.hits, track.hit_streak) == (19, 19)
    track.predict()  # a missed frame resets the streak at the next predict
    assert track.hit_streak == 0 and track.time_since_update == 2
    shrinking = KalmanBoxTrack(box, 1)
    shrinking.x[6] = -1e6  # an area velocity that would make the area negative is zeroed before predicting
    assert np.isfinite(shrinking.predict()).all() and shrinking.x[2] == pytest.approx(4000.0)


def test_iou_and_association():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    b = np.array([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 3, 1.0, 0.0], [0.0, 0.0, 0.0]])
    pairs, free_d, free_t = associate(iou_matrix(a, b), 0.3)
    assert pairs == [(0, 1)] and free_d == [1] and free_t == [0, 2]
    # Conflict (one detection above threshold with two tracks): the Hungarian solution; matches below drop out.
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert associate(iou, 0.3) == ([(0, 1), (1, 0)], [], [])
    assert associate(iou, 0.82) == ([(1, 0)], [0], [1])
    assert associate(np.zeros((0, 3)), 0.3) == ([], [], [0, 1, 2])


# Toy scenes


def _crossing(num_frames: int = 30) -> list[np.ndarray]:
    """Two boxes moving toward each other, 6 px per frame, passing at frame ~15 (IoU there up to 0.54); b runs
    30 px lower than a."""
    frames = []
    for f in range(num_frames):
        a = [10.0 + 6 * f, 100.0, 50.0 + 6 * f, 200.0, 0.9]
        b = [190.0 - 6 * f, 130.0, 230.0 - 6 * f, 230.0, 0.8]
        frames.append(np.array([a, b]))
    return frames


@pytest.mark.parametrize("preset", list(PRESETS))
def test_two_crossing_boxes_keep_their_ids(preset):
    tracker = IouTracker(preset)
    shown = []
    for dets in _crossing():
        out = tracker.update(dets)
        assert out.shape[1] == 5 and len(out) in (0, 2)
        if len(out):
            shown.append(out[np.argsort(out[:, 1]), 4])  # ids of (upper a, lower b)
    assert len(shown) == 30 and all(ids.tolist() == [1.0, 2.0] for ids in shown)


def test_sort_rules_min_hits_and_max_age():
    tracker = IouTracker("sort")
    box = np.array([[10.0, 10.0, 50.0, 110.0, 0.9]])
    assert tracker.update(box)[:, 4].tolist() == [1.0]  # frames <= min_hits: shown at once
    assert len(tracker.update(np.zeros((0, 5)))) == 0    # missed: not shown
    assert len(tracker.update(None)) == 0                # missed twice (> max_age 1): deleted
    assert tracker.tracks == []
    # After frame min_hits a new track is shown once matched min_hits times: the detection that starts it is no hit.
    for expected in ([], [], [], [2.0]):
        assert tracker.update(box)[:, 4].tolist() == expected


def test_bytetrack_second_stage_and_new_track_threshold():
    tracker = IouTracker("bytetrack")
    high = np.array([[10.0, 10.0, 50.0, 110.0, 0.9]])
    low = high * [1, 1, 1, 1, 0] + [0, 0, 0, 0, 0.3]  # the same object, now scored low
    tracker.update(high)
    tracker.update(high)
    assert tracker.update(low)[:, 4].tolist() == [1.0]  # kept by the second (low-score) stage
    assert len(IouTracker("sort").update(low)) == 1  # SORT uses every detection
    fresh = IouTracker("bytetrack")
    assert len(fresh.update(low)) == 0 and fresh.tracks == []  # low scores never start tracks
    mid = high * [1, 1, 1, 1, 0] + [0, 0, 0, 0, 0.55]  # high stage, but below new_track_thresh 0.6
    assert len(fresh.update(mid)) == 0 and fresh.tracks == []


def test_bad_detections():
    tracker = IouTracker()
    with pytest.raises(ValueError, match="shape"):
        tracker.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        tracker.update(np.array([[0.0, 0.0, np.nan, 1.0, 0.5]]))
    assert len(tracker.update(np.array([[5.0, 5.0, 5.0, 9.0, 0.9]]))) == 0  # zero width: skipped
    with pytest.raises(ValueError, match="num_frames=3"):
        run_sequence(np.array([[5, -1, 0, 0, 10, 10, 0.9, -1, -1, -1]]), 3)


# Configuration


def test_config_validation_names_the_field():
    for field, value in [("max_age", -1), ("min_hits", 1.5), ("iou_threshold", 1.2), ("low_iou_threshold", -0.1),
                         ("track_thresh", float("nan")), ("two_stage", "yes"), ("keep_confirmed", 1),
                         ("tentative_max_age", -1)]:
        with pytest.raises(ValueError, match=field):
            IouTrackerConfig(**{field: value})
    with pytest.raises(ValueError, match="low_thresh"):
        IouTrackerConfig(two_stage=True, track_thresh=0.3, low_thresh=0.5)
    assert PRESETS["sort"] == IouTrackerConfig(max_age=1, min_hits=3, iou_threshold=0.3)
    assert PRESETS["bytetrack"].two_stage and PRESETS["bytetrack"].max_age == 30


def test_load_config(tmp_path):
    assert load_config("sort") is PRESETS["sort"]
    path = tmp_path / "tracker.yaml"
    path.write_text("tracker_type: bytetrack\nmax_age: 60\nlow_thresh: 0.2\n")
    assert load_config(path) == replace(PRESETS["bytetrack"], max_age=60, low_thresh=0.2)
    path.write_text("tracker_type: sort\nnew_track_thresh: -.inf\n")
    assert load_config(str(path)) == PRESETS["sort"]
    path.write_text("tracker_type: sort\ntrack_buffer: 30\nfuse_score: true\n")
    with pytest.raises(ValueError, match=r"\['fuse_score', 'track_buffer'\]"):
        load_config(path)
    path.write_text("tracker_type: botsort\n")
    with pytest.raises(ValueError, match="botsort"):
        load_config(path)
    path.write_text("tracker_type: sort\nmin_hits: -2\n")
    with pytest.raises(ValueError, match="min_hits"):
        load_config(path)
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("no-such-tracker")


# Real MOT15 detections


@needs_mot15
def test_sort_reproduces_published_tud_campus_row():
    """SORT's README row (MOT devkit): TUD-Campus Rcll 68.5 Prcn 94.3 FAR 0.21 GT 8 MT 6 PT 2 ML 0 FP 15 FN 113
    IDs 6 FM 9 MOTA 62.7 MOTP 73.7 MOTAL 64.1."""
    seq = read_sequence(MOT15 / "TUD-Campus")
    assert seq.info.length == 71
    results = run_sequence(seq.det, seq.info.length, PRESETS["sort"])
    score = evaluate_sequence(seq.gt, results, seq.info.length, benchmark="MOT15", name="TUD-Campus")
    m = score.summary()
    assert (m["FP"], m["FN"], m["IDSW"], m["Frag"]) == (15, 113, 6, 9)
    assert (m["MT"], m["PT"], m["ML"], m["GT_IDs"]) == (6, 2, 0, 8)
    assert round(100 * m["MOTA"], 1) == 62.7
    assert round(100 * m["MOTP"], 1) == 73.7
    assert round(100 * score.results["CLEAR"]["MOTAL"], 1) == 64.1
    assert round(100 * m["Recall"], 1) == 68.5
    assert round(100 * m["Precision"], 1) == 94.3
    assert round(m["FP"] / seq.info.length, 2) == 0.21  # FAR: false positives per frame


@needs_mot15
def test_run_sequence_rows_and_streaming_parity():
    seq = read_sequence(MOT15 / "TUD-Campus")
    rows = run_sequence(seq.det, seq.info.length, "bytetrack")
    assert rows.shape[1] == 10 and len(rows) > 0
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= seq.info.length
    np.testing.assert_array_equal(rows[:, 6:], np.tile([1, -1, -1, -1], (len(rows), 1)))
    assert (rows[:, 4:6] > 0).all() and rows[:, 1].min() == 1
    for frame in np.unique(rows[:, 0]):  # one row per id per frame
        ids = rows[rows[:, 0] == frame, 1]
        assert len(ids) == len(set(ids))
    tracker = IouTracker("bytetrack")  # frame-by-frame update gives the same rows
    det = seq.det
    for frame in (1, 2, 3, 4):
        d = det[det[:, 0] == frame][:, 2:7].copy()
        d[:, 2:4] += d[:, :2]
        out = tracker.update(d)
        expected = rows[rows[:, 0] == frame]
        np.testing.assert_allclose(out[:, :2], expected[:, 2:4])
        np.testing.assert_array_equal(out[:, 4], expected[:, 1])
    # Frames without detections still advance the tracker: an empty middle frame splits the sequence's tracks.
    gap = det[det[:, 0] != 10]
    assert not np.array_equal(run_sequence(gap, seq.info.length), run_sequence(det, seq.info.length))
    assert run_sequence(np.zeros((0, 10)), 5).shape == (0, 10)


@needs_mot15
def test_bytetrack_peer_on_tud_campus():
    pytest.importorskip("supervision")
    seq = read_sequence(MOT15 / "TUD-Campus")
    try:
        rows = run_sequence_supervision(seq.det, seq.info.length, seq.info.frame_rate)
    except ImportError as e:
        pytest.skip(str(e))
    assert rows.shape[1] == 10 and len(rows) > 0
    assert set(np.unique(rows[:, 0])) <= set(range(1, seq.info.length + 1))
    assert (rows[:, 1] >= 1).all() and (rows[:, 4:6] > 0).all()
    m = evaluate_sequence(seq.gt, rows, seq.info.length, benchmark="MOT15").summary()
    assert m["MOTA"] > 0.4 and m["Recall"] > 0.5  # a working tracker on these detections (SORT: 0.627, 0.685)
