"""The runtime: one model over N live streams in one process.

    reader thread per source: Source --Packet--> Segmenter --Segment--> bounded queue
        (a source that can be read on the loop (``Source.read_on_loop``: in memory, a local audio file) has no thread:
        the model loop reads it when its stream needs the next segment)
    model loop (caller's thread): streams with a segment ready -> gather their state rows -> task.encode
        -> backend.step (reset for streams on their first segment) -> scatter the rows back
        -> each stream's decoder -> events (+ ``stream``, ``time``) -> sinks

The state is one fixed batch of ``max_streams`` slots (every state tensor batch first); a step runs
the rows of the streams that are ready (``index_select``) and writes them back (``index_copy_``). A
stream that joins takes a free slot and runs its first segment with ``reset`` set, so slots are reused
without clearing anything outside the model. Once one stream has a segment ready the loop waits at most
``batch_timeout`` (counted from when that segment became ready) for the others, so a slow or stalled
source never holds the rest back. A source that ends or raises ends only its own stream: its decoder is
flushed, its slot freed, its end counted in the summary and announced to its sinks as one ``end`` event (the
decoder's own, if it makes one, else a bare one) carrying ``status`` (``ended``, ``error``, ``stopped``,
``removed``), ``segments`` and, for an error, ``error``: a service learns that a camera's stream died from its
event stream, without waiting for the run's summary. Then the task and every sink that offer
``end_stream(stream_id)`` are told, so that what they hold for it (a decoder for overlays, an open video
writer, an open result file) goes too, and the runner drops its own record of it: a process that serves
streams coming and going for days keeps only their summary rows (about 1 KB each) and their ids. An id
names one stream for the run's whole life, so events, summary rows and result files never mix two streams.

``stop()`` (the CLI calls it on SIGINT/SIGTERM) lets the step in flight finish and emit its events, then
flushes every decoder and sink and writes the summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from memstream.export.backend import to_numpy
from memstream.pipelines.segmenter import AudioSegmenter, Segment, VideoSegmenter
from memstream.pipelines.sinks import RunStats
from memstream.pipelines.streams import Source, SourceError, SourceInfo

log = logging.getLogger(__name__)


@dataclass
class StreamResult:
    """What one stream got from one step.

    Attributes:
        stream: stream id. index: segment number in the stream. time/end: stream time span of the segment.
        outputs: ``task.split(outputs, row)`` of the step's outputs as numpy arrays (for the core: (T, D)).
        events: the decoder's events (with ``stream`` and ``time``). segment: the segment itself.
    """

    stream: str
    index: int
    time: float
    end: float
    outputs: Any
    events: list[dict]
    segment: Segment


@dataclass(eq=False)
class _Stream:
    id: str
    source: Source
    opened: bool
    decoder: Any = None
    slot: int = -1
    queue: deque = field(default_factory=deque)
    first: bool = True
    done_reading: bool = False
    status: str = "running"
    error: str | None = None
    packets: int = 0
    items: int = 0
    kind: str | None = None
    served: int = 0
    last_end: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    space: threading.Condition | None = None  # the reader waits on it while the queue is full
    latest: bool = False  # a live source in `latest` mode: a new segment replaces one still waiting
    sinks: list = field(default_factory=list)  # the run's sinks and the stream's own
    own_sinks: list = field(default_factory=list)  # the stream's own: finished and closed when it ends
    sink_error: str | None = None  # one of its own sinks failed: it ends as an error, the run goes on
    segments_dropped: int = 0
    opening: bool = False  # its reader is inside source.open() (which may wait for a live source)
    reading: Iterator[None] | None = None  # a source read on the model loop: its reading, advanced packet by packet


def _finish_sink(sink, summary: dict) -> Exception | None:
    """Hand ``sink`` its summary and close it; a failure is logged and returned, not raised."""
    try:
        if hasattr(sink, "finish"):
            sink.finish(summary)
        sink.close()
    except Exception as e:  # noqa: BLE001 - the caller decides whether it ends the run
        log.error("closing sink %s failed: %s", type(sink).__name__, e)
        return e
    return None


def _cancel_open(st: _Stream, reading: bool = False) -> None:
    """A reader still opening its source (a live source waiting for its server) stops waiting, where the
    source can be told so (``cancel()``, safe from any thread); with ``reading``, also a reader thread waiting
    for its next packet (stdin or a network stream gone quiet), when the run ends."""
    cancel = getattr(st.source, "cancel", None)
    waiting = st.opening or (reading and st.thread is not None and not st.done_reading)
    if waiting and cancel is not None:
        try:
            cancel()
        except Exception as e:  # noqa: BLE001 - the run goes on stopping
            log.warning("stream %s: cancelling its source failed: %s", st.id, e)


def is_open(source: Source) -> bool:
    return isinstance(getattr(source, "info", None), SourceInfo)


class StreamRunner:
    """Runs ``task`` with ``backend`` over any number of streams that join and leave at any time.

    Args:
        task: a :class:`memstream.pipelines.streams.Task`.
        backend: ``TorchBackend`` or ``OnnxBackend`` (``init_state(batch)``, ``step(x, state, reset, mask)``).
        sinks: receive every event; see :mod:`memstream.pipelines.sinks`.
        max_streams: state slots, the most streams running at once; later ones wait for a free slot.
        batch_timeout: seconds to wait for more streams once one has a segment ready.
        max_batch: at most this many streams per step (None: all that are ready); 1 steps streams one by one.
        queue_size: segments buffered per stream before its reader waits. A live source in ``latest`` mode keeps
            at most one waiting: a newer segment replaces it (counted as the stream's ``segments_dropped``).
        backend_name: how the summary names the backend.
    """

    def __init__(self, task, backend, sinks: Sequence = (), *, max_streams: int = 8, batch_timeout: float = 0.02,
                 max_batch: int | None = None, queue_size: int = 4, backend_name: str | None = None) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams={max_streams} must be >= 1")
        if batch_timeout < 0:
            raise ValueError(f"batch_timeout={batch_timeout} must be >= 0")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1 or None")
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size} must be >= 1")
        self.task, self.backend, self.sinks = task, backend, list(sinks)
        self._flushing = [sink for sink in self.sinks if hasattr(sink, "flush")]  # flushed once per step
        self.max_streams, self.batch_timeout, self.max_batch, self.queue_size = (
            max_streams, batch_timeout, max_batch, queue_size)
        self.stats = RunStats(getattr(task, "name", type(task).__name__),
                              backend_name or type(backend).__name__.replace("Backend", "").lower())
        self.summary: dict | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # the model loop waits on it for segments and endings
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}  # the streams not yet retired
        self._used_ids: set[str] = set()  # every id this run has given out
        self._active: list[_Stream] = []
        self._waiting: deque[_Stream] = deque()
        self._free = list(range(max_streams))
        self._state = None
        self._ids = 0
        self._steps = 0
        self._finished = False
        self._sink_error: Exception | None = None  # the first sink that failed; raised when the run has ended
        self._failed_sinks: list = []

    # -- streams -------------------------------------------------------------------------------------
    def add(self, source: Source, stream_id: str | None = None, *, opened: bool | None = None,
            sinks: Sequence = ()) -> str:
        """Add a stream (from any thread, also while running); returns its id. ``opened``: the source is
        already open (default: guessed from its ``info``); otherwise its reader thread opens it. ``sinks``: the
        stream's own, beside the run's: they get only its events, and when it ends its summary
        (:meth:`RunStats.stream_summary`) and ``close()``."""
        with self._cond:
            if self._finished:
                raise RuntimeError("StreamRunner: the run has ended; start a new runner")
            sid = str(stream_id if stream_id is not None else self._ids)
            self._ids += 1
            if sid in self._used_ids:
                status = "is running" if sid in self._streams else "was used by a stream that has ended"
                raise ValueError(f"stream id {sid!r} {status}; an id names one stream for the whole run (so events "
                                 f"and result files never mix two streams): pass a new one, e.g. {sid + '-2'!r}")
            self._used_ids.add(sid)
            st = _Stream(sid, source, is_open(source) if opened is None else opened,
                         decoder=self.task.new_decoder(sid), space=threading.Condition(self._lock),
                         sinks=[*self.sinks, *sinks], own_sinks=list(sinks))
            self._streams[sid] = st
            self.stats.stream_started(sid, str(getattr(source, "name", type(source).__name__)))
            self._waiting.append(st)
            self._start_waiting()
            self._cond.notify_all()
        return sid

    def remove(self, stream_id: str) -> bool:
        """Let a stream leave: its reader stops reading; what it delivered (queued, and the partial segment)
        still runs, then its decoder is flushed and its slot freed. Returns False when the stream has already
        ended (nothing to do); an id this run never gave out raises ``KeyError``."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                if stream_id in self._used_ids:
                    return False
                raise KeyError(f"no stream {stream_id!r} in this run")
            st.stop.set()
        _cancel_open(st)
        return True

    def stop(self) -> None:
        """Finish the step in flight, then flush decoders and sinks (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _start_waiting(self) -> None:
        while self._waiting and self._free and not self._finished:
            st = self._waiting.popleft()
            st.slot = self._free.pop(0)
            self._active.append(st)
            if getattr(st.source, "read_on_loop", False):
                st.reading = self._reading(st)  # advanced by the model loop (_read_on_loop)
                continue
            st.thread = threading.Thread(target=self._read, args=(st,), name=f"memstream-source-{st.id}",
                                         daemon=True)
            st.thread.start()

    # -- reader threads ------------------------------------------------------------------------------
    def _segmenter(self, info: SourceInfo):
        task = self.task
        if info.kind == "audio":
            return AudioSegmenter(task.segment_size, int(task.rate), int(round(info.rate)), info.channels)
        return VideoSegmenter(task.segment_size, task.frame_size, info.rate or task.rate,
                              sample_fps=getattr(task, "sample_fps", None))

    def _put(self, st: _Stream, segment: Segment) -> bool:
        with self._lock:
            while st.latest and st.queue:  # `latest` never builds a backlog: the newest segment goes next
                st.queue.popleft()
                st.segments_dropped += 1
            # A source read on the loop never waits: the loop reads it only when its queue is empty, so at most one
            # packet's segments are queued.
            while st.reading is None and len(st.queue) >= self.queue_size:
                if self._stop.is_set():
                    return False
                st.space.wait(0.05)
            st.queue.append((segment, time.perf_counter()))
            self._cond.notify()
        return True

    def _read(self, st: _Stream) -> None:
        """Reader thread: the stream's whole reading."""
        for _ in self._reading(st):
            pass

    def _read_on_loop(self, st: _Stream) -> None:
        """The model loop reads a ``read_on_loop`` source until its stream has a segment queued or has ended."""
        while not st.queue and not st.done_reading:
            next(st.reading, None)

    def _reading(self, st: _Stream) -> Iterator[None]:
        """source -> segmenter -> queue, pausing after each packet (a reader thread runs it through; the model loop
        advances it for a source read on the loop). The data a stream delivered before it ended, left (``remove``)
        or failed is flushed as a last padded segment; after ``stop()`` (or ``close()`` of this generator) nothing
        more is queued."""
        source = st.source
        status, error, segmenter, stopped, info = "ended", None, None, False, None
        try:
            if st.opened:
                info = source.info
            else:
                # remove() and _finish() set their flag, then look at `opening`; this thread does the reverse, so
                # one of the two sees the other and a wait at open is always cancelled.
                st.opening = True
                if st.stop.is_set() or self._stop.is_set():
                    _cancel_open(st)
                try:
                    info = source.open()
                finally:
                    st.opening = False
            st.kind = info.kind
            st.latest = bool(getattr(info, "live", False)) and getattr(source, "mode", None) == "latest"
            if info.kind != self.task.kind:
                raise SourceError(str(getattr(source, "name", source)),
                                  f"a {info.kind} source cannot feed the {self.task.kind} task {self.task.name!r}")
            rate = info.rate or self.task.rate
            segmenter = self._segmenter(info)
            if hasattr(st.decoder, "source_opened"):  # e.g. the tracker: boxes in the source's pixels, its frame rate
                st.decoder.source_opened(info)
            for packet in source:
                if self._stop.is_set():
                    stopped = True
                    break
                if st.stop.is_set():
                    status = "removed"
                    break
                data = np.asarray(packet.data)
                if info.kind == "audio":
                    st.items += len(data)
                    segments = segmenter.push(data, packet.time)  # a gap in the times is filled with silence
                else:  # one frame (H, W, 3), or a burst (n, H, W, 3) spaced at the source's rate
                    frames = data if data.ndim == 4 else data[None]
                    st.items += len(frames)
                    segments = [s for k, f in enumerate(frames) for s in segmenter.push(f, packet.time + k / rate)]
                st.packets += 1
                if not all(self._put(st, s) for s in segments):
                    stopped = True
                    break
                yield
            else:
                stopped = self._stop.is_set()  # a source cancelled as the run ends reads as ended: it was stopped
        except GeneratorExit:  # closed while paused (the run ends): as after stop(), without another yield
            stopped = True
        except Exception as e:  # a broken source ends its own stream only
            if info is None and st.stop.is_set():  # removed while its source opened (cancel() ended the wait)
                status = "removed"
            elif info is None and self._stop.is_set():
                stopped = True
            else:
                status, error = "error", str(e) or type(e).__name__
                log.warning("stream %s (%s) ended with an error: %s", st.id, getattr(source, "name", "?"), error)
        source_errors = getattr(getattr(source, "stats", None), "errors", None)
        if status == "ended" and source_errors:
            # The source ended early on a failure it logged itself (a decoder error, a device gone, the reconnect
            # limit): the stream failed, though what it delivered is still flushed and run below.
            # Named as a SourceError names it (its text is what the stream's end event and summary row say).
            status, error = "error", f"{getattr(source, 'name', source)}: {source_errors[-1]}"
        try:
            if stopped:
                status = "stopped"
            elif segmenter is not None:
                for s in segmenter.flush():
                    if not self._put(st, s):
                        break
        except Exception as e:  # noqa: BLE001 - the stream is over either way
            status, error = "error", error or str(e) or type(e).__name__
            log.warning("stream %s: flushing its segmenter failed: %s", st.id, e)
        finally:
            try:
                source.close()
            except Exception as e:  # noqa: BLE001 - closing must not hide how the stream ended
                log.warning("stream %s: closing the source failed: %s", st.id, e)
            with self._cond:
                if st.sink_error is not None and status != "stopped":
                    status, error = "error", st.sink_error
                st.status, st.error, st.done_reading = status, error, True
                self._cond.notify_all()

    # -- model loop ----------------------------------------------------------------------------------
    def _next(self) -> tuple[list, list[_Stream]] | None:
        """(batch of (stream, segment, ready time), retired streams), or None when every stream is done."""
        with self._cond:
            while not self._stop.is_set():
                for s in self._active:
                    if s.reading is not None and not s.queue and not s.done_reading:
                        self._read_on_loop(s)
                retired = [s for s in self._active if s.done_reading and not s.queue]
                if retired:
                    return [], retired
                ready = sorted((s for s in self._active if s.queue), key=lambda s: s.served)
                if self.max_batch is not None:
                    ready = ready[: self.max_batch]
                if not self._active and not self._waiting:
                    return None
                now = time.perf_counter()
                wait = 0.05
                if ready:
                    pending = any(not s.queue and not s.done_reading for s in self._active)
                    deadline = min(s.queue[0][1] for s in ready) + self.batch_timeout
                    full = self.max_batch is not None and len(ready) >= self.max_batch
                    if not pending or full or now >= deadline:
                        batch = [(s, *s.queue.popleft()) for s in ready]
                        for s in ready:  # wake a reader once its queue is half empty: fewer GIL hand-overs
                            if len(s.queue) <= self.queue_size // 2:
                                s.space.notify()
                        return batch, []
                    wait = min(wait, deadline - now)
                self._cond.wait(max(wait, 0.0005))
            return [], []

    def _emit(self, st: _Stream, events: list[dict], time_default: float) -> list[dict]:
        out = []
        for ev in events:
            event = {"stream": st.id, **ev}
            event.setdefault("time", time_default)
            for sink in st.sinks:
                try:
                    sink.write(event)
                except Exception as e:  # noqa: BLE001 - see _sink_failed
                    self._sink_failed(sink, e)
            out.append(event)
        return out

    def _flush(self, sinks: Sequence) -> None:
        for sink in sinks:
            if hasattr(sink, "flush"):
                try:
                    sink.flush()
                except Exception as e:  # noqa: BLE001 - see _sink_failed
                    self._sink_failed(sink, e)

    def _sink_failed(self, sink, error: Exception) -> None:
        """A sink raised (a full disk, a closed pipe, a bug): it gets nothing more, and the run stops after the step
        in flight, as after ``stop()``: going on would compute results that cannot be kept. The other sinks still
        get every event and the summary; the first such error is raised once the run has ended. A stream's own
        sink (``add(sinks=)``) ends only that stream, as an error naming the sink, as a failing source does: what
        it had delivered still runs, for the run's sinks. Sink lists are rebound, never changed in place, so a loop
        over one goes on safely."""
        if not any(s is sink for s in self.sinks):
            self._own_sink_failed(sink, error)
            return
        log.error("sink %s failed: %s; the run stops after this step", type(sink).__name__, error)
        self.stats.sink_errors.append(f"{type(sink).__name__}: {error}")  # the summary says why the run stopped
        if self._sink_error is None:
            self._sink_error = error
        self._failed_sinks.append(sink)
        self.sinks = [s for s in self.sinks if s is not sink]
        self._flushing = [s for s in self._flushing if s is not sink]
        for st in self._streams.values():  # every stream not yet retired: the running ones and those waiting
            st.sinks = [s for s in st.sinks if s is not sink]
            st.own_sinks = [s for s in st.own_sinks if s is not sink]
        self._stop.set()

    def _own_sink_failed(self, sink, error: Exception) -> None:
        cause = f"its sink {type(sink).__name__} failed: {error}"
        for st in list(self._streams.values()):
            if not any(s is sink for s in st.own_sinks):
                continue
            log.error("stream %s: %s; the stream ends, the others go on", st.id, cause)
            st.sinks = [s for s in st.sinks if s is not sink]
            st.own_sinks = [s for s in st.own_sinks if s is not sink]
            with self._cond:
                if st.sink_error is None:
                    st.sink_error = cause
                    if st.done_reading and st.status != "stopped":  # it had read to its end: only its queue is left
                        st.status, st.error = "error", cause
                st.stop.set()  # as remove(): its reader stops; _reading reports the sink's error
            _cancel_open(st)
        try:
            sink.close()  # for what it holds (a file)
        except Exception:  # noqa: BLE001, S110 - it failed already; that error is the one reported
            pass

    def _step(self, batch: list) -> list[StreamResult]:
        t0 = time.perf_counter()
        segments = [seg for _, seg, _ in batch]
        x, mask = self.task.encode(segments)
        slots = [st.slot for st, _, _ in batch]
        with torch.inference_mode():
            if self._state is None:
                self._state = self.backend.init_state(self.max_streams)
            device = self._state[0].device
            whole = slots == list(range(self.max_streams))
            idx = torch.tensor(slots, dtype=torch.long, device=device)
            rows = self._state if whole else type(self._state)(*(t.index_select(0, idx) for t in self._state))
            reset = torch.tensor([st.first for st, _, _ in batch], dtype=torch.bool)
            t1 = time.perf_counter()
            # A task may feed its decoders' decisions back into the step (the tracker's assignment).
            extra = self.task.step_inputs([st.decoder for st, _, _ in batch]) if hasattr(
                self.task, "step_inputs") else {}
            outputs, new = self.backend.step(x, rows, reset, mask, **extra)
            step_s = time.perf_counter() - t1
            if whole:
                self._state = type(self._state)(*(n.to(device) for n in new))
            else:
                for t, n in zip(self._state, new, strict=True):
                    t.index_copy_(0, idx, n.to(device))
        outputs = to_numpy(outputs)  # once per step: decoders then read numpy rows, no torch op per stream
        results = []
        for i, (st, seg, _) in enumerate(batch):
            st.first = False
            st.served = self._steps
            st.last_end = seg.start + seg.duration
            out = self.task.split(outputs, i)
            events = self._emit(st, st.decoder.update(out, seg), seg.start)
            for sink in st.sinks:
                if hasattr(sink, "write_segment"):
                    try:
                        sink.write_segment(st.id, seg, events)
                    except Exception as e:  # noqa: BLE001 - see _sink_failed
                        self._sink_failed(sink, e)
            if st.own_sinks:
                self._flush(st.own_sinks)
            results.append(StreamResult(st.id, seg.index, seg.start, seg.start + seg.duration, out, events, seg))
        self._flush(self._flushing)  # the step's events go out together: one write per sink, not one per event
        done = time.perf_counter()
        for st, seg, ready in batch:
            self.stats.segment_done(st.id, seg.duration, done - ready, (done - t0) / len(batch))
        self.stats.step_done(step_s, len(batch))
        self._steps += 1
        return results

    def _retire(self, st: _Stream, status: str | None = None) -> None:
        """A stream leaves: flush its decoder, announce its end, record it, free its slot for the next one."""
        status = status or st.status
        self._emit(st, self._end_events(st, st.decoder.flush(), status), st.last_end)
        self._flush(st.sinks)
        if st.sink_error is not None and status not in ("stopped", "error"):  # an own sink failed on those events
            status, st.error = "error", st.sink_error
        source_stats = getattr(st.source, "stats", None)
        counts = {k: getattr(source_stats, k, None) for k in ("dropped", "duplicated", "reconnects", "skipped")}
        counts["source_errors"] = list(getattr(source_stats, "errors", None) or [])
        self.stats.stream_ended(st.id, status, st.error, packets=st.packets, kind=st.kind, slot=st.slot,
                                segments_dropped=st.segments_dropped,
                                frames_in=st.items if st.kind == "video" else 0,
                                samples_in=st.items if st.kind == "audio" else 0, **counts)
        for holder in (self.task, *st.sinks):
            if hasattr(holder, "end_stream"):
                try:
                    holder.end_stream(st.id)
                except Exception as e:  # noqa: BLE001 - the other streams run on
                    log.warning("stream %s: %s.end_stream failed: %s", st.id, type(holder).__name__, e)
        for sink in st.own_sinks:
            _finish_sink(sink, self.stats.stream_summary(st.id))  # logged on failure: the other streams run on
        st.decoder = None  # its last events are out; nothing reads it again
        with self._cond:
            if st in self._active:
                self._active.remove(st)
                self._free.append(st.slot)
                self._free.sort()
            self._streams.pop(st.id, None)
            self._start_waiting()

    def _end_events(self, st: _Stream, events: list[dict], status: str) -> list[dict]:
        """The decoder's last events with one ``end`` event among them (see the module docstring)."""
        events = list(events)
        at = next((i for i, ev in enumerate(events) if ev.get("type") == "end"), None)
        if at is None:
            events.append({"type": "end"})
            at = len(events) - 1
        end = events[at] = {**events[at], "status": status}
        end.setdefault("segments", self.stats.streams[st.id]["segments"])
        if status == "error" and st.error:
            end["error"] = st.error
        return events

    def results(self) -> Iterator[StreamResult]:
        """Run until every stream has ended or ``stop()``; yields each stream's result of each step.
        Closing the generator early stops the run the same way ``stop()`` does."""
        try:
            while True:
                nxt = self._next()
                if nxt is None:
                    break
                batch, retired = nxt
                for st in retired:
                    self._retire(st)
                if batch:
                    yield from self._step(batch)
                if self._stop.is_set():
                    break
        finally:
            self._finish()

    def run(self) -> dict:
        """Run to the end (or ``stop()``); returns the summary."""
        for _ in self.results():
            pass
        return self.summary

    def _finish(self) -> None:
        if self._finished:
            return
        self._stop.set()
        with self._cond:
            self._finished = True
            self._cond.notify_all()
            leftover = list(self._active) + list(self._waiting)
            self._waiting.clear()
            for st in leftover:
                st.space.notify_all()
        errors = []
        try:
            for st in leftover:
                _cancel_open(st, reading=True)
            for st in leftover:
                if st.reading is not None:
                    st.reading.close()  # a reading paused on the loop ends as after stop() and closes its source
                if st.thread is None and st.opened and not st.done_reading:
                    st.source.close()  # never started reading: it waited for a slot (or for the loop)
                if st.thread is not None:
                    st.thread.join(timeout=0.5)  # a reader stuck in a blocking read is a daemon: left behind
                finished = st.status == "error" or (st.done_reading and not st.queue)
                self._retire(st, None if finished else "stopped")
        finally:
            self.summary = self.stats.summary()
            for sink in self.sinks:  # one failing sink must not keep the others from flushing
                error = _finish_sink(sink, self.summary)
                if error is not None:
                    errors.append(error)
            for sink in self._failed_sinks:  # closed, for what it holds (a file); it failed already
                try:
                    sink.close()
                except Exception:  # noqa: BLE001, S110 - its error is the one raised below
                    pass
        if self._sink_error is not None:
            errors.insert(0, self._sink_error)
        if errors:
            raise errors[0]
