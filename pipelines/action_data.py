"""Temporal action localization data (THUMOS14 conventions): annotations, class lists, result files, frame targets.

Why: online action detection is trained on per-frame targets and judged with ActivityNet-style detection mAP at
several tIoU thresholds; both need one reader that gives the same ``ActionVideo`` whatever file the annotations
came in, and one writer/reader for result files that ActivityNet's evaluation code accepts.

``read_annotations`` picks the layout from the file's content:

- THUMOS14 ``val_Annotation.csv`` / ``test_Annotation.csv``: ``video,type,type_idx,start,end,startFrame,endFrame``
  (``type_idx`` is the UCF101 index, checked against ``type``; ``Ambiguous`` has index 0).
- ``thumos14_test_groundtruth.csv``: ``video-name,t-init,t-end,f-init,f-end,video-duration,frame-rate,video-frames,
  label-idx`` (``label-idx`` 0..19 indexes ``THUMOS14_CLASSES``, -1 is ``Ambiguous``); gives duration, fps, frames.
- ActivityNet-style json ``{"database": {video: {"subset", "annotations": [{"segment": [s, e], "label"}]}}}``
  (segments may be strings, as in G-TAD's ``thumos_gt.json``), including memstream's synthetic json
  (``"version": "memstream-synth-actions-1"``, top-level ``"classes"`` and ``"fps"``, per video ``"duration"``,
  ``"fps"``, ``"frames"`` and ``"file"``, a media path relative to the json's folder).

A csv's subset comes from its file name (``val`` -> ``"validation"``, ``test``, ``train``; else ``"unknown"``);
a json's subsets are kept as written (G-TAD's json calls the THUMOS14 validation videos ``"train"``).
``Ambiguous`` instances are dropped unless ``keep_ambiguous``; a video keeps its entry even when it has no
instance left (THUMOS14 test has 213 videos, one of them annotated Ambiguous only).

Times are seconds. ``frame_targets(video, classes, fps, T) -> (T, 1 + C)`` float32 multi-hot, column 0 background.
Features (``FeatureFolder``): one ``(T, D)`` array per video, ``<root>/<video>.npy``, sampled at a given fps.
Bad input raises ``ValueError`` naming the file and the line or video.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from memstream.models.action import THUMOS14_CLASSES  # the feature preset's classes: one list for both

AMBIGUOUS = "Ambiguous"
BACKGROUND = "Background"
# The UCF101 index that THUMOS14's *_Annotation.csv files write in ``type_idx`` (Ambiguous is 0).
THUMOS14_UCF101_INDEX: dict[str, int] = {
    AMBIGUOUS: 0, "BaseballPitch": 7, "BasketballDunk": 9, "Billiards": 12, "CleanAndJerk": 21, "CliffDiving": 22,
    "CricketBowling": 23, "CricketShot": 24, "Diving": 26, "FrisbeeCatch": 31, "GolfSwing": 33, "HammerThrow": 36,
    "HighJump": 40, "JavelinThrow": 45, "LongJump": 51, "PoleVault": 68, "Shotput": 79, "SoccerPenalty": 85,
    "TennisSwing": 92, "ThrowDiscus": 93, "VolleyballSpiking": 97,
}
_ANNOTATION_COLUMNS = ("video", "type", "type_idx", "start", "end")
_GROUNDTRUTH_COLUMNS = ("video-name", "t-init", "t-end", "video-duration", "frame-rate", "video-frames", "label-idx")


@dataclass(frozen=True)
class ActionInstance:
    """One action instance: ``label`` active over ``[start, end)`` seconds (finite, ``0 <= start < end``)."""

    label: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"action label must be a non-empty string, got {self.label!r}")
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError(f"{self.label}: segment [{self.start}, {self.end}] is not finite")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"{self.label}: segment [{self.start}, {self.end}] needs 0 <= start < end")


@dataclass
class ActionVideo:
    """A video's annotations. ``duration`` seconds, ``fps`` and ``frames`` of the media, ``path`` the media file
    (each ``None`` where the annotation file does not say)."""

    name: str
    subset: str
    instances: list[ActionInstance] = field(default_factory=list)
    duration: float | None = None
    fps: float | None = None
    frames: int | None = None
    path: Path | None = None


def _number(text, where: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {what} {text!r} is not finite")
    return value


def _instance(label: str, start, end, where: str) -> ActionInstance:
    try:
        return ActionInstance(label, _number(start, where, "start"), _number(end, where, "end"))
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}") from None


def _csv_subset(path: Path) -> str:
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    for subset, names in (("validation", {"val", "validation"}), ("test", {"test"}), ("train", {"train"})):
        if tokens & names:
            return subset
    return "unknown"


def _read_csv(path: Path, keep_ambiguous: bool) -> dict[str, ActionVideo]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        if all(c in header for c in _ANNOTATION_COLUMNS):
            layout = "annotation"
        elif all(c in header for c in _GROUNDTRUTH_COLUMNS):
            layout = "groundtruth"
        else:
            raise ValueError(f"{path}: line 1: unknown csv layout {header}; expected the columns "
                             f"{','.join(_ANNOTATION_COLUMNS)} or {','.join(_GROUNDTRUTH_COLUMNS)}")
        subset = _csv_subset(path)
        videos: dict[str, ActionVideo] = {}
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise ValueError(f"{where}: expected {len(header)} fields")
            if layout == "annotation":
                name, label = row["video"].strip(), row["type"].strip()
                if label not in THUMOS14_UCF101_INDEX:
                    raise ValueError(f"{where}: unknown label {label!r}")
                index = _number(row["type_idx"], where, "type_idx")
                if index != THUMOS14_UCF101_INDEX[label]:
                    raise ValueError(f"{where}: unknown label index {row['type_idx']!r} for {label!r} "
                                     f"(THUMOS14 gives {THUMOS14_UCF101_INDEX[label]})")
                start, end, meta = row["start"], row["end"], (None, None, None)
            else:
                name = row["video-name"].strip()
                index = _number(row["label-idx"], where, "label-idx")
                if index != int(index) or not -1 <= index < len(THUMOS14_CLASSES):
                    raise ValueError(f"{where}: unknown label index {row['label-idx']!r} (0..19, or -1 Ambiguous)")
                label = AMBIGUOUS if index == -1 else THUMOS14_CLASSES[int(index)]
                frames = _number(row["video-frames"], where, "video-frames")
                meta = (_number(row["video-duration"], where, "video-duration"),
                        _number(row["frame-rate"], where, "frame-rate"), int(frames))
                start, end = row["t-init"], row["t-end"]
            if not name:
                raise ValueError(f"{where}: empty video name")
            instance = _instance(label, start, end, where)
            video = videos.get(name)
            if video is None:
                video = videos[name] = ActionVideo(name, subset, [], *meta)
            elif (video.duration, video.fps, video.frames) != meta:
                raise ValueError(f"{where}: {name}: duration/fps/frames {meta} differ from an earlier line's "
                                 f"{(video.duration, video.fps, video.frames)}")
            if keep_ambiguous or label != AMBIGUOUS:
                video.instances.append(instance)
    return videos


def _json_object(path: Path, key: str, what: str) -> dict:
    """A json file whose top-level object holds the object ``key``; ValueError naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ValueError(f"{path}: no \"{key}\" object ({what} expected)")
    return data


