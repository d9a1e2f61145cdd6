"""MOTChallenge data: ``seqinfo.ini``, ground-truth / detection / result files, sequence folders, frames.

Why: tracking is trained, run and judged on MOTChallenge folders (MOT15/16/17/20, DanceTrack use the same layout),
and TrackEval reads the same files; one reader gives every tool the same ``(N, 10)`` rows and one writer makes
result files that TrackEval and the MOTChallenge server accept.

A sequence folder::

    <seq>/seqinfo.ini        [Sequence] name, imDir, frameRate, seqLength, imWidth, imHeight, imExt
    <seq>/img1/000001.jpg    frames, 1-based, six digits (absent in ground-truth-only copies)
    <seq>/gt/gt.txt          ground truth: frame,id,x,y,w,h,conf,class,visibility[,z]
    <seq>/det/det.txt        public detections: frame,-1,x,y,w,h,score,-1,-1,-1

Rows are ``MOT_COLUMNS``: 1-based ``frame``, track ``id`` (-1 for detections), box top-left ``x, y`` and size
``w, h`` in pixels, ``conf`` (ground truth: 0 marks a box to ignore; detections: score), ``cls`` (MOT16/17/20
class: 1 pedestrian, 2/7/8/12 distractors), ``vis`` (visibility 0..1), ``z`` (unused, -1). Files with fewer
columns (MOT15 results have 6-10) get -1 in the missing ones. Files may be comma or whitespace separated.

Real MOT15 ``seqinfo.ini`` files can hold only ``name`` and ``seqLength``: a missing ``frameRate`` is taken from
``default_frame_rate`` (25, the frame rate of the TUD sequences and most of MOT15), missing sizes are 0 (unknown).
Bad input raises ``ValueError`` naming the file and the line.
"""

from __future__ import annotations

import configparser
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MOT_COLUMNS = ("frame", "id", "x", "y", "w", "h", "conf", "cls", "vis", "z")
_SPLIT = re.compile(r"[,\s]+")
_SEQINFO_KEYS = ("name", "imDir", "frameRate", "seqLength", "imWidth", "imHeight", "imExt")


@dataclass(frozen=True)
class SeqInfo:
    """A sequence's ``seqinfo.ini``: ``length`` frames at ``frame_rate`` fps; ``width``/``height`` 0 = unknown."""

    name: str
    frame_rate: float
    length: int
    width: int
    height: int
    im_dir: str = "img1"
    im_ext: str = ".jpg"


