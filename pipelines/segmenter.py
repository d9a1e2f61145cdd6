"""Segmenters: packets of any size in, fixed-size segments with a validity mask out.

Output never depends on how the input was packetised: audio is re-chunked into fixed raw blocks
before down-mixing and resampling, so 10 ms and 1 s packets run the very same arithmetic; video
frames are counted one by one. The last partial segment is padded and its mask marks the padding.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from memstream.pipelines.resample import StreamingResampler

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """One fixed-size segment of a stream.

    Attributes:
        data: audio (T,) float32 mono samples at ``rate``; video (T, H, W, 3) uint8 RGB frames.
        valid: (T,) bool, True for real samples/frames (a prefix; the rest is padding).
        start: stream time of ``data[0]`` in seconds.
        rate: samples or frames per second.
        index: segment number in the stream, from 0.
        times: video only, (T,) stream time of each frame (NaN for padding).
        num_valid: the number of True in ``valid`` (counted when not given); ``duration``: its seconds.
    """

    data: np.ndarray
    valid: np.ndarray
    start: float
    rate: float
    index: int
    times: np.ndarray | None = None
    # Read by the runner, the decoders and the sinks, several times per segment: counted once, when the
    # segment is made (on its reader's thread), unless its maker knows it; ``valid`` never changes.
    num_valid: int | None = field(default=None, repr=False, compare=False)
    duration: float = field(init=False, repr=False, compare=False)  # seconds of real samples/frames

    def __post_init__(self) -> None:
        if self.num_valid is None:
            self.num_valid = int(np.count_nonzero(self.valid))
        self.duration = self.num_valid / self.rate


class AudioSegmenter:
    """Audio packets (n, C) float32 at ``native_rate`` -> mono segments of ``segment_samples`` at ``rate``.

    Args:
        segment_samples: samples per segment at the model's rate.
        rate: the model's sample rate.
        native_rate: the source's sample rate.
        channels: the source's channel count (down-mixed to mono by averaging).
        block_seconds: raw re-chunking block; any fixed value gives packet-size invariance.
        gap_tolerance: seconds; a packet whose time lies further than this beyond the end of the samples received
            so far (audio lost upstream, e.g. a microphone's overflow) is preceded by silence for the gap, so the
            stream's times stay right and equal those of the same stream with the loss replaced by silence.
        max_gap: seconds; a longer jump (a clock reset, a source paused for hours) is not filled but logged, and
            the stream goes on as if contiguous: hours of silence would run through the model for nothing.

    ``push(samples, time)``: packets stamped by sample count (every memstream source) fill exactly the lost
    samples; without a time, samples are taken as contiguous.
    """

    def __init__(self, segment_samples: int, rate: int, native_rate: int, channels: int = 1,
                 block_seconds: float = 0.02, gap_tolerance: float = 0.005, max_gap: float = 60.0) -> None:
        if segment_samples <= 0:
            raise ValueError(f"segment_samples={segment_samples} must be positive")
        if channels <= 0:
            raise ValueError(f"channels={channels} must be positive")
        self.segment_samples = segment_samples
        self.rate = rate
        self.native_rate = native_rate
        self.channels = channels
        self.block = max(1, int(round(native_rate * block_seconds)))
        self.resampler = StreamingResampler(native_rate, rate, channels=1)
        self._raw: list[np.ndarray] = []
        self._raw_len = 0
        # Mono at the model's rate: down-mixing and resampling are the identity, elementwise, so packets go
        # straight to the output with no re-chunking (the same samples, whatever the packet sizes).
        self._direct = channels == 1 and native_rate == rate
        self._out: deque[np.ndarray] = deque()  # resampled mono pieces not yet in a segment
        self._out_len = 0
        self._all_valid = np.ones(segment_samples, dtype=bool)
        self._all_valid.flags.writeable = False  # shared by every full segment of the stream
        self._index = 0
        self._emitted = 0
        self.gap_tolerance, self.max_gap = gap_tolerance, max_gap
        self._origin: float | None = None  # time of the first packet
        self._received = 0  # native samples received, gaps filled included
        self.filled = 0  # native samples of silence put in for gaps

    def _downmix(self, raw: np.ndarray) -> np.ndarray:
        return raw.mean(axis=1, dtype=np.float32)[None, :] if raw.shape[1] > 1 else raw.T.astype(np.float32)

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._out.append(samples)
            self._out_len += len(samples)

    def _take(self, final: bool) -> list[Segment]:
        # Few numpy calls per segment: each one on more than a few hundred elements hands the GIL to another thread
        # (the model loop, other readers), and getting it back costs both threads their caches.
        segments = []
        t = self.segment_samples
        while self._out_len >= t or (final and self._out_len > 0):
            n = min(t, self._out_len)
            head = self._out[0]
            if len(head) >= t:
                # A whole segment inside one piece: a view, no copy. Every piece is this segmenter's own array
                # (a copy of the packet, or made by the down-mix and the resampler), never a source's buffer.
                data = head[:t]
                if len(head) == t:
                    self._out.popleft()
                else:
                    self._out[0] = head[t:]
            else:
                data = np.empty(t, dtype=np.float32)
                filled = 0
                while filled < n:
                    head = self._out[0]
                    k = min(len(head), n - filled)
                    data[filled:filled + k] = head[:k]
                    filled += k
                    if k == len(head):
                        self._out.popleft()
                    else:
                        self._out[0] = head[k:]
            if n < t:
                data[n:] = 0.0
                valid = np.arange(t) < n
            else:
                valid = self._all_valid
            segments.append(Segment(data, valid, self._emitted / self.rate, float(self.rate), self._index,
                                    num_valid=n))
            self._out_len -= n
            self._index += 1
            self._emitted += n
        return segments

    def push(self, samples: np.ndarray, time: float | None = None) -> list[Segment]:
        """samples: (n, C) or (n,) float32, time: the packet's stream time in seconds (None: right after the
        previous packet) -> the segments completed by them."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.shape[1] != self.channels:
            raise ValueError(f"audio packet has {samples.shape[1]} channels, the stream has {self.channels}")
        if time is not None:
            gap = self._gap(time)
            if gap:
                self.filled += gap
                return self._push(np.zeros((gap, self.channels), np.float32)) + self._push(samples)
        return self._push(samples)

    def _gap(self, time: float) -> int:
        """Native samples of silence to put before a packet stamped ``time`` (0: none)."""
        if self._origin is None:
            self._origin = time
        gap = int(round((time - self._origin) * self.native_rate)) - self._received
        if gap > self.max_gap * self.native_rate:
            log.warning("audio packet at %.3f s comes %.1f s after the previous one's end; taken as contiguous "
                        "(gaps up to %g s are filled with silence)", time, gap / self.native_rate, self.max_gap)
            self._origin += gap / self.native_rate  # later packets are measured from this one on
            return 0
        return gap if gap > self.gap_tolerance * self.native_rate else 0

    def _push(self, samples: np.ndarray) -> list[Segment]:
        self._received += len(samples)
        if self._direct:
            self._append(samples[:, 0].copy())  # kept past this call: a source may reuse its packet buffer
            return self._take(final=False)
        self._raw.append(samples.copy())  # may wait here for the next packet: the caller may reuse its buffer
        self._raw_len += len(samples)
        if self._raw_len < self.block:
            return []
        raw = np.concatenate(self._raw)
        whole = (len(raw) // self.block) * self.block
        rest = raw[whole:]
        self._raw, self._raw_len = ([rest], len(rest)) if len(rest) else ([], 0)
        for i in range(0, whole, self.block):
            self._append(self.resampler.push(self._downmix(raw[i:i + self.block]))[0])
        return self._take(final=False)

    def flush(self) -> list[Segment]:
        """End of stream: the remaining samples, the last segment padded."""
        if self._raw_len:
            raw = np.concatenate(self._raw)
            self._append(self.resampler.push(self._downmix(raw))[0])
            self._raw, self._raw_len = [], 0
        self._append(self.resampler.flush()[0])
        return self._take(final=True)


class VideoSegmenter:
    """Video frames (H, W, 3) uint8 -> segments of ``frames_per_segment`` frames at ``size``.

    Args:
        frames_per_segment: frames per segment.
        size: (height, width) every frame is resized to; None keeps the first frame's size, and a
            resolution change later in the stream is resized to it (logged once).
        rate: the source's frame rate.
        sample_fps: keep frames at this rate (by their timestamps: the first frame at or after each tick of
            ``1 / sample_fps`` from the stream's first frame); None keeps every frame. Segments then run at
            ``sample_fps``. A source slower than ``sample_fps`` keeps all its frames.
    """

    def __init__(self, frames_per_segment: int, size: tuple[int, int] | None = None, rate: float = 30.0,
                 sample_fps: float | None = None) -> None:
        if frames_per_segment <= 0:
            raise ValueError(f"frames_per_segment={frames_per_segment} must be positive")
        if sample_fps is not None and not sample_fps > 0:
            raise ValueError(f"sample_fps={sample_fps} must be positive")
        self.frames_per_segment = frames_per_segment
        self.size = size
        self.rate = float(sample_fps) if sample_fps else rate
        self.sample_fps = sample_fps
        self._next: float | None = None  # the next sampling tick (stream time)
        self._frames: list[np.ndarray] = []
        self._times: list[float] = []
        self._index = 0
        self._warned = False
        self._native: tuple[int, int] | None = None  # the source's size of the previous frame

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        native = frame.shape[:2]
        if self.size is None:
            self.size = native
        if self._native is not None and native != self._native and not self._warned:
            log.warning("frame size changed from %s to %s mid-stream; resizing to %s", self._native, native, self.size)
            self._warned = True
        self._native = native
        if native != tuple(self.size):
            frame = cv2.resize(frame, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return frame

    def _segment(self) -> Segment:
        t, n = self.frames_per_segment, len(self._frames)
        data = np.zeros((t, *self._frames[0].shape), dtype=np.uint8)
        data[:n] = np.stack(self._frames)
        times = np.full(t, np.nan)
        times[:n] = self._times
        seg = Segment(data, np.arange(t) < n, self._times[0], self.rate, self._index, times, num_valid=n)
        self._frames, self._times = [], []
        self._index += 1
        return seg

    def push(self, frame: np.ndarray, time: float) -> list[Segment]:
        """One frame with its stream time -> the segment it completes, if any."""
        if self.sample_fps:
            period = 1.0 / self.sample_fps
            if self._next is None:
                self._next = float(time)
            # A quarter period of slack: container timestamps jitter around the nominal frame times.
            if time < self._next - 0.25 * period:
                return []
            while self._next <= time + 0.25 * period:
                self._next += period
        self._frames.append(self._fit(frame))
        self._times.append(float(time))
        return [self._segment()] if len(self._frames) == self.frames_per_segment else []

    def flush(self) -> list[Segment]:
        return [self._segment()] if self._frames else []


def read_video(path, fps: float | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A video file decoded as the runtime does (memstream's source, resampled to ``fps`` or every frame when
    None, resized to ``size`` x ``size`` with area interpolation) -> frames (N, size, size, 3) uint8 RGB,
    times (N,) seconds. For training and evaluation on the frames a live run would see."""
    from memstream.pipelines.sources import open_source

    frames, times = [], []
    with open_source(str(path), "video") as source:
        segmenter = VideoSegmenter(1, (size, size), fps or source.info.rate or 30.0, sample_fps=fps)
        for packet in source:
            for seg in segmenter.push(packet.data, packet.time):
                frames.append(seg.data[0])
                times.append(seg.start)
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(frames), np.asarray(times)
