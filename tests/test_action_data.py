"""Action localization data: THUMOS14 readers on the real files, synthetic json, results, targets, features."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.action_data import (
    AMBIGUOUS,
    THUMOS14_CLASSES,
    ActionInstance,
    ActionVideo,
    FeatureFolder,
    ambiguous_mask,
    frame_targets,
    read_activitynet_results,
    read_annotations,
    read_classes,
    write_activitynet_results,
)

TAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "tal"
# G-TAD's thumos_gt.json leaves out three test videos: 0000270 (29 HammerThrow instances, 22 of them ending after
# the video's 176.1 s), 0001292 (Ambiguous only) and 0001496 (18 CricketShot, 9 Ambiguous).
JSON_DROPS = {"video_test_0000270": {"HammerThrow": 29}, "video_test_0001292": {},
              "video_test_0001496": {"CricketShot": 18}}


@pytest.fixture(scope="module")
def tal() -> Path:
    if not (TAL / "test_Annotation.csv").is_file():
        pytest.skip(f"THUMOS14 annotations not found at {TAL} (shared/realdata/tal, see shared/realdata/README.md)")
    return TAL


def _count(videos) -> int:
    return sum(len(v.instances) for v in videos.values())


def _per_class(videos) -> collections.Counter:
    return collections.Counter(a.label for v in videos.values() for a in v.instances)


def _as_tuples(videos) -> dict:
    return {n: [(a.label, a.start, a.end) for a in v.instances] for n, v in videos.items()}


def test_classes_are_testra_list_less_background_and_ambiguous(tal):
    names = json.loads((tal / "testra_data_info.json").read_text())["THUMOS"]["class_names"]
    assert names == ["Background", *THUMOS14_CLASSES, AMBIGUOUS]
    assert read_classes(tal / "testra_data_info.json") == list(THUMOS14_CLASSES) == sorted(THUMOS14_CLASSES)
    assert read_classes() == list(THUMOS14_CLASSES) and len(THUMOS14_CLASSES) == 20


def test_thumos14_validation_counts(tal):
    val = read_annotations(tal / "val_Annotation.csv")
    assert len(val) == 200 and _count(val) == 3007
    assert {v.subset for v in val.values()} == {"validation"}
    assert set(_per_class(val)) == set(THUMOS14_CLASSES)
    full = read_annotations(tal / "val_Annotation.csv", keep_ambiguous=True)
    assert len(full) == 200 and _count(full) == 3096 and _per_class(full)[AMBIGUOUS] == 89
    assert all(a.start < a.end for v in val.values() for a in v.instances)


def test_thumos14_test_counts_and_groundtruth_csv_agree(tal):
    test = read_annotations(tal / "test_Annotation.csv")
    assert len(test) == 213 and _count(test) == 3358
    assert test["video_test_0001292"].instances == []  # annotated Ambiguous only: kept as a background video
    full = read_annotations(tal / "test_Annotation.csv", keep_ambiguous=True)
    assert _count(full) == 3457 and _per_class(full)[AMBIGUOUS] == 99
    # The groundtruth csv (label-idx 0..19 alphabetical, -1 Ambiguous) holds exactly the same instances.
    gt = read_annotations(tal / "thumos14_test_groundtruth.csv", keep_ambiguous=True)
    assert _as_tuples(gt) == _as_tuples(full)
    assert {v.subset for v in gt.values()} == {"test"}
    assert {v.fps for v in gt.values()} == {30.0, 29.97002997, 25.0, 24.0}
    assert all(v.duration > 0 and v.frames > 0 for v in gt.values())
    # Known faults, kept as written: 26 instances end after their video's duration.
    late = collections.Counter(n for n, v in gt.items() for a in v.instances if a.end > v.duration)
    assert late == {"video_test_0000270": 22, "video_test_0000814": 3, "video_test_0001081": 1}


def test_activitynet_json_agrees_with_the_csvs(tal):
    js = read_annotations(tal / "thumos_gt.json")
    assert collections.Counter(v.subset for v in js.values()) == {"train": 200, "test": 210}
    # Its "train" subset is the THUMOS14 validation set, instance for instance.
    assert _as_tuples(read_annotations(tal / "thumos_gt.json", subset="train")) == \
        _as_tuples(read_annotations(tal / "val_Annotation.csv"))
    json_test = read_annotations(tal / "thumos_gt.json", subset="test")
    csv_test = read_annotations(tal / "test_Annotation.csv")
    assert len(json_test) == 210 and _count(json_test) == 3311
    assert set(csv_test) - set(json_test) == set(JSON_DROPS) and set(json_test) <= set(csv_test)
    assert _as_tuples(json_test) == {n: t for n, t in _as_tuples(csv_test).items() if n in json_test}
    dropped = collections.Counter()
    for counts in JSON_DROPS.values():
        dropped.update(counts)
    assert _per_class(csv_test) - _per_class(json_test) == dropped
    assert read_annotations(tal / "val_Annotation.csv", subset="test") == {}


def _synthetic(tmp_path: Path, **overrides) -> Path:
    data = {"version": "memstream-synth-actions-1", "classes": ["wave", "jump"], "fps": 8.0, "database": {
        "v1": {"subset": "train", "duration": 90.0, "fps": 8.0, "frames": 720, "file": "videos/v1.mp4",
               "annotations": [{"segment": [30.0, 35.5], "label": "jump"}, {"segment": [2.0, 4.0], "label": "wave"}]},
        "v2": {"subset": "test", "duration": 10.0, "frames": 80, "annotations": []},
    }}
    data.update(overrides)
    path = tmp_path / "data" / "actions.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_synthetic_json(tmp_path):
    path = _synthetic(tmp_path)
    videos = read_annotations(path)
    assert list(videos) == ["v1", "v2"]
    v1 = videos["v1"]
    assert v1 == ActionVideo("v1", "train", [ActionInstance("wave", 2.0, 4.0), ActionInstance("jump", 30.0, 35.5)],
                             90.0, 8.0, 720, path.parent / "videos" / "v1.mp4")
    assert videos["v2"].fps == 8.0 and videos["v2"].path is None  # the file's fps is the default
    assert list(read_annotations(path, subset="test")) == ["v2"]
    assert read_classes(path) == ["wave", "jump"]


@pytest.mark.parametrize("annotation,message", [
    ({"segment": [5.0, 5.0], "label": "wave"}, "video v1: annotation 0"),
    ({"segment": [6.0, 5.0], "label": "wave"}, "start < end"),
    ({"segment": ["a", 5.0], "label": "wave"}, "'a' is not a number"),
    ({"segment": [1.0, 5.0], "label": "swim"}, "unknown label 'swim'"),
    ({"segment": [1.0], "label": "wave"}, "expected"),
])
def test_synthetic_json_bad_annotations(tmp_path, annotation, message):
    path = _synthetic(tmp_path, database={"v1": {"subset": "train", "annotations": [annotation]}})
    with pytest.raises(ValueError, match=message) as e:
        read_annotations(path)
    assert str(path) in str(e.value) and "v1" in str(e.value)


ANNOTATION_HEADER = "video,type,type_idx,start,end,startFrame,endFrame\n"
GROUNDTRUTH_HEADER = "video-name,t-init,t-end,f-init,f-end,video-duration,frame-rate,video-frames,label-idx\n"


@pytest.mark.parametrize("text,message", [
    ("video,type,start\nv,Diving,1\n", "line 1: unknown csv layout"),
    (ANNOTATION_HEADER + "v,Diving,26,1.0,2.0,1,2\nv,Diving,26,3.0,3.0,1,2\n", "line 3: .*start < end"),
    (ANNOTATION_HEADER + "v,Diving,25,1.0,2.0,1,2\n", "line 2: unknown label index '25'"),
    (ANNOTATION_HEADER + "v,Swimming,3,1.0,2.0,1,2\n", "line 2: unknown label 'Swimming'"),
    (ANNOTATION_HEADER + "v,Diving,26,1.0,x,1,2\n", "line 2: end 'x' is not a number"),
    (ANNOTATION_HEADER + "v,Diving,26,1.0\n", "line 2: expected 7 fields"),
    (GROUNDTRUTH_HEADER + "v,1.0,2.0,30,60,10.0,30.0,300,20\n", "line 2: unknown label index '20'"),
    (GROUNDTRUTH_HEADER + "v,1.0,2.0,30,60,10.0,30.0,300,1\nv,3.0,4.0,90,120,11.0,30.0,330,1\n", "line 3: v: dur"),
])
def test_csv_bad_input(tmp_path, text, message):
    path = tmp_path / "test_bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        read_annotations(path)
    assert str(path) in str(e.value)


def test_csv_subset_from_file_name(tmp_path):
    text = GROUNDTRUTH_HEADER + "v,1.0,2.0,30,60,10.0,30.0,300,7\nv,3.0,4.0,90,120,10.0,30.0,300,-1\n"
    for name, subset in (("val_x.csv", "validation"), ("thumos_test.csv", "test"), ("labels.csv", "unknown")):
        (tmp_path / name).write_text(text)
        videos = read_annotations(tmp_path / name)
        assert videos["v"].subset == subset and videos["v"].instances == [ActionInstance("Diving", 1.0, 2.0)]
        assert (videos["v"].duration, videos["v"].fps, videos["v"].frames) == (10.0, 30.0, 300)


def test_read_classes_text_and_errors(tmp_path):
    (tmp_path / "classes.txt").write_text("# ours\nwave\n\njump  # second\n")
    assert read_classes(tmp_path / "classes.txt") == ["wave", "jump"]
    (tmp_path / "dup.txt").write_text("wave\nwave\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_classes(tmp_path / "dup.txt")
    (tmp_path / "none.json").write_text("{}")
    with pytest.raises(ValueError, match="none.json"):
        read_classes(tmp_path / "none.json")


def test_results_roundtrip_and_errors(tmp_path):
    results = {"v1": [{"label": "wave", "score": np.float32(0.5), "segment": np.array([1.0, 2.5]), "emitted": 3.0},
                      {"label": "jump", "score": 1, "segment": ["4", "5"]}], "v2": []}
    path = tmp_path / "out" / "results.json"
    write_activitynet_results(path, results)
    data = json.loads(path.read_text())
    assert data["version"] == "memstream" and data["external_data"] == {}
    assert read_activitynet_results(path) == {
        "v1": [{"label": "wave", "score": 0.5, "segment": [1.0, 2.5], "emitted": 3.0},
               {"label": "jump", "score": 1.0, "segment": [4.0, 5.0]}], "v2": []}
    with pytest.raises(ValueError, match="video v1: result 0: segment"):
        write_activitynet_results(path, {"v1": [{"label": "wave", "score": 0.5, "segment": [3.0, 1.0]}]})
    path.write_text(json.dumps({"results": {"v1": [{"label": "wave", "score": "nan", "segment": [0, 1]}]}}))
    with pytest.raises(ValueError, match="results.json: video v1: result 0: score"):
        read_activitynet_results(path)


def test_frame_targets_by_frame_centre():
    video = ActionVideo("v", "test", [ActionInstance("b", 1.25, 1.75), ActionInstance("a", 1.0, 2.0),
                                      ActionInstance(AMBIGUOUS, 3.0, 4.0), ActionInstance("a", 4.8, 9.0)])
    y = frame_targets(video, ["a", "b"], fps=2.0, num_frames=10)  # centres 0.25, 0.75, ..., 4.75
    assert y.dtype == np.float32 and y.shape == (10, 3)
    assert y[:, 1].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]  # [1.0, 2.0): centres 1.25, 1.75; 4.8 > 4.75
    assert y[:, 2].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # [1.25, 1.75): start in, end out
    assert y[:, 0].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1, 1]  # Ambiguous frames stay background
    assert ambiguous_mask(video, 2.0, 10).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="video v: label 'b'"):
        frame_targets(video, ["a"], 2.0, 10)
    with pytest.raises(ValueError, match="fps"):
        frame_targets(video, ["a", "b"], 0.0, 10)


def test_frame_targets_on_thumos(tal):
    test = read_annotations(tal / "thumos14_test_groundtruth.csv")
    video, fps = test["video_test_0000004"], 4.0
    num = int(video.duration * fps)
    y = frame_targets(video, read_classes(), fps, num)
    assert y.shape == (num, 21) and np.all(y.sum(1) >= 1)
    active = y[:, 1:].max(1).sum() / fps
    covered = sum(a.end - a.start for a in video.instances)  # instances of this video do not overlap
    assert abs(active - covered) <= len(video.instances) / fps


def test_feature_folder(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 3), np.float64))
    np.save(tmp_path / "b.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(6, np.float32))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan, 1.0]], np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    folder = FeatureFolder(tmp_path, fps=4)
    assert folder.names() == ["a", "b", "flat", "junk", "nan", "wide"] and folder.fps == 4.0
    x = folder.load("a")
    assert x.dtype == np.float32 and x.shape == (5, 3) and folder.dim == 3
    assert folder.load("b").shape == (2, 3)
    for name, message in (("flat", "flat.npy: features must be"), ("nan", "nan.npy: non-finite feature at frame 0"),
                          ("wide", "wide.npy: 4 channels"), ("junk", "junk.npy: cannot read")):
        with pytest.raises(ValueError, match=message):
            folder.load(name)
    with pytest.raises(FileNotFoundError, match="video 'missing'"):
        folder.load("missing")
    with pytest.raises(ValueError, match="fps"):
        FeatureFolder(tmp_path, fps=0)
    with pytest.raises(FileNotFoundError):
        FeatureFolder(tmp_path / "nowhere", fps=4)
