"""`memstream data synth-actions`: format, determinism, held-out seeds, long actions, the class is in the motion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from memstream.pipelines.synth_actions import (
    CLASSES,
    RAMP_S,
    RING,
    VERSION,
    cli_synth_actions,
    draw_plan,
    generate,
    plan_video,
    render_video,
    video_seeds,
)

TINY = ["--train", "1", "--val", "1", "--test", "1", "--seconds", "20", "30", "--size", "64"]


def _read(path: Path) -> np.ndarray:
    cap, frames = cv2.VideoCapture(str(path)), []
    assert cap.isOpened(), path
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert count == len(frames)
    return np.array(frames)


def _features(xy: np.ndarray, scale: np.ndarray, angle: np.ndarray, size: int) -> dict:
    """Motion statistics of a stretch of actor states; velocities in frame sizes per frame."""
    v = np.diff(xy, axis=0) / size
    vx, vy = np.sqrt((v ** 2).mean(0))
    centred = v - v.mean(0)
    heading = np.angle(np.exp(1j * np.diff(np.arctan2(v[:, 1], v[:, 0]))))
    moving = np.linalg.norm(v, axis=1) > 0.01
    return {"speed": float(np.hypot(vx, vy)), "ratio": float(vy / max(vx, 1e-9)),
            "scale_rate": float(np.sqrt((np.diff(scale) ** 2).mean())),
            "turn_rate": float(np.abs(np.angle(np.exp(1j * np.diff(angle)))).mean()),
            "autocorr": float((centred[1:] * centred[:-1]).sum() / max((centred ** 2).sum(), 1e-12)),
            "left_turns": float((heading > 0).mean()),
            "rail": float(((np.abs(v[:, 1]) < 0.25 * np.abs(v[:, 0])) & moving).mean())}


def _motion_class(f: dict) -> str:
    """A hand-written decision list on motion alone (no appearance): which class, or idle."""
    if f["speed"] < 0.015:
        return "pulse" if f["scale_rate"] > 0.04 else "spin" if f["turn_rate"] > 0.15 else "idle"
    if f["autocorr"] < 0:
        return "shake"
    if f["ratio"] < 0.28:
        return "wave"
    if f["ratio"] > 2.2:
        return "bounce"
    if not 0.15 <= f["left_turns"] <= 0.85:
        return "circle"
    return "zigzag" if f["rail"] > 0.28 else "figure8"


def _stretches(plan) -> list[tuple[int, int, str]]:
    """(first, last + 1, class or 'idle') of every action and gap, ramps excluded, at least 1.5 s long."""
    ramp, out, prev = int(np.ceil(RAMP_S * plan.fps)), [], 0
    for ins in plan.instances:
        out += [(prev, ins["start"], "idle"), (ins["start"] + ramp, ins["end"] + 1 - ramp, ins["label"])]
        prev = ins["end"] + 1
    out.append((prev, plan.frames, "idle"))
    return [(a, b, c) for a, b, c in out if b - a >= 1.5 * plan.fps]


def _ring_track(frames: np.ndarray, radius: float) -> np.ndarray:
    """(T, 2) actor centre found in pixels alone: best match of a ring template of ``radius``."""
    half = int(np.ceil(radius)) + 4
    template = np.full((2 * half + 1, 2 * half + 1), 128, np.uint8)
    thick = max(1, round(frames.shape[1] / 80))
    cv2.circle(template, (half * 16, half * 16), int(round(radius * 16)), 20, thick + 2, cv2.LINE_AA, 4)
    cv2.circle(template, (half * 16, half * 16), int(round(radius * 16)), 255, thick, cv2.LINE_AA, 4)
    out = []
    for frame in frames:
        score = cv2.matchTemplate(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), template, cv2.TM_CCOEFF_NORMED)
        out.append(np.add(cv2.minMaxLoc(score)[3], half))
    return np.array(out, float)


def test_cli_writes_the_data_set_and_prints_a_json_summary(tmp_path, capsys):
    out = tmp_path / "set"
    assert cli_synth_actions(["--out", str(out), "--jobs", "1", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["videos"] == {"train": 1, "validation": 1, "test": 1} and summary["out"] == str(out)
    assert summary["instances"]["train"] >= 1 and 0 <= summary["long_fraction"] <= 1 and summary["hours"]["total"] > 0
    doc = json.loads((out / "annotations.json").read_text())
    assert set(doc) == {"version", "classes", "fps", "size", "long_threshold", "database"}
    assert doc["version"] == VERSION and doc["classes"] == list(CLASSES[:6]) and doc["fps"] == 8.0
    assert doc["size"] == 64 and doc["long_threshold"] == 6.0
    assert (out / "classes.txt").read_text().split() == doc["classes"]
    assert "synth-actions" in (out / "README.md").read_text()
    assert list(doc["database"]) == ["train_0000", "validation_0000", "test_0000"]
    for name, video in doc["database"].items():
        assert set(video) == {"subset", "duration", "fps", "frames", "seed", "file", "annotations"}
        assert video["subset"] == name.rsplit("_", 1)[0] and video["file"] == f"videos/{name}.mp4"
        assert video["duration"] == round(video["frames"] / 8.0, 4) and 20 <= video["duration"] <= 30
        frames = _read(out / video["file"])
        assert frames.shape == (video["frames"], 64, 64, 3)
        # Segments are on frame boundaries ([f0/fps, (f1+1)/fps]) and agree with the plan of the video's seed.
        plan = plan_video(video["seed"], size=64, seconds=(20, 30))
        labels = np.full(video["frames"], -1)
        for a in video["annotations"]:
            f0, f1 = round(a["segment"][0] * 8), round(a["segment"][1] * 8) - 1
            assert a["segment"] == [round(f0 / 8, 4), round((f1 + 1) / 8, 4)] and 0 <= f0 <= f1 < video["frames"]
            assert (labels[f0:f1 + 1] == -1).all() and (f0 == 0 or labels[f0 - 1] == -1)  # a gap before each
            labels[f0:f1 + 1] = doc["classes"].index(a["label"])
        np.testing.assert_array_equal(labels, plan.labels)
        # mp4v is lossy; the decoded frames stay close to the rendered ones.
        rendered, annotations = render_video(video["seed"], size=64, seconds=(20, 30))
        assert annotations == video["annotations"]
        assert np.abs(frames.astype(float) - rendered).mean() < 6


def test_output_is_identical_for_any_jobs(tmp_path):
    options = {"train": 2, "val": 0, "test": 1, "size": 64, "seconds": (20, 25)}
    files = []
    for jobs in (1, 2):
        generate(tmp_path / f"j{jobs}", jobs=jobs, **options)
        files.append({p.relative_to(tmp_path / f"j{jobs}"): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((tmp_path / f"j{jobs}").rglob("*")) if p.is_file()})
    assert len(files[0]) == 3 + 3 and files[0] == files[1]


def test_render_is_deterministic_and_seeded():
    a, ann_a = render_video(7, size=64, seconds=(20, 20))
    b, ann_b = render_video(7, size=64, seconds=(20, 20))
    c, _ = render_video(8, size=64, seconds=(20, 20))
    assert a.dtype == np.uint8 and a.shape == (160, 64, 64, 3)
    assert np.array_equal(a, b) and ann_a == ann_b and not np.array_equal(a, c)


def test_splits_have_disjoint_seeds():
    seeds = {}
    for base in (0, 1, 2):
        for _name, subset, seed in video_seeds(base, 2000, 2000, 2000):
            seeds.setdefault(subset, set()).add(seed)
    assert not seeds["train"] & seeds["validation"] and not seeds["train"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    assert video_seeds(0, 1, 1, 1) == [("train_0000", "train", 0), ("validation_0000", "validation", 500000),
                                       ("test_0000", "test", 900000)]


def test_long_actions_dominate_at_default_durations():
    plans = [plan_video(seed) for seed in range(30)]
    lengths = np.array([(i["end"] - i["start"] + 1) / 8 for p in plans for i in p.instances])
    assert (lengths >= 6.0).mean() >= 0.5 and lengths.max() > 20 and lengths.max() <= 30
    assert lengths[lengths >= 6].sum() / lengths.sum() > 0.8 and ((lengths >= 1.5) & (lengths <= 4)).any()
    starts = [p.instances[0]["start"] for p in plans]
    assert 0 in starts and max(starts) > 0  # some videos open with an action, some with a gap
    for p in plans:
        for prev, nxt in zip(p.instances, p.instances[1:]):
            assert nxt["start"] - prev["end"] - 1 >= 8  # gaps of >= 1 s at 8 fps


def test_the_class_is_in_the_motion():
    """A decision list on the actor's motion alone names every action (and the idle gaps) correctly."""
    confusion = {}
    for seed in range(25):
        plan = plan_video(seed, classes=len(CLASSES))
        a = plan.actor
        for lo, hi, label in _stretches(plan):
            got = _motion_class(_features(a.xy[lo:hi], a.scale[lo:hi], a.angle[lo:hi], plan.size))
            confusion[(label, got)] = confusion.get((label, got), 0) + 1
    wrong = {k: v for k, v in confusion.items() if k[0] != k[1]}
    assert not wrong, wrong
    assert {label for label, _ in confusion} == {*CLASSES, "idle"}


