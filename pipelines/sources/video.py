"""Recorded video: files (OpenCV's FFmpeg backend, or PyAV) and image folders.

Frames come out as (H, W, 3) uint8 RGB with their stream time in seconds: the container's
timestamps where they advance, else the previous time + 1/fps (counted as duplicated when a
timestamp repeats). Resolution changes are passed through as decoded (the segmenter resizes);
note that OpenCV's FFmpeg backend itself scales every frame to the first frame's size, PyAV does not.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from memstream.pipelines.sources.audio import SOUNDFILE_SUFFIXES
from memstream.pipelines.sources.common import BaseSource, SkipLog, check_file, log, one_line
from memstream.pipelines.streams import Packet, SourceError, SourceInfo

# Containers that hold audio only: opened as video they fail with a misleading "not a video file, or corrupt".
# Those soundfile reads, but .ogg (it may hold Theora video), and those only FFmpeg or raw PCM read.
AUDIO_ONLY_SUFFIXES = (SOUNDFILE_SUFFIXES - {".ogg"}) | {".mp3", ".aac", ".pcm", ".raw"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2"}
DEFAULT_FPS = 30.0


def pyav_frames(container, stream, skips: SkipLog) -> Iterator:
    """The decoded frames (``av.VideoFrame``) of a PyAV video ``stream``, packet by packet. A damaged packet is
    skipped, counted and logged by ``skips``; the stream goes on (files and live URLs alike)."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            skips(f"skipped an undecodable packet at {packet.pts}: {one_line(e)}")
            continue
        yield from frames


def _valid_fps(fps: float | None, name: str) -> float:
    if fps is not None and math.isfinite(fps) and 0 < fps <= 1000:
        return float(fps)
    log.warning("%s: the container gives no usable frame rate (%s); assuming %g fps", name, fps, DEFAULT_FPS)
    return DEFAULT_FPS


class _Timeline:
    """Frame times: container timestamps (s) where they advance, else previous + 1/fps."""

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        self.last: float | None = None
        self.duplicated = 0

    def __call__(self, stamp: float | None) -> float:
        ok = stamp is not None and math.isfinite(stamp) and stamp >= 0
        if self.last is None:
            time = stamp if ok else 0.0
        elif ok and stamp > self.last:
            time = stamp
        else:
            if ok and abs(stamp - self.last) < 1e-9:
                self.duplicated += 1
            time = self.last + self.interval
        self.last = time
        return time