def _read_json(path: Path, keep_ambiguous: bool) -> dict[str, ActionVideo]:
    data = _json_object(path, "database", "ActivityNet-style annotations")
    classes = data.get("classes")
    known = None if classes is None else set(_check_classes(classes, path)) | {AMBIGUOUS}
    default_fps = data.get("fps")
    videos: dict[str, ActionVideo] = {}
    for name, entry in data["database"].items():
        where = f"{path}: video {name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), list):
            raise ValueError(f"{where}: no \"annotations\" list")
        duration, fps, frames = entry.get("duration"), entry.get("fps", default_fps), entry.get("frames")
        duration = None if duration is None else _number(duration, where, "duration")
        fps = None if fps is None else _number(fps, where, "fps")
        if frames is not None:
            frames = _number(frames, where, "frames")
            if frames != int(frames) or frames < 0:
                raise ValueError(f"{where}: frames {entry['frames']!r} is not a count")
            frames = int(frames)
        file = entry.get("file")
        video = ActionVideo(str(name), str(entry.get("subset", "unknown")), [], duration, fps, frames,
                            None if file is None else path.parent / file)
        for k, ann in enumerate(entry["annotations"]):
            here = f"{where}: annotation {k}"
            if not isinstance(ann, dict) or not isinstance(ann.get("segment"), list | tuple) \
                    or len(ann["segment"]) != 2 or not isinstance(ann.get("label"), str):
                raise ValueError(f"{here}: expected {{\"segment\": [start, end], \"label\": name}}, got {ann!r}")
            if known is not None and ann["label"] not in known:
                raise ValueError(f"{here}: unknown label {ann['label']!r} (not in the file's \"classes\")")
            instance = _instance(ann["label"], *ann["segment"], here)
            if keep_ambiguous or instance.label != AMBIGUOUS:
                video.instances.append(instance)
        videos[video.name] = video
    return videos