def test_distractors_never_perform_class_motion():
    for seed in range(10):
        plan = plan_video(seed, classes=len(CLASSES))
        assert 2 <= len(plan.distractors) <= 4
        for d in plan.distractors:
            f = _features(d.xy, d.scale, d.angle, plan.size)
            assert f["speed"] < 0.015 and f["scale_rate"] == 0 and f["turn_rate"] < 0.1 and f["autocorr"] > 0.5


def test_the_actor_is_found_in_pixels_and_its_appearance_ignores_the_class():
    # Appearance and scene come from the video's seed alone: the same whatever classes it performs.
    looks = {(p.actor.shape, p.actor.colour, p.actor.radius) for p in (plan_video(3, classes=[c]) for c in CLASSES)}
    assert len(looks) == 1
    assert len({plan_video(s).actor.shape for s in range(30)}) >= 4
    plan = plan_video(5, classes=["wave", "bounce", "circle", "zigzag", "spin"], seconds=(30, 30))
    frames = draw_plan(plan)
    # The ring tells the actor apart: a ring template alone finds it in every frame, among the distractors.
    track = _ring_track(frames, RING * plan.actor.radius)
    assert np.abs(track - plan.actor.xy).max() < 1.5
    for lo, hi, label in _stretches(plan):  # ... and its pixel track shows the class
        if label not in ("spin", "idle"):
            assert _motion_class(_features(track[lo:hi], plan.actor.scale[lo:hi], plan.actor.angle[lo:hi],
                                            plan.size)) == label
    # The body's colour (sampled opposite the limb, brightness drift undone) is the same in every class.
    a, k = plan.actor, np.arange(plan.frames)
    x = np.round(a.xy[:, 0] - 0.5 * a.radius * np.cos(a.angle)).astype(int)
    y = np.round(a.xy[:, 1] - 0.5 * a.radius * np.sin(a.angle)).astype(int)
    body = frames[k, y, x].astype(float) / plan.gain[:, None]
    medians = np.array([np.median(body[plan.labels == c], axis=0) for c in np.unique(plan.labels)])
    assert np.abs(medians - np.array(a.colour)).max() < 8


@pytest.mark.parametrize("argv,named", [
    (["--classes", "9"], "--classes 9"),
    (["--classes", "0"], "--classes 0"),
    (["--fps", "0"], "--fps 0"),
    (["--size", "16"], "--size 16"),
    (["--size", "65"], "--size 65"),
    (["--seconds", "30", "20"], "--seconds 30 20"),
    (["--gap", "-1", "2"], "--gap -1 2"),
    (["--short", "0", "2"], "--short 0 2"),
    (["--long", "10", "5"], "--long 10 5"),
    (["--short-fraction", "1.5"], "--short-fraction 1.5"),
    (["--distractors", "3", "1"], "--distractors 3 1"),
    (["--train", "-1"], "--train -1"),
    (["--test", "100001"], "--test 100001"),
    (["--seed", "-1"], "--seed -1"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_bad_arguments_name_the_value(tmp_path, argv, named):
    with pytest.raises(ValueError, match=named):
        cli_synth_actions(["--out", str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()


def test_out_must_be_absent_or_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="--out"):
        cli_synth_actions(["--out", str(tmp_path), *TINY])
