"""Sinks: where a run's events go, and the run summary.

Every event a sink receives is a flat JSON-able dict with at least ``stream`` (the stream id) and
``time`` (stream time in seconds); the runner adds both. A sink may also offer
``write_segment(stream, segment, events)`` (it then receives each segment with the events it produced,
for overlays), ``end_stream(stream)`` (a stream has left the run and its last events are written) and
``finish(summary)`` (it then receives the run summary just before ``close``) and ``flush()`` (the runner
calls it after every step and after a stream leaves, so what the sink buffers goes out once per step rather than
once per event). Every sink survives being closed twice.

- :class:`JsonlSink`: JSON Lines, one event per line, written out at every ``flush()`` (a killed run keeps every
  finished step's lines).
- :class:`TerminalSink`: a live view (rich) of each stream's last event and rate; one plain status line
  per second when the output is not a terminal.
- :class:`OverlayVideoSink`: the video segments with the task's ``draw(frame, events)`` on them (OpenCV).
- :class:`SummarySink` + :class:`RunStats`: ``summary.json`` with counts, latency and real-time factor.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

Event = dict[str, Any]


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays -> Python numbers and lists; non-finite floats -> None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return _plain(value.tolist())
    if hasattr(value, "tolist"):  # torch.Tensor, without importing torch
        return _plain(value.tolist())
    return value


_STRICT = json.JSONEncoder(allow_nan=False)  # json.dumps with any option builds a new encoder per call


def to_json(obj: Any, **kwargs) -> str:
    """Strict JSON (no NaN/Infinity) of events and summaries holding numpy or torch values."""
    encode = json.JSONEncoder(allow_nan=False, **kwargs).encode if kwargs else _STRICT.encode
    try:
        return encode(obj)  # plain Python values: the fast path
    except (TypeError, ValueError):
        return encode(_plain(obj))


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """Seconds -> {"p50": ms, "p99": ms} (None when there is nothing to measure)."""
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(1e3 * float(p50), 3), "p99": round(1e3 * float(p99), 3)}


class Durations:
    """Durations in seconds in bounded memory, for runs that go on for days: every value is kept until there
    are ``EXACT`` of them (percentiles as numpy's), then they are counted in log-spaced bins 1 % wide from 1 us
    to 10^4 s (percentiles within 0.5 %). ``count`` and ``total`` stay exact."""

    EXACT = 4096
    LOW, HIGH, RATIO = 1e-6, 1e4, 1.01

    def __init__(self) -> None:
        self.values: list[float] = []
        self.bins: np.ndarray | None = None  # counts per bin, once the values have overflowed
        self.count, self.total = 0, 0.0

    def _index(self, seconds: float) -> int:
        """The bin of one duration (plain Python: it runs once per segment); NaN goes to the first bin."""
        clipped = min(max(seconds, self.LOW), self.HIGH) if seconds == seconds else self.LOW
        return min(int(math.log(clipped / self.LOW) / math.log(self.RATIO)), len(self.bins) - 1)

    def _histogram(self) -> None:
        self.bins = np.zeros(math.ceil(math.log(self.HIGH / self.LOW, self.RATIO)) + 1, np.int64)
        for v in self.values:
            self.bins[self._index(v)] += 1
        self.values = []

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if self.bins is not None:
            self.bins[self._index(seconds)] += 1
            return
        self.values.append(seconds)
        if len(self.values) > self.EXACT:
            self._histogram()

    def extend(self, other: Durations) -> None:
        """Add every value ``other`` recorded."""
        if self.bins is None and other.bins is None:
            for v in other.values:
                self.add(v)
            return
        if self.bins is None:
            self._histogram()
        self.count += other.count
        self.total += other.total
        if other.bins is not None:
            self.bins += other.bins
        else:
            for v in other.values:
                self.bins[self._index(v)] += 1

    def percentiles_ms(self) -> dict[str, float | None]:
        """{"p50": ms, "p99": ms} (None when nothing was recorded)."""
        if self.bins is None:
            return percentiles_ms(self.values)
        cumulative = np.cumsum(self.bins)
        out = {}
        for name, q in (("p50", 0.50), ("p99", 0.99)):
            i = int(np.searchsorted(cumulative, int(q * (self.count - 1)) + 1))  # the bin holding that rank
            out[name] = round(1e3 * self.LOW * self.RATIO ** (i + 0.5), 3)  # its geometric centre
        return out


class JsonlSink:
    """One JSON object per line; ``target`` is a path (created with its folder) or an open text file.

    Lines are buffered until ``flush()`` (the runner calls it after every step: one write to the file per step, not
    one per event) or ``close()``.
    """

    def __init__(self, target: str | os.PathLike | IO[str]) -> None:
        if hasattr(target, "write"):
            self._file, self._own = target, False
            self.name = str(getattr(target, "name", "<stream>"))
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file, self._own = open(path, "w", encoding="utf-8"), True
            self.name = str(path)
        self.count = 0

    def _failed(self, error: OSError) -> OSError:
        """An OS error (a full disk, a closed pipe) naming the file it happened on."""
        return OSError(error.errno, f"JsonlSink: writing {self.name} failed: {error.strerror or error}")

    def write(self, event: Event) -> None:
        if "stream" not in event or "time" not in event:
            raise ValueError(f"JsonlSink: event without 'stream' and 'time': {event!r}")
        if self._file is None:
            raise ValueError("JsonlSink: write after close")
        try:
            self._file.write(to_json(event) + "\n")
        except OSError as e:
            raise self._failed(e) from e
        self.count += 1

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as e:
                raise self._failed(e) from e

    def close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.flush()
        except OSError as e:
            raise self._failed(e) from e
        finally:
            if self._own:
                try:
                    file.close()  # a full disk fails this flush again; the file is closed all the same
                except OSError:
                    pass


class TerminalSink:
    """Live per-stream view: segments, stream time, speed (stream time / wall time), the last event.

    On a terminal it uses ``rich.live``; elsewhere (a pipe, a log file, rich not installed) it writes one
    plain status line at most every ``interval`` seconds.
    """

    def __init__(self, file: IO[str] | None = None, interval: float = 1.0, plain: bool | None = None) -> None:
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.start = time.perf_counter()
        self.streams: dict[str, dict] = {}
        self._last_print = 0.0
        self._live = None
        self._closed = False
        tty = hasattr(self.file, "isatty") and self.file.isatty()
        if plain is None:
            plain = not tty
        if not plain:
            try:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(self._table(), console=Console(file=self.file), refresh_per_second=4,
                                  transient=False)
                self._live.start()
            except ImportError:
                self._live = None

    def _row(self, stream: str, event: Event) -> None:
        row = self.streams.setdefault(stream, {"events": 0, "segments": 0, "time": 0.0, "last": ""})
        row["events"] += 1
        row["segments"] += event.get("type") == "segment"
        row["time"] = max(row["time"], float(event.get("end", event["time"]) or 0.0))
        shown = {k: v for k, v in event.items() if k not in ("stream", "time")}
        row["last"] = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())

    def _table(self):
        from rich.table import Table

        wall = max(time.perf_counter() - self.start, 1e-9)
        table = Table(title=f"memstream  {wall:.1f}s", expand=True)
        for column in ("stream", "segments", "stream time", "speed", "last event"):
            table.add_column(column, overflow="ellipsis", no_wrap=column != "last event")
        for sid, row in self.streams.items():
            table.add_row(sid, str(row["segments"]), f"{row['time']:.2f}s", f"x{row['time'] / wall:.2f}",
                          row["last"][:200])
        return table

    def _line(self) -> str:
        wall = max(time.perf_counter() - self.start, 1e-9)
        parts = [f"{sid}: seg {r['segments']} t={r['time']:.2f}s x{r['time'] / wall:.2f}"
                 for sid, r in self.streams.items()]
        return f"[{wall:7.1f}s] " + " | ".join(parts)

    def write(self, event: Event) -> None:
        self._row(str(event["stream"]), event)
        now = time.perf_counter()
        if now - self._last_print < (0.25 if self._live is not None else self.interval):
            return
        self._last_print = now
        if self._live is not None:
            self._live.update(self._table())
        else:
            print(self._line(), file=self.file, flush=True)

    def finish(self, summary: dict) -> None:
        total = summary.get("total", {})
        self.close()
        print(f"memstream: {total.get('segments', 0)} segments from {total.get('streams', 0)} stream(s), "
              f"latency p50 {total.get('latency_ms', {}).get('p50')} ms, "
              f"real-time factor {total.get('real_time_factor')}", file=self.file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
        elif self.streams:
            print(self._line(), file=self.file, flush=True)


def _positional_args(fn: Callable) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class OverlayVideoSink:
    """Writes each video stream's segments, drawn on by ``draw(frame, events)``, with OpenCV.

    Args:
        path: output file (``.mp4`` or ``.avi``); with several streams it may hold ``{stream}``, otherwise
            streams after the first get ``<stem>.<stream><suffix>``.
        draw: ``draw(frame, events) -> frame | None``: frame (H, W, 3) uint8 RGB, a copy it may draw on in
            place; events: those the frame's segment produced. A draw with four parameters also gets the
            frame's index in its segment and the stream id; it may return a frame of another size (the same
            size for the whole stream).
        codec: FourCC of the writer (``mp4v`` works with every OpenCV build).
    Raises ValueError at once for a container OpenCV cannot write (it picks it by the suffix), not at the first
    frame, after the run has started.
    """

    CONTAINERS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")

    @classmethod
    def check_container(cls, path: str | os.PathLike) -> Path:
        """``path`` as a Path, or ValueError when OpenCV cannot write its container (chosen by the suffix)."""
        path = Path(path)
        if path.suffix.lower() not in cls.CONTAINERS:
            raise ValueError(f"overlay video {path}: unknown container {path.suffix or '(no suffix)'!r}; "
                             f"use one of {', '.join(cls.CONTAINERS)}")
        return path

    def __init__(self, path: str | os.PathLike, draw: Callable[[np.ndarray, list[Event]], Any] | None = None,
                 codec: str = "mp4v") -> None:
        self.path = self.check_container(path)
        self.draw = draw
        self._draw_args = _positional_args(draw) if draw is not None else 0
        self.codec = codec
        self.writers: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}
        self.frames = 0

    def _path(self, stream: str) -> Path:
        if "{stream}" in str(self.path):
            return Path(str(self.path).format(stream=stream))
        if not self.paths:
            return self.path
        return self.path.with_name(f"{self.path.stem}.{stream}{self.path.suffix}")

    def _writer(self, stream: str, size: tuple[int, int], fps: float):
        import cv2

        if stream not in self.writers:
            path = self._path(stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.codec), float(fps), (size[1], size[0]))
            if not writer.isOpened():
                raise RuntimeError(f"OverlayVideoSink: OpenCV cannot write {path} with codec {self.codec}")
            self.writers[stream], self.paths[stream] = writer, path
        return self.writers[stream]

    def write(self, event: Event) -> None:
        pass

    def end_stream(self, stream: str) -> None:
        """The stream has left the run: its video is complete (the path stays recorded)."""
        writer = self.writers.pop(stream, None)
        if writer is not None:
            writer.release()

    def write_segment(self, stream: str, segment, events: list[Event]) -> None:
        import cv2

        if segment.data.ndim != 4:
            return  # audio: nothing to draw on
        frames = segment.data[: segment.num_valid]
        if not len(frames):
            return
        for index, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame).copy()
            if self.draw is not None:
                # A task's draw may take the frame's index in the segment and the stream (per-frame labels, a
                # per-stream timeline) and may return a larger frame (the model's input can be tiny).
                extra = (index, stream) if self._draw_args >= 4 else ()
                drawn = self.draw(frame, events, *extra)
                frame = frame if drawn is None else drawn
            writer = self._writer(stream, frame.shape[:2], segment.rate)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            self.frames += 1

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        self.writers.clear()


class RunStats:
    """Collects a run's numbers; :meth:`summary` turns them into the ``summary.json`` object.

    Latency of a segment: from the moment the segmenter completed it to the moment its events were
    emitted (queueing, batching wait, encode, step, decode, sinks). Processing time of a segment: its
    share of the step it ran in (encode + model step + decode + sinks, divided by the batch size).
    Real-time factor: processing time / media time (below 1: faster than real time).
    """

    COUNTS = ("packets", "frames_in", "samples_in", "segments", "segments_dropped", "dropped", "duplicated",
              "reconnects", "skipped")

    def __init__(self, task: str = "", backend: str = "") -> None:
        self.task, self.backend = task, backend
        self.start = time.perf_counter()
        self.streams: dict[str, dict] = {}
        # Running streams' latencies; an ended stream keeps only its percentiles in its row, since a Durations
        # histogram is ~18 KB and a service may see many thousands of streams. ``every``: the whole run's.
        self.latency: dict[str, Durations] = {}
        self.every = Durations()
        self.steps = Durations()
        self.batched = 0  # segments over all steps
        self.sink_errors: list[str] = []  # sinks that failed: the run stopped for them

    def stream_started(self, stream: str, source: str) -> None:
        self.streams[stream] = {"source": source, "kind": None, "status": "running", "error": None,
                                **dict.fromkeys(self.COUNTS, 0), "media_s": 0.0, "processing_s": 0.0,
                                "source_errors": []}
        self.latency[stream] = Durations()

    def segment_done(self, stream: str, media_s: float, latency_s: float, processing_s: float) -> None:
        row = self.streams[stream]
        row["segments"] += 1
        row["media_s"] += media_s
        row["processing_s"] += processing_s
        self.latency[stream].add(latency_s)
        self.every.add(latency_s)

    def step_done(self, step_s: float, batch: int) -> None:
        self.steps.add(step_s)
        self.batched += batch

    def stream_ended(self, stream: str, status: str, error: str | None = None, **counts: Any) -> None:
        row = self.streams[stream]
        row.update(status=status, error=error)
        for key, value in counts.items():
            if value is not None:
                row[key] = value
        latency = self.latency.pop(stream, None)
        if latency is not None:  # no more segments come for it
            row["latency_ms"] = latency.percentiles_ms()

    def stream_summary(self, stream: str) -> dict:
        """One stream alone, shaped like :meth:`summary` (its row is also the total): what a sink of that stream
        gets when it ends."""
        row = self._finish_row(self.streams[stream], self.latency.get(stream))
        return {"task": self.task, "backend": self.backend, "total": row, "streams": {stream: row}}

    def _finish_row(self, row: dict, latency: Durations | None) -> dict:
        out = dict(row)
        out["media_s"] = round(row["media_s"], 6)
        out["processing_s"] = round(row["processing_s"], 6)
        if latency is not None:
            out["latency_ms"] = latency.percentiles_ms()
        out["real_time_factor"] = round(row["processing_s"] / row["media_s"], 6) if row["media_s"] > 0 else None
        return out

    def summary(self) -> dict:
        wall = time.perf_counter() - self.start
        streams = {sid: self._finish_row(row, self.latency.get(sid)) for sid, row in self.streams.items()}
        total: dict[str, Any] = {key: sum(row[key] for row in self.streams.values()) for key in self.COUNTS}
        total["media_s"] = sum(row["media_s"] for row in self.streams.values())
        total["processing_s"] = sum(row["processing_s"] for row in self.streams.values())
        total = self._finish_row(total, self.every)
        statuses = Counter(row["status"] for row in self.streams.values())
        total.update(
            streams=len(self.streams), ended=statuses.get("ended", 0), removed=statuses.get("removed", 0),
            stopped=statuses.get("stopped", 0), errors=statuses.get("error", 0),
            steps=self.steps.count, model_step_ms=self.steps.percentiles_ms(),
            mean_batch=round(self.batched / self.steps.count, 3) if self.steps.count else None,
            wall_s=round(wall, 6), segments_per_s=round(total["segments"] / wall, 3) if wall > 0 else None,
        )
        if self.sink_errors:
            total["sink_errors"] = list(self.sink_errors)
        return {"task": self.task, "backend": self.backend, "total": total, "streams": streams}


class SummarySink:
    """Writes the run summary (:class:`RunStats`) as JSON to ``path`` when the run ends, plus event counts."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.events: Counter = Counter()
        self.summary: dict | None = None
        self._written = False

    def write(self, event: Event) -> None:
        self.events[str(event.get("type", "event"))] += 1

    def finish(self, summary: dict) -> None:
        self.summary = summary

    def close(self) -> None:
        if self._written:
            return
        self._written = True
        summary = dict(self.summary or {})
        summary["events"] = dict(self.events)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(to_json(summary, indent=2) + "\n")
        os.replace(tmp, self.path)  # never a half-written summary