def read_annotations(path, *, subset: str | None = None, keep_ambiguous: bool = False) -> dict[str, ActionVideo]:
    """Read action annotations (THUMOS14 csv layouts or ActivityNet-style json) -> ``{video name: ActionVideo}``.

    ``subset`` keeps only videos of that subset. Videos come sorted by name, instances by (start, end, label).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    videos = _read_json(path, keep_ambiguous) if head.startswith(b"{") else _read_csv(path, keep_ambiguous)
    out = {}
    for name in sorted(videos):
        video = videos[name]
        if subset is None or video.subset == subset:
            video.instances.sort(key=lambda a: (a.start, a.end, a.label))
            out[name] = video
    return out


def _check_classes(classes, path) -> list[str]:
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{path}: the class list must be a non-empty list of names, got {classes!r}")
    seen = set()
    for c in classes:
        if c in seen:
            raise ValueError(f"{path}: class {c!r} is listed twice")
        if c in (BACKGROUND, AMBIGUOUS):
            raise ValueError(f"{path}: {c!r} is not an action class")
        seen.add(c)
    return list(classes)


def read_classes(path=None, *, dataset: str = "THUMOS") -> list[str]:
    """The action classes (no Background, no Ambiguous), in the order of the model's output columns.

    ``path``: ``None`` -> ``THUMOS14_CLASSES``; a json with ``"classes"`` (memstream's synthetic data); TeSTra's
    ``data_info.json`` (``[dataset]["class_names"]`` less ``Background`` and ``Ambiguous``); or a text file with
    one class per line (blank lines and ``#`` comments skipped).
    """
    if path is None:
        return list(THUMOS14_CLASSES)
    path = Path(path)
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid json ({e})") from None
        if "classes" in data:
            return _check_classes(data["classes"], path)
        if isinstance(data.get(dataset), dict) and "class_names" in data[dataset]:
            names = data[dataset]["class_names"]
            return _check_classes([c for c in names if c not in (BACKGROUND, AMBIGUOUS)], f"{path} [{dataset}]")
        raise ValueError(f"{path}: neither \"classes\" nor [{dataset!r}][\"class_names\"] found")
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return _check_classes([line for line in lines if line], path)


def parse_result(entry, where: str) -> dict:
    """One detection, checked -> ``{"label", "score", "segment": [s, e], ("emitted")}`` with float values;
    ``where`` starts the message of the ``ValueError`` raised for a malformed entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        raise ValueError(f"{where}: expected {{\"label\", \"score\", \"segment\"}}, got {entry!r}")
    segment = entry.get("segment")
    if not isinstance(segment, list | tuple | np.ndarray) or len(segment) != 2:
        raise ValueError(f"{where}: segment must be [start, end], got {segment!r}")
    s, e = _number(segment[0], where, "segment start"), _number(segment[1], where, "segment end")
    if e < s:
        raise ValueError(f"{where}: segment [{s}, {e}] ends before it starts")
    out = {"label": entry["label"], "score": _number(entry.get("score"), where, "score"), "segment": [s, e]}
    if entry.get("emitted") is not None:
        out["emitted"] = _number(entry["emitted"], where, "emitted")
    return out


def write_activitynet_results(path, results: dict[str, list[dict]]) -> None:
    """Write detections as ActivityNet's result json.

    ``results[video]`` is a list of ``{"label", "score", "segment": [s, e]}`` (seconds), optionally ``"emitted"``
    (stream seconds at which an online detector output the event). Values are checked and written as floats.
    """
    path = Path(path)
    clean = {str(video): [parse_result(r, f"{path}: video {video}: result {k}") for k, r in enumerate(entries)]
             for video, entries in results.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "memstream", "results": clean, "external_data": {}}))