class VideoFileSource(BaseSource):
    """A video file decoded frame by frame.

    Args:
        path: any container FFmpeg reads (mp4, mkv, avi, mov, ts, webm, ...).
        backend: ``"opencv"`` (``cv2.CAP_FFMPEG``) or ``"pyav"`` (keeps each frame's own size).
        name: how messages name the source (default: the path).

    Packets: data (H, W, 3) uint8 RGB, time in s from the container's timestamps.
    """

    def __init__(self, path: str | Path, backend: str = "opencv", name: str | None = None) -> None:
        super().__init__(name or str(path))
        if backend not in ("opencv", "pyav"):
            raise SourceError(self.name, f"backend={backend!r} is not one of 'opencv', 'pyav'")
        self.path = Path(path)
        self.backend = backend
        self._cap = None
        self._container = None
        self._frames: Iterator[tuple[np.ndarray, float | None]] | None = None
        self._first: tuple[np.ndarray, float | None] | None = None

    def _open(self) -> SourceInfo:
        path = check_file(self.name, self.path)
        if path.suffix.lower() in AUDIO_ONLY_SUFFIXES:
            raise SourceError(self.name, f"an audio file ({path.suffix}) cannot feed a video task (a run takes one "
                                         f"kind: --kind, or that of its first source)")
        fps, count, duration = self._open_pyav(path) if self.backend == "pyav" else self._open_opencv(path)
        self._first = next(self._frames, None)
        if self._first is None:
            raise SourceError(self.name, "no decodable video frame (corrupt file, or no video track)")
        if duration is None and count > 0:
            duration = count / fps
        self._expected = count
        return SourceInfo("video", fps, size=self._first[0].shape[:2], duration=duration)

    def _open_opencv(self, path: Path) -> tuple[float, int, float | None]:
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise SourceError(self.name, "cannot open as video (not a video file, or corrupt)")
        fps = _valid_fps(self._cap.get(cv2.CAP_PROP_FPS), self.name)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._frames = self._read_opencv()
        return fps, int(count) if math.isfinite(count) and count > 0 else 0, None

    def _read_opencv(self) -> Iterator[tuple[np.ndarray, float | None]]:
        while True:
            ok, frame = self._cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def _open_pyav(self, path: Path) -> tuple[float, int, float | None]:
        import av

        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise SourceError(self.name, f"cannot open as video: {one_line(e)}") from e
        if not self._container.streams.video:
            raise SourceError(self.name, "no video track")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = _valid_fps(float(rate) if rate else None, self.name)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1e6
        self._frames = self._read_pyav(stream)
        return fps, int(stream.frames or 0), duration

    def _read_pyav(self, stream) -> Iterator[tuple[np.ndarray, float | None]]:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for frame in pyav_frames(self._container, stream, SkipLog(self.name, self.stats)):
            yield frame.to_ndarray(format="rgb24"), (frame.time - start if frame.time is not None else None)

    def _packets(self) -> Iterator[Packet]:
        timeline = _Timeline(self.info.rate)
        first, self._first = self._first, None
        last = None  # the last frame's own time stamp
        for frame, stamp in itertools.chain([first] if first is not None else [], self._frames):
            yield Packet(frame, timeline(stamp))
            self.stats.duplicated = timeline.duplicated
            last = stamp if stamp is not None else last
        delivered = self.stats.items + self.stats.skipped
        # The count is the container's, or (MKV, WebM) its duration x the nominal rate: a variable-rate video
        # holds fewer frames than that and still reaches its end, so it ended early only if its time stamps did too.
        expected_end = self._expected / self.info.rate
        reached_end = last is not None and last + 1 / self.info.rate >= 0.9 * expected_end
        if self._expected > 0 and delivered < 0.9 * self._expected - 1 and not reached_end:
            self.fail(f"stream ended early: {delivered} of {self._expected} frames decoded (truncated or corrupt?)")

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frames = None


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageFolderSource(BaseSource):
    """The images of a folder as a video at ``fps``, in natural sort order (``2.png`` before ``10.png``).

    An unreadable image is a logged skip (``stats.skipped``) and leaves a gap of one frame in time.
    Packets: data (H, W, 3) uint8 RGB, time = index / fps.
    """

    def __init__(self, directory: str | Path, fps: float = DEFAULT_FPS, name: str | None = None) -> None:
        super().__init__(name or str(directory))
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise SourceError(self.name, f"fps={fps!r} must be a positive number")
        self.directory = Path(directory)
        self.fps = float(fps)
        self._files: list[Path] = []

    def _open(self) -> SourceInfo:
        if not self.directory.is_dir():
            raise SourceError(self.name, "no such directory" if not self.directory.exists() else "not a directory")
        files = sorted((p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=_natural_key)
        if not files:
            raise SourceError(self.name, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        size = None
        for p in files:
            image = self._read(p, log_skip=False)
            if image is not None:
                size = image.shape[:2]
                break
        if size is None:
            raise SourceError(self.name, f"none of the {len(files)} images can be read")
        self._files = files
        self._skips = SkipLog(self.name, self.stats)  # a folder of thousands of broken images must not flood the log
        return SourceInfo("video", self.fps, size=size, duration=len(files) / self.fps)

    def _read(self, path: Path, log_skip: bool = True) -> np.ndarray | None:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            if log_skip:
                self._skips(f"skipped unreadable image {path.name}")
            return None
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _packets(self) -> Iterator[Packet]:
        for index, path in enumerate(self._files):
            image = self._read(path)
            if image is not None:
                yield Packet(image, index / self.fps)
