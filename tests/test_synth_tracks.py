"""`memstream data synth-tracks`: MOTChallenge layout, boxes vs pixels, visibility, re-entries, detections, looks,
crossings, determinism, disjoint seeds and bad options."""

from __future__ import annotations

import configparser
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from memstream.pipelines.cli import main as cli_main
from memstream.pipelines.synth_tracks import (
    ASPECT,
    MAX_OVERLAP_S,
    VERSION,
    _figure,
    _overlap_runs,
    cli_synth_tracks,
    generate,
    plan_scene,
    sequence_seeds,
)

# Tiny scenes: 5 s at 10 fps, 160x120; re-entry gaps scaled down to 1-2 s, walking fast enough to leave and return.
OPTS = {"frames": 50, "size": (160, 120), "gap": (1.0, 2.0), "speed": (1.5, 2.5), "objects": (5, 6)}
TINY = ["--frames", "50", "--size", "160x120", "--gap", "1", "2", "--speed", "1.5", "2.5", "--objects", "5", "6"]


def _mot(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: (4,) x, y, w, h; b: (M, 4) -> (M,)."""
    ix = np.clip(np.minimum(a[0] + a[2], b[:, 0] + b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[1] + a[3], b[:, 1] + b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    return inter / (a[2] * a[3] + b[:, 2] * b[:, 3] - inter)


def _bgr(hexcolour: str) -> np.ndarray:
    return np.array([int(hexcolour[i:i + 2], 16) for i in (5, 3, 1)], float)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracks") / "set"
    argv = ["--out", str(out), "--train", "2", "--val", "1", "--test", "1", "--jobs", "1", *TINY]
    assert cli_synth_tracks(argv) == 0
    return out, json.loads((out / "scenes.json").read_text())


def test_layout_seqinfo_and_scenes_json(dataset, capsys):
    out, doc = dataset
    assert doc["version"] == VERSION and doc["size"] == [160, 120] and doc["fps"] == 10.0 and doc["frames"] == 50
    assert list(doc["sequences"]) == ["synth-train-0000", "synth-train-0001", "synth-val-0000", "synth-test-0000"]
    assert (out / "seqmaps" / "train.txt").read_text().split() == ["name", "synth-train-0000", "synth-train-0001"]
    assert "synth-tracks" in (out / "README.md").read_text()
    for name, seq in doc["sequences"].items():
        root = out / seq["split"] / name
        ini = configparser.ConfigParser()
        ini.optionxform = str
        ini.read(root / "seqinfo.ini")
        assert dict(ini["Sequence"]) == {"name": name, "imDir": "img1", "frameRate": "10", "seqLength": "50",
                                         "imWidth": "160", "imHeight": "120", "imExt": ".jpg"}
        images = sorted((root / "img1").iterdir())
        assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, 51)]
        assert cv2.imread(str(images[0])).shape == (120, 160, 3)
        ids = [o["id"] for o in seq["objects"]]
        assert 5 <= len(ids) <= 6 and ids == list(range(1, len(ids) + 1))
        assert set(seq["objects"][0]) >= {"id", "look", "body", "accent_colour"}
        assert seq["seed"] == dict((n, s) for n, _, s in sequence_seeds(0, 2, 1, 1))[name]


def test_gt_boxes_lie_in_the_image_and_on_the_rendered_objects(dataset):
    out, doc = dataset
    fractions = []
    for name, seq in doc["sequences"].items():
        root = out / seq["split"] / name
        gt = _mot(root / "gt" / "gt.txt")
        assert gt.shape[1] == 9 and (gt[:, 6] == 1).all() and set(gt[:, 7]) <= {1, 8}
        assert (gt[:, 0] >= 1).all() and (gt[:, 0] <= 50).all() and (gt[:, 8] > 0).all() and (gt[:, 8] <= 1).all()
        assert (gt[:, 2] >= 0).all() and (gt[:, 3] >= 0).all() and (gt[:, 4] > 0).all() and (gt[:, 5] > 0).all()
        assert (gt[:, 2] + gt[:, 4] <= 160 + 1e-6).all() and (gt[:, 3] + gt[:, 5] <= 120 + 1e-6).all()
        assert ((gt[:, 8] < 0.2) == (gt[:, 7] == 8)).all()
        assert len({(int(f), int(i)) for f, i in gt[:, :2]}) == len(gt)  # one row per object and frame
        plan = plan_scene(seq["seed"], **OPTS)
        objects = {o["id"]: o for o in seq["objects"]}
        # Fully visible objects tall enough for JPEG's colour subsampling: the body colour is inside the box.
        for f, i, x, y, w, h in gt[(gt[:, 8] >= 0.95) & (gt[:, 5] >= 18)][::2, :6]:
            img = cv2.imread(str(root / "img1" / f"{int(f):06d}.jpg")).astype(float) / plan.gain[int(f) - 1]
            box = img[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))].reshape(-1, 3)
            dist = np.abs(box - _bgr(objects[int(i)]["body"])).max(1)
            assert np.sort(dist)[:3].mean() < 30, (name, f, i)
            fractions.append((dist < 32).mean())
    assert len(fractions) >= 20 and np.median(fractions) > 0.15


def test_visibility_rows_and_occluders():
    hidden = partly = 0
    for seed in range(6):
        plan = plan_scene(seed, **OPTS)
        mask = plan.scenery_mask
        for k, o in enumerate(plan.objects):
            for f in np.flatnonzero(o.present):
                x, y, w, h = plan.boxes[k, f]
                x0, y0 = int(np.floor(x)) - 1, int(np.floor(y)) - 1  # the box and a pixel around it
                x1, y1 = int(np.ceil(x + w)) + 1, int(np.ceil(y + h)) + 1
                if x0 >= 0 and y0 >= 0 and x1 <= plan.width and y1 <= plan.height and mask[y0:y1, x0:x1].all():
                    assert plan.vis[k, f] == 0  # fully behind scenery: no row at all
                    hidden += 1
                elif plan.vis[k, f] > 0 and mask[max(0, y0):y1, max(0, x0):x1].any():
                    partly += 1
    assert hidden > 0 and partly > 0
    # Alone in the open, an object is fully visible; half out of the image, about half visible.
    plan = plan_scene(3, **OPTS)
    o, look = plan.objects[0], plan.looks[plan.objects[0].look]
    canvas = np.zeros((80, 80), np.uint8)
    _figure(canvas, 40.3, 70.6, 50.0, look, o.accent, 0.7, label=1)
    area = np.count_nonzero(canvas)
    assert 0.5 * ASPECT * 50 * 50 < area < 0.8 * ASPECT * 50 * 50  # the figure fills most of its box
    left = np.count_nonzero(canvas[:, :40])
    assert 0.4 < left / area < 0.6


def test_gt_rows_agree_with_the_plan_and_reentries_with_gt(dataset):
    out, doc = dataset
    for name, seq in doc["sequences"].items():
        gt = _mot(out / seq["split"] / name / "gt" / "gt.txt")
        plan = plan_scene(seq["seed"], **OPTS)
        rows = {(int(f), int(i)) for f, i in gt[:, :2]}
        assert rows == {(f + 1, k + 1) for k, f in zip(*np.nonzero(plan.vis > 0))}
        assert sum(r["gap_frames"] >= 10 for r in seq["reentries"]) >= 2  # --gap 1 2 at 10 fps
        for r in seq["reentries"]:
            frames = gt[gt[:, 1] == r["id"], 0]
            assert r["exit_frame"] in frames and r["return_frame"] in frames
            assert not ((frames > r["exit_frame"]) & (frames < r["return_frame"])).any()
            assert r["gap_frames"] == r["return_frame"] - r["exit_frame"] - 1 >= 10


def test_detections_are_noisy_true_boxes_with_misses_and_false_positives(dataset):
    out, doc = dataset
    hits = misses_low = low = misses = fps = total = 0
    true_scores, false_scores = [], []
    for name, seq in doc["sequences"].items():
        root = out / seq["split"] / name
        gt, det = _mot(root / "gt" / "gt.txt"), _mot(root / "det" / "det.txt")
        assert det.shape[1] == 10 and (det[:, 1] == -1).all() and (det[:, 7:] == -1).all()
        assert (det[:, 2] >= 0).all() and (det[:, 2] + det[:, 4] <= 160 + 1e-6).all()
        for f in range(1, 51):
            g, d = gt[gt[:, 0] == f], det[det[:, 0] == f]
            matched = np.zeros(len(d), bool)
            for row in g:
                iou = _iou(row[2:6], d[:, 2:6]) if len(d) else np.zeros(0)
                hit = len(iou) and iou.max() > 0.5
                if hit:
                    matched[int(iou.argmax())] = True
                    true_scores.append(d[int(iou.argmax()), 6])
                if row[8] < 0.3:
                    low += 1
                    misses_low += not hit
                else:
                    total += 1
                    hits += bool(hit)
                    misses += not hit
            for j in np.flatnonzero(~matched):
                if not len(g) or _iou(d[j, 2:6], g[:, 2:6]).max() < 0.1:
                    fps += 1
                    false_scores.append(d[j, 6])
    assert hits / total > 0.8 and misses > 0 and (low == 0 or misses_low / low > 0.8)
    assert fps > 5 and min(true_scores) >= 0.6 and max(false_scores) <= 0.7
    assert np.mean(true_scores) > np.mean(false_scores) + 0.2


def test_look_alikes_differ_only_in_their_accent():
    for seed in range(8):
        plan = plan_scene(seed, frames=40, reentries=0)
        assert 5 <= len(plan.objects) <= 9
        groups = {}
        for o in plan.objects:
            groups.setdefault(o.look, []).append(o)
        assert 2 <= len(groups) <= 3 and all(2 <= len(g) <= 3 for g in groups.values())
        for look, members in groups.items():
            accents = np.array([m.accent for m in members], float)
            assert min(np.abs(a - b).max() for i, a in enumerate(accents) for b in accents[i + 1:]) > 40
            # The accent is a small part of the figure (~10 %).
            colour, silhouette = np.zeros((120, 80, 3), np.uint8), np.zeros((120, 80), np.uint8)
            _figure(colour, 40, 110, 100, plan.looks[look], (1, 2, 3), 0.5)
            _figure(silhouette, 40, 110, 100, plan.looks[look], (1, 2, 3), 0.5, label=1)
            accent = (colour == (1, 2, 3)).all(-1).sum()
            assert 0.05 < accent / silhouette.sum() < 0.2, (seed, plan.looks[look].accent)


def test_motion_crossings_overlaps_and_reentries_at_default_options():
    for seed in range(4):
        plan = plan_scene(seed)
        objs, fps = plan.objects, plan.fps
        in_view = (plan.vis > 0).sum(0)
        assert 2.5 <= in_view.mean() <= 6.5
        assert sum(r["gap_frames"] >= 30 for r in plan.reentries) >= 2  # >= 3 s at 10 fps
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                assert _overlap_runs(objs[a], objs[b], plan.width, plan.height) / fps < MAX_OVERLAP_S
        assert plan.crossings
        for c in plan.crossings:
            a, b = (objs[i - 1] for i in c["ids"])
            assert a.look == b.look  # look-alikes cross
            f = c["frame"] - 1
            assert a.present[f] and b.present[f] and abs(a.x[f] - b.x[f]) < 0.5 * ASPECT * a.h[f]
        # Non-linear motion: heading changes and stops within visits.
        turned = stopped = 0
        for o in objs:
            v = np.diff(np.stack([o.x, o.y], 1), axis=0)
            both = o.present[1:] & o.present[:-1]
            speed = np.hypot(*v.T)
            stopped += bool((both & (speed < 0.02 * o.h[1:])).sum() >= 3)
            moving = v[both & (speed > 0.05 * o.h[1:])]
            heading = np.unwrap(np.arctan2(moving[:, 1], moving[:, 0]))
            turned += bool(len(heading) and np.ptp(heading) > np.pi / 3)
        assert turned >= 2 and stopped >= 1


def test_output_is_identical_for_any_jobs(tmp_path):
    files = []
    for jobs in (1, 2):
        generate(tmp_path / f"j{jobs}", train=2, val=0, test=1, jobs=jobs, **{**OPTS, "frames": 40, "gap": (1, 1.5)})
        root = tmp_path / f"j{jobs}"
        files.append({p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted(root.rglob("*")) if p.is_file()})
    assert files[0] == files[1] and len(files[0]) == 3 * (40 + 3) + 4


def test_splits_have_disjoint_seeds():
    seeds = {}
    for base in (0, 1, 2):
        for _name, split, seed in sequence_seeds(base, 2000, 2000, 2000):
            seeds.setdefault(split, set()).add(seed)
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    assert sequence_seeds(0, 1, 1, 1) == [("synth-train-0000", "train", 0), ("synth-val-0000", "val", 500000),
                                          ("synth-test-0000", "test", 900000)]
    assert sequence_seeds(0, 0, 0, 4)[3][0] == "synth-test-0003"


@pytest.mark.parametrize("argv,named", [
    (["--train", "-1"], "--train -1"),
    (["--test", "-2"], "--test -2"),
    (["--size", "320x"], "--size 320x"),
    (["--size", "10x10"], "--size 10x10"),
    (["--frames", "0"], "--frames 0"),
    (["--frames", "20"], "--frames 20"),
    (["--fps", "0"], "--fps 0"),
    (["--objects", "3", "1"], "--objects 3 1"),
    (["--gap", "0", "2"], "--gap 0 2"),
    (["--speed", "2", "1"], "--speed 2 1"),
    (["--reentries", "9"], "--reentries 9"),
    (["--seed", "-1"], "--seed -1"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_bad_options_exit_2_naming_the_value(tmp_path, capsys, argv, named):
    assert cli_main(["data", "synth-tracks", "--out", str(tmp_path / "x"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_must_be_absent_or_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="--out"):
        cli_synth_tracks(["--out", str(tmp_path), *TINY])