def read_seqinfo(path, default_frame_rate: float = 25.0) -> SeqInfo:
    """Read ``seqinfo.ini`` (the file or its folder). ``seqLength`` is required; a missing ``name`` is the folder's
    name, a missing ``frameRate`` is ``default_frame_rate``, missing sizes are 0."""
    path = Path(path)
    if path.is_dir():
        path = path / "seqinfo.ini"
    if not path.is_file():
        raise FileNotFoundError(f"seqinfo.ini not found: {path}")
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ValueError(f"{path}: not a valid ini file ({e.message.splitlines()[0]})") from None
    if not parser.has_section("Sequence"):
        raise ValueError(f"{path}: no [Sequence] section")
    section = parser["Sequence"]  # configparser keys are case-insensitive

    def number(key: str, default, kind):
        text = section.get(key)
        if text is None or not text.strip():
            if default is None:
                raise ValueError(f"{path}: [Sequence] has no {key}")
            return default
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{path}: {key}={text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (kind is int and value != int(value)):
            raise ValueError(f"{path}: {key}={text!r} must be a finite {'count' if kind is int else 'number'} >= 0")
        return kind(value)

    frame_rate = number("frameRate", float(default_frame_rate), float)
    if frame_rate <= 0:
        raise ValueError(f"{path}: frameRate must be positive, got {frame_rate}")
    ext = section.get("imExt", ".jpg").strip() or ".jpg"
    return SeqInfo(name=section.get("name", "").strip() or path.parent.name, frame_rate=frame_rate,
                   length=number("seqLength", None, int), width=number("imWidth", 0, int),
                   height=number("imHeight", 0, int), im_dir=section.get("imDir", "img1").strip() or "img1",
                   im_ext=ext if ext.startswith(".") else f".{ext}")


def write_seqinfo(path, info: SeqInfo) -> Path:
    """Write ``info`` as a standard ``seqinfo.ini`` (``path``: the file or its folder, created as needed)."""
    path = Path(path)
    if path.suffix != ".ini":
        path = path / "seqinfo.ini"
    rate = int(info.frame_rate) if float(info.frame_rate).is_integer() else info.frame_rate
    values = (info.name, info.im_dir, rate, info.length, info.width, info.height, info.im_ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[Sequence]\n" + "".join(f"{k}={v}\n" for k, v in zip(_SEQINFO_KEYS, values, strict=True)))
    return path


def _check_rows(rows: np.ndarray, where, lines: np.ndarray | None = None) -> None:
    """ValueError for the first bad row of ``rows (N, 10)``: non-finite, frame < 1 or fractional, fractional id,
    w or h <= 0. ``lines[i]`` is row i's line in the file ``where`` (else rows are named by index)."""
    bad_value = ~np.isfinite(rows).all(axis=1)
    problems = (
        (bad_value, "NaN or infinite value"),
        (~bad_value & ((rows[:, 0] < 1) | (rows[:, 0] != np.round(rows[:, 0]))), "frame must be an integer >= 1"),
        (~bad_value & (rows[:, 1] != np.round(rows[:, 1])), "id must be an integer"),
        (~bad_value & ((rows[:, 4] <= 0) | (rows[:, 5] <= 0)), "box width and height must be > 0"),
    )
    first = min(((int(np.argmax(mask)), text) for mask, text in problems if mask.any()), default=None)
    if first is not None:
        i, text = first
        place = f"line {lines[i]}" if lines is not None else f"row {i}"
        raise ValueError(f"{where}: {place}: {text}: {rows[i].tolist()}")


def _sort_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]  # stable: by frame, then id, file order otherwise


def read_mot_file(path) -> np.ndarray:
    """A ground-truth, detection or result file -> ``(N, 10)`` float64 rows in ``MOT_COLUMNS`` order, sorted by
    (frame, id); missing trailing columns are -1. An empty file gives ``(0, 10)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MOTChallenge file not found: {path}")
    values, lines = [], []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            fields = [x for x in _SPLIT.split(line.strip()) if x]
            if not fields:
                continue
            if not 6 <= len(fields) <= 10:
                raise ValueError(f"{path}: line {number}: expected 6 to 10 columns "
                                 f"({','.join(MOT_COLUMNS)}), got {len(fields)}: {line.strip()!r}")
            try:
                row = [float(x) for x in fields]
            except ValueError:
                raise ValueError(f"{path}: line {number}: non-numeric value in {line.strip()!r}") from None
            values.append(row + [-1.0] * (10 - len(row)))
            lines.append(number)
    rows = np.array(values, dtype=np.float64).reshape(-1, 10)
    _check_rows(rows, path, np.array(lines))
    return _sort_rows(rows)


def write_results(path, rows) -> Path:
    """Write tracks in MOTChallenge result format ``frame,id,x,y,w,h,conf,-1,-1,-1``, sorted by (frame, id).

    ``rows``: ``(N, >= 6)`` in ``MOT_COLUMNS`` order (``conf`` -1 when there is no 7th column). Frame and id are
    written as integers, boxes with 2 decimals, conf with 4. Parent folders are created.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        rows = rows.reshape(0, 10)
    if rows.ndim != 2 or rows.shape[1] < 6:
        raise ValueError(f"{path}: result rows must be (N, >= 6) frame,id,x,y,w,h[,conf], got shape {rows.shape}")
    conf = rows[:, 6] if rows.shape[1] > 6 else np.full(len(rows), -1.0)
    full = np.column_stack([rows[:, :6], conf, np.full((len(rows), 3), -1.0)])  # (N, 10)
    _check_rows(full, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(format_result_rows(_sort_rows(full)))
    return path


def format_result_rows(rows: np.ndarray) -> str:
    """(N, >= 7) frame,id,x,y,w,h,conf rows -> their MOTChallenge result lines (ints, 2 and 4 decimals)."""
    return "".join(f"{int(fr)},{int(tid)},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{c:.4f},-1,-1,-1\n"
                   for fr, tid, x, y, w, h, c, *_ in rows)


def rows_by_frame(rows) -> dict[int, np.ndarray]:
    """Group ``(N, C)`` rows by their frame (column 0) -> ``{frame: (n_frame, C)}``, frames ascending, rows in
    their input order within a frame."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        return {}
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    frames, starts = np.unique(rows[:, 0], return_index=True)
    return {int(f): part for f, part in zip(frames, np.split(rows, starts[1:]), strict=True)}


@dataclass
class MotSequence:
    """A MOTChallenge sequence: its folder, ``info``, ground truth and public detections (``(N, 10)`` rows from
    :func:`read_mot_file`, ``None`` where the folder has no such file)."""

    path: Path
    info: SeqInfo
    gt: np.ndarray | None
    det: np.ndarray | None

    def image_path(self, frame: int) -> Path:
        """The image of 1-based ``frame``: ``<path>/<im_dir>/000001.jpg``."""
        return self.path / self.info.im_dir / f"{int(frame):06d}{self.info.im_ext}"

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame, image)`` for frames 1..length; ``image`` is ``(H, W, 3)`` uint8 BGR (OpenCV)."""
        import cv2

        folder = self.path / self.info.im_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"sequence {self.info.name}: no images, {folder} does not exist (a copy with "
                                    "ground truth or detections only)")
        for frame in range(1, self.info.length + 1):
            path = self.image_path(frame)
            if not path.is_file():
                raise FileNotFoundError(f"sequence {self.info.name}: frame {frame} missing: {path}")
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"sequence {self.info.name}: cannot decode {path}")
            yield frame, image