def read_activitynet_results(path) -> dict[str, list[dict]]:
    """Read an ActivityNet result json -> ``{video: [{"label", "score", "segment": [s, e], ("emitted")}]}``."""
    path = Path(path)
    data = _json_object(path, "results", "ActivityNet result file")
    out = {}
    for video, entries in data["results"].items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: video {video}: results must be a list")
        out[video] = [parse_result(r, f"{path}: video {video}: result {k}") for k, r in enumerate(entries)]
    return out


def _frame_centres(fps: float, num_frames: int) -> np.ndarray:
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if num_frames < 0 or num_frames != int(num_frames):
        raise ValueError(f"num_frames must be a count, got {num_frames}")
    return (np.arange(int(num_frames)) + 0.5) / fps  # (T,)


def frame_targets(video: ActionVideo, classes: list[str], fps: float, num_frames: int) -> np.ndarray:
    """Per-frame multi-hot targets -> ``(T, 1 + C)`` float32; column 0 is background (no class active).

    Frame ``i`` covers ``[i / fps, (i + 1) / fps)``; class ``c`` is active when an instance of ``c`` contains the
    frame's centre ``(i + 0.5) / fps`` in ``[start, end)``. ``Ambiguous`` instances set no column (use
    ``ambiguous_mask`` to leave those frames out of losses and metrics); any other unknown label is an error.
    """
    centres = _frame_centres(fps, num_frames)
    index = {c: k for k, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"classes has duplicates: {list(classes)}")
    targets = np.zeros((len(centres), 1 + len(classes)), np.float32)  # (T, 1 + C)
    for a in video.instances:
        if a.label == AMBIGUOUS:
            continue
        if a.label not in index:
            raise ValueError(f"video {video.name}: label {a.label!r} is not one of the classes {list(classes)}")
        targets[(centres >= a.start) & (centres < a.end), 1 + index[a.label]] = 1.0
    targets[:, 0] = targets[:, 1:].max(axis=1, initial=0.0) == 0
    return targets


def ambiguous_mask(video: ActionVideo, fps: float, num_frames: int) -> np.ndarray:
    """``(T,)`` bool: frames whose centre lies in an ``Ambiguous`` instance (read with ``keep_ambiguous=True``)."""
    centres = _frame_centres(fps, num_frames)
    mask = np.zeros(len(centres), bool)
    for a in video.instances:
        if a.label == AMBIGUOUS:
            mask |= (centres >= a.start) & (centres < a.end)
    return mask


class FeatureFolder:
    """Pre-extracted features, one ``(T, D)`` array per video in ``<root>/<video>.npy``, ``fps`` frames a second.

    Every video must have the same ``D``; ``dim`` is set by the first video loaded.
    """

    def __init__(self, root, fps: float):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"feature folder not found: {self.root}")
        try:
            self.fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"feature fps must be a positive number, got {fps!r}") from None
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"feature fps must be a positive number, got {fps!r}")
        self.dim: int | None = None

    def names(self) -> list[str]:
        """The videos with a feature file, sorted."""
        return sorted(p.stem for p in self.root.glob("*.npy") if p.is_file())

    def load(self, name: str) -> np.ndarray:
        """``name``'s features -> ``(T, D)`` float32, ``T >= 1``, all finite."""
        path = self.root / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"no features for video {name!r}: {path} does not exist")
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read a numpy array ({e})") from None
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{path}: features must be (T, D) with T >= 1, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"{path}: features must be real numbers, got dtype {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{path}: non-finite feature at frame {bad[0]}, channel {bad[1]}")
        if self.dim is None:
            self.dim = x.shape[1]
        elif x.shape[1] != self.dim:
            raise ValueError(f"{path}: {x.shape[1]} channels, other videos in {self.root} have {self.dim}")
        return x
