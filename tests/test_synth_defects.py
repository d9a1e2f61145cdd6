"""`memstream data synth-defects`: MVTec layout (read by the MVTec reader), masks vs clean twins, defect strength,
normal variation, video labels vs decoded frames, temporal events, determinism for any --jobs, seeds, bad options."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
from memstream.pipelines.anomaly_data import find_categories, read_mvtec
from memstream.pipelines.synth_defects import (
    CATEGORIES,
    EVENTS,
    STAIN_COLOURS,
    VERSION,
    _stain,
    cli_synth_defects,
    generate,
    image_tasks,
    plan_video,
    render_image,
    video_names,
)

TINY = ["--size", "64", "--train", "3", "--test-good", "2", "--test-defect", "2", "--video-train", "1",
        "--video-test", "2", "--video-seconds", "6", "--video-size", "64", "--jobs", "1"]
SMALL = {"size": 64, "train": 2, "test_good": 1, "test_defect": 1, "video_train": 1, "video_test": 1,
         "video_seconds": 5.0, "video_size": 64}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects") / "set"
    assert cli_synth_defects(["--out", str(out), *TINY]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def _frames(path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from ``path``."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame)
    cap.release()
    return frames


def test_mvtec_layout_read_by_the_mvtec_reader(dataset):
    out, doc = dataset
    assert doc["version"] == VERSION and list(doc["categories"]) == list(CATEGORIES)
    assert [p.name for p in find_categories(out)] == sorted(CATEGORIES)
    assert "synth-defects" in (out / "README.md").read_text()
    for category, (kind, defects) in CATEGORIES.items():
        info = doc["categories"][category]
        assert info["kind"] == kind and info["defects"] == list(defects)
        data = read_mvtec(out / category)
        assert len(data.train) == 3 and all(s.label == 0 and s.defect == "good" for s in data.train)
        assert data.defects == sorted(defects)
        assert sorted(p.name for p in (out / category / "test").iterdir()) == sorted(["good", *defects])
        assert sorted(p.name for p in (out / category / "ground_truth").iterdir()) == sorted(defects)
        assert len([s for s in data.test if s.label == 0]) == 2 and len(data.test) == 2 + 2 * len(defects)
        for s in data.train + data.test:
            img = cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert (s.mask_path is None) == (s.label == 0)
            if s.label:
                mask = cv2.imread(str(s.mask_path), cv2.IMREAD_UNCHANGED)
                assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
                assert s.mask_path.name == s.path.stem + "_mask.png"
        assert len(info["seeds"]) == 3 + 2 + 2 * len(defects)


def test_masks_are_exactly_where_the_defect_changed_its_clean_twin(dataset):
    out, doc = dataset
    for category, info in doc["categories"].items():
        for rel, seed in info["seeds"].items():
            defect = rel.split("/")[1]
            img, mask = render_image(category, seed, 64, None if defect == "good" else defect)
            assert (cv2.imread(str(out / category / rel)) == img).all()  # the file is this render
            if defect == "good":
                assert not mask.any()
                continue
            twin, _ = render_image(category, seed, 64, None)
            diff = np.abs(img.astype(int) - twin).max(-1)
            assert not diff[mask == 0].any(), (category, rel)  # nothing changes outside the mask
            assert mask.any() and diff[mask > 0].mean() > 1.0, (category, rel)
            assert (mask > 0).mean() < 0.25


def test_defects_range_from_obvious_to_subtle_and_normal_images_vary():
    strength = []
    for category, (_, defects) in CATEGORIES.items():
        for defect in defects:
            for seed in range(900_000, 900_004):
                img, mask = render_image(category, seed, 64, defect)
                twin, _ = render_image(category, seed, 64, None)
                strength.append(np.abs(img.astype(float) - twin)[mask > 0].mean())
        normal = np.stack([render_image(category, s, 64)[0].astype(float) for s in range(8)])
        # Lighting, phase, rotation and colour: normal images lie far from their mean (a pixel-difference to a mean
        # image scores normal pixels high as well).
        assert np.abs(normal - normal.mean(0)).mean() > 10, category
    assert min(strength) < 12 and max(strength) > 50 and np.median(strength) > 12


def test_every_defect_changes_its_pixels_beyond_the_sensor_noise():
    """A subtle defect is still a visible one: the mean change within its mask is above the sensor noise (sigma
    2-4 grey levels). Version 2 drew stains whose colour matched the surface (a brown stain on brown wood): their
    pixels changed by 1.6-2.5 levels on average, a label no method could find."""
    for category, (_, defects) in CATEGORIES.items():
        for defect in defects:
            for seed in range(900_000, 900_012):
                img, mask = render_image(category, seed, 64, defect)
                twin, _ = render_image(category, seed, 64, None)
                change = np.abs(img.astype(float) - twin).max(-1)[mask > 0].mean()
                assert change > 4.0, (category, defect, seed, change)


@pytest.mark.parametrize("contrast", [0.15, 0.4, 1.0])
def test_a_stain_the_colour_of_its_surface_still_shows(contrast):
    """The surface has a palette colour (the drawn one may match it): the stain's core still changes it by
    contrast x 60 grey levels. Every palette colour lies >= 80 levels (in its farthest channel) from another, so
    at an opacity of at most 0.95 a core change of 40 is always reachable."""
    for k, colour in enumerate(STAIN_COLOURS):
        img = np.tile(np.asarray(colour, np.float32), (128, 128, 1))
        before = img.copy()
        inside = np.ones((128, 128), bool)
        hit = _stain(np.random.default_rng(k), img, inside, inside, contrast)
        change = np.abs(img - before).max(-1)
        core = change >= 0.5 * change.max()  # where the opacity is at least half its peak
        assert hit.any() and not change[~hit].any()
        assert change[core].mean() >= min(contrast * 60.0, 40.0) - 0.5, (k, contrast, change[core].mean())


def test_board_missing_and_misplaced_parts():
    two_places = 0
    for seed in range(900_000, 900_012):
        for defect in ("missing", "misplaced"):
            img, mask = render_image("board", seed, 64, defect)
            twin, _ = render_image("board", seed, 64, None)
            parts, _ = cv2.connectedComponents((mask > 0).astype(np.uint8))
            assert parts - 1 >= 1 and (mask > 0).mean() < 0.08
            two_places += defect == "misplaced" and parts - 1 >= 2
    assert two_places >= 2  # moved parts: the empty place and the new one


def test_video_labels_match_the_decoded_frames(dataset):
    out, _ = dataset
    labels = json.loads((out / "video" / "labels.json").read_text())
    assert labels["version"] == VERSION and labels["fps"] == 8.0
    videos = labels["videos"]
    assert list(videos) == ["train-0000", "test-0000", "test-0001"]
    assert [v["seed"] for v in videos.values()] == [s for _, _, s in video_names(0, 1, 2)]
    for name, v in videos.items():
        frames = _frames(out / "video" / v["file"])
        assert v["file"] == f"{v['split']}/{name}.mp4" and v["frames"] == 48 and v["size"] == [64, 64]
        assert len(frames) == len(v["frame_labels"]) == 48 and frames[0].shape == (64, 64, 3)
        flags = np.zeros(48, int)
        for (a, b), e in zip(v["intervals"], v["events"], strict=True):
            assert (a, b) == (e["start_frame"], e["end_frame"]) and 0 < a <= b < 48
            assert 1.0 <= (b - a + 1) / 8 <= 5.0 and EVENTS[e["type"]] == e["kind"] and e["description"]
            flags[a:b + 1] = 1
        assert v["frame_labels"] == flags.tolist()
        if v["split"] == "train":
            assert not v["events"] and not any(v["frame_labels"])
        else:
            assert len(v["events"]) >= 2 and any(e["kind"] == "temporal" for e in v["events"])


def test_temporal_events_break_the_regular_motion_and_train_videos_keep_it():
    seen = set()
    for seed in range(900_000, 900_012):
        p = plan_video(seed, 20.0, 8.0, 64, anomalous=True)
        step, swing = np.diff(p["belt_pos"], prepend=p["belt_pos"][0] - p["speed"] / 8), np.diff(p["phase"])
        normal = np.ones(p["frames"], bool)
        for e in p["events"]:
            seen.add(e["type"])
            span = slice(e["start_frame"], e["end_frame"] + 1)
            normal[span] = False
            if e["type"] == "belt_stop":
                assert np.allclose(step[span], 0)
            elif e["type"] == "belt_reverse":
                assert (step[span] < 0).all()
            elif e["type"] == "light_stuck":
                assert p["light_on"][span].all()
            elif e["type"] == "pendulum_frozen":
                assert np.allclose(swing[e["start_frame"]:e["end_frame"]], 0)
        assert np.allclose(step[normal], p["speed"] / 8)
    assert seen == set(EVENTS)
    for seed in range(3):
        p = plan_video(seed, 20.0, 8.0, 64, anomalous=False)
        assert not p["events"] and np.allclose(np.diff(p["belt_pos"]), p["speed"] / 8)
        assert np.allclose(np.diff(p["phase"]), 2 * np.pi / p["period"] / 8)
        # the light blinks with its period: on about half the time, switching every half period
        assert 0.35 < p["light_on"].mean() < 0.65


def test_output_is_identical_for_any_jobs(tmp_path):
    files = []
    for jobs in (1, 2):
        root = tmp_path / f"j{jobs}"
        generate(root, categories=["nut", "board"], jobs=jobs, **SMALL)
        files.append({p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted(root.rglob("*")) if p.is_file()})
    assert files[0] == files[1] and len(files[0]) == 2 * (2 + 1 + 2 * 4) + 2 + 3


def test_splits_and_categories_have_disjoint_seeds(tmp_path):
    opts = {"categories": list(CATEGORIES), "train": 500, "test_good": 300, "test_defect": 100, "size": 64, "seed": 3}
    tasks = image_tasks(tmp_path, opts)
    for category in CATEGORIES:
        train = {t[3] for t in tasks if t[1] == category and t[2].startswith("train/")}
        test = [t[3] for t in tasks if t[1] == category and t[2].startswith("test/")]
        assert len(train) == 500 and len(set(test)) == len(test) and not train & set(test)
        assert min(train) == 3_000_000 and min(test) == 3_900_000
    # Same seed in two categories: different random streams, different images.
    assert not (render_image("weave", 5, 64)[0] == render_image("grain", 5, 64)[0]).all()
    names = video_names(0, 2, 2)
    assert names == [("train-0000", "train", 0), ("train-0001", "train", 1), ("test-0000", "test", 900000),
                     ("test-0001", "test", 900001)]


@pytest.mark.parametrize("argv,named", [
    (["--train", "-1"], "--train -1"),
    (["--test-defect", "-2"], "--test-defect -2"),
    (["--size", "16"], "--size 16"),
    (["--categories", "weave", "glass"], "--categories glass"),
    (["--video-seconds", "2"], "--video-seconds 2"),
    (["--fps", "0"], "--fps 0"),
    (["--video-size", "10"], "--video-size 10"),
    (["--seed", "-1"], "--seed -1"),
    (["--jobs", "0"], "--jobs 0"),
    (["--no-images", "--no-video"], "--no-images --no-video"),
])
def test_bad_options_exit_2_naming_the_value(tmp_path, capsys, argv, named):
    assert cli_synth_defects(["--out", str(tmp_path / "x"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_must_be_absent_or_empty_and_parts_can_be_skipped(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    assert cli_synth_defects(["--out", str(tmp_path), *TINY]) == 2
    doc = generate(tmp_path / "v", images=False, **{**SMALL, "video_test": 0})
    assert doc["categories"] == {} and doc["video"]["train"] == 1
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["README.md", "manifest.json", "video"]
    doc = generate(tmp_path / "i", video=False, categories=["weave"], **SMALL)
    assert list(doc["categories"]) == ["weave"] and doc["video"] is None
    assert not (tmp_path / "i" / "video").exists()
