"""The contracts between the runtime's parts: packets, sources, tasks, decoders, sinks.

    Source --Packet--> Segmenter --Segment--> Task.encode -> Backend.step -> Decoder --events--> Sinks

A *source* knows nothing of models; a *task* knows nothing of where packets come from; the runner
(:mod:`memstream.pipelines.runner`) knows no task's internals.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from memstream.pipelines.segmenter import Segment
from torch import Tensor

Kind = Literal["audio", "video"]
Event = dict[str, Any]


class SourceError(RuntimeError):
    """A source cannot be opened or read: the message names the source and the cause, in one line."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause


@dataclass
class Packet:
    """A piece of a stream as decoded.

    Attributes:
        data: video: one frame (H, W, 3) uint8 RGB; audio: (n, C) float32 samples in [-1, 1].
        time: stream time in seconds of the frame / of the first sample.
    """

    data: np.ndarray
    time: float


@dataclass
class SourceInfo:
    """What a source reports about itself once opened (native rates, before any conversion)."""

    kind: Kind
    rate: float            # frames per second (video) or samples per second (audio)
    channels: int = 1      # audio channels
    size: tuple[int, int] | None = None  # video (height, width) of the first frame
    live: bool = False     # camera, microphone, network stream: reconnects, may drop
    duration: float | None = None  # seconds, where the container says


@dataclass
class SourceStats:
    packets: int = 0
    items: int = 0         # frames or samples delivered
    dropped: int = 0       # frames dropped (latest mode, or gaps in live timestamps)
    duplicated: int = 0    # frames whose timestamp did not advance
    reconnects: int = 0
    skipped: int = 0       # unreadable frames/images, non-finite samples replaced by 0
    errors: list[str] = field(default_factory=list)


class Source(abc.ABC):
    """A stream of packets. Use as a context manager or call open()/close().

    ``open`` raises :class:`SourceError` for a missing file, an unreadable container, a refused
    connection, an absent device. ``__iter__`` yields packets until the stream ends; live sources
    reconnect inside it (interval, attempt limit) and end cleanly past the limit. Iteration never
    blocks forever.
    """

    name: str
    info: SourceInfo
    stats: SourceStats
    # True where reading never waits for the world outside the process and costs little per packet (data in memory,
    # a local audio file): the runner then reads the source on its own loop thread when the stream needs its next
    # segment, instead of giving it a reader thread. A reader thread takes the GIL from the model loop for every
    # packet; with many streams those hand-overs cost the loop more than the reading itself.
    read_on_loop: bool = False

    @abc.abstractmethod
    def open(self) -> SourceInfo: ...

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Packet]: ...

    def close(self) -> None:  # noqa: B027 - sources without resources need nothing
        pass

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FailedSource(Source):
    """A source that could not be opened, kept as a stream so the run records it: ``open`` raises its error."""

    def __init__(self, error: SourceError) -> None:
        self.name, self.error = error.source, error
        self.info = None  # type: ignore[assignment]
        self.stats = SourceStats(errors=[error.cause])

    def open(self) -> SourceInfo:
        raise self.error

    def __iter__(self) -> Iterator[Packet]:
        raise self.error


class Decoder(Protocol):
    """Per-stream, plain Python: model outputs of one segment -> events (never revised once emitted)."""

    def update(self, outputs: Any, segment: Segment) -> list[Event]: ...

    def flush(self) -> list[Event]: ...


class Task(Protocol):
    """What the runner needs from a task (ASR, actions, tracking, anomaly, or the bare core).

    Attributes:
        name: task name (``asr``, ``action``, ...).
        kind: the media it consumes.
        rate: the model's sample rate (audio) or frame rate it samples video at.
        segment_size: samples (audio) or frames (video) per segment.
        frame_size: (height, width) frames are resized to (video), else None.
    """

    name: str
    kind: Kind
    rate: float
    segment_size: int
    frame_size: tuple[int, int] | None

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        """A batch of segments -> (model input x: (B, T, ...), mask: (B, T) bool)."""
        ...

    def split(self, outputs: Any, index: int) -> Any:
        """The outputs of batch row ``index`` (what that stream's decoder gets). The runner passes the step's
        outputs as numpy arrays (:func:`memstream.export.to_numpy`), converted once per step."""
        ...

    def new_decoder(self, stream_id: str) -> Decoder: ...


class Sink(Protocol):
    """Receives events (and optionally segments, for overlays); must survive being closed twice."""

    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...