def _is_sequence(folder: Path) -> bool:
    return (folder / "seqinfo.ini").is_file() or (folder / "gt").is_dir() or (folder / "det").is_dir()


def read_sequence(seq_dir, default_frame_rate: float = 25.0) -> MotSequence:
    """Read a sequence folder: ``seqinfo.ini``, ``gt/gt.txt`` and ``det/det.txt`` where present. Without
    ``seqinfo.ini`` the name is the folder's name and the length the last frame in gt/det."""
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise FileNotFoundError(f"sequence folder not found: {seq_dir}")
    gt_file, det_file = seq_dir / "gt" / "gt.txt", seq_dir / "det" / "det.txt"
    gt = read_mot_file(gt_file) if gt_file.is_file() else None
    det = read_mot_file(det_file) if det_file.is_file() else None
    if (seq_dir / "seqinfo.ini").is_file():
        info = read_seqinfo(seq_dir / "seqinfo.ini", default_frame_rate)
    elif gt is None and det is None:
        raise FileNotFoundError(f"{seq_dir} is not a MOTChallenge sequence: no seqinfo.ini, gt/gt.txt or det/det.txt")
    else:
        last = [int(r[:, 0].max()) for r in (gt, det) if r is not None and len(r)]
        info = SeqInfo(seq_dir.name, float(default_frame_rate), max(last, default=0), 0, 0)
    return MotSequence(seq_dir, info, gt, det)


def find_sequences(root) -> list[Path]:
    """Sequence folders (with ``seqinfo.ini``, ``gt/`` or ``det/``): ``root`` itself, or those up to two levels
    below it (``MOT17/train/<seq>``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"sequence folder not found: {root}")
    if _is_sequence(root):
        return [root]
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if _is_sequence(child):
            found.append(child)
        else:
            found.extend(g for g in sorted(child.iterdir()) if g.is_dir() and _is_sequence(g))
    if not found:
        raise FileNotFoundError(f"no MOTChallenge sequences in {root} (folders with seqinfo.ini, gt/ or det/, "
                                "searched two levels deep)")
    return sorted(found)
