"""What every source shares: open-once bookkeeping, path checks, the reconnection policy, the live
frame buffer (``latest`` / ``all``), and the non-finite-sample guard for audio.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from memstream.pipelines.streams import Packet, Source, SourceError, SourceInfo, SourceStats

log = logging.getLogger("memstream.pipelines.sources")

MODES = ("latest", "all")
T = TypeVar("T")


@dataclass(frozen=True)
class Reconnect:
    """Reconnection policy of a live source.

    After a failure the source waits ``interval`` s, then ``interval * backoff``, ... (at most
    ``max_interval``) between attempts; after ``attempts`` failed attempts in a row (no frame
    received in between) the stream ends cleanly and ``stats.errors`` says why. ``attempts=0``
    never reconnects. ``at_open``: the first connection is retried the same way, so a camera or server
    that is down when the run starts is waited for; otherwise it fails at once (a mistyped URL says so
    straight away).
    """

    interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 10.0
    attempts: int = 5
    at_open: bool = False

    def __post_init__(self) -> None:
        if not (self.interval >= 0 and math.isfinite(self.interval)):
            raise ValueError(f"Reconnect interval={self.interval} must be a finite number >= 0")
        if not self.backoff >= 1:
            raise ValueError(f"Reconnect backoff={self.backoff} must be >= 1")
        if not self.max_interval >= self.interval:
            raise ValueError(f"Reconnect max_interval={self.max_interval} must be >= interval={self.interval}")
        if int(self.attempts) != self.attempts or self.attempts < 0:
            raise ValueError(f"Reconnect attempts={self.attempts} must be an integer >= 0")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the attempt that follows ``failures`` failed ones."""
        return min(self.interval * self.backoff ** failures, self.max_interval)

    def total(self) -> float:
        """Longest time spent waiting before giving up."""
        return sum(self.delay(k) for k in range(self.attempts))


def first_connection(name: str, policy: Reconnect, connect: Callable[[], T], cancelled: threading.Event) -> T:
    """``connect()`` for a live source's first connection. A :class:`SourceError` is raised at once, or with
    ``policy.at_open`` retried per the policy; ``cancelled`` (set from any thread) ends the wait."""
    try:
        return connect()
    except SourceError as e:
        attempts = policy.attempts if policy.at_open else 0
        if attempts == 0:
            raise
        cause = e.cause
    log.warning("%s: %s; retrying (at most %d attempts)", name, cause, attempts)
    for failures in range(attempts):
        if cancelled.wait(policy.delay(failures)):
            raise SourceError(name, f"cancelled while waiting for the source ({cause})")
        try:
            connection = connect()
        except SourceError as e:
            cause = e.cause
            log.info("%s: attempt %d/%d to open failed: %s", name, failures + 1, attempts, cause)
            continue
        log.info("%s: opened (attempt %d)", name, failures + 1)
        return connection
    raise SourceError(name, f"gave up after {attempts} attempts to open: {cause}")


class BaseSource(Source):
    """A :class:`Source` with idempotent ``open``, library errors turned into :class:`SourceError`,
    and packet/item counting. Subclasses implement ``_open`` and ``_packets``."""

    kind = "video"

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = SourceStats()
        self.info: SourceInfo | None = None  # type: ignore[assignment]
        self._opened = False

    def _open(self) -> SourceInfo:
        raise NotImplementedError

    def _packets(self) -> Iterator[Packet]:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def open(self) -> SourceInfo:
        """Open (once; later calls return the same info). Raises SourceError naming the source and the cause."""
        if self._opened:
            return self.info
        try:
            self.info = self._open()
        except SourceError:
            self._safe_close()
            raise
        except Exception as e:  # a library's own exception: one line that names the source
            self._safe_close()
            raise SourceError(self.name, f"{type(e).__name__}: {one_line(e)}") from e
        self._opened = True
        return self.info

    def _safe_close(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
            log.debug("%s: error while closing", self.name, exc_info=True)

    def __iter__(self) -> Iterator[Packet]:
        self.open()
        try:
            for packet in self._packets():
                self.stats.packets += 1
                self.stats.items += len(packet.data) if self.kind == "audio" else 1
                yield packet
        except SourceError as e:
            self.fail(e.cause)
        except Exception as e:  # a decoder failing mid-stream ends this stream, logged, not the program
            self.fail(f"{type(e).__name__}: {one_line(e)}")

    def fail(self, cause: str) -> None:
        """Record why the stream ended early (logged once, kept in stats.errors)."""
        self.stats.errors.append(cause)
        log.error("%s: %s", self.name, cause)

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._safe_close()


def one_line(error: BaseException | str) -> str:
    """The error's message on one line (for FFmpeg/OS errors, the plain cause without errno and path)."""
    text = getattr(error, "strerror", None) if isinstance(error, BaseException) else None
    text = " ".join(str(text or error).split())
    return text or type(error).__name__


def check_file(name: str, path: str | Path) -> Path:
    """The path of an existing, readable, non-empty regular file, else SourceError with the cause."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(name, "no such file")
    if p.is_dir():
        raise SourceError(name, "is a directory, not a file")
    try:
        with p.open("rb") as f:
            head = f.read(1)
    except OSError as e:
        raise SourceError(name, f"cannot read file: {e.strerror or e}") from e
    if not head:
        raise SourceError(name, "empty file (0 bytes)")
    return p


class SkipLog:
    """Counts a source's skipped packets or frames in ``stats.skipped`` and logs them: the first ``limit`` one by
    one, then one line saying that the rest are only counted, so a stream damaged for days cannot flood the log."""

    def __init__(self, name: str, stats: SourceStats, limit: int = 5) -> None:
        self.name, self.stats, self.limit, self.logged = name, stats, limit, 0

    def __call__(self, message: str) -> None:
        self.stats.skipped += 1
        if self.logged < self.limit:
            self.logged += 1
            more = "; further skips are counted in stats.skipped, not logged" if self.logged == self.limit else ""
            log.warning("%s: %s%s", self.name, message, more)


class NonFinite:
    """Replaces NaN/Inf samples by 0: counted in ``stats.skipped``, logged once per source."""

    def __init__(self, name: str, stats: SourceStats) -> None:
        self.name, self.stats, self.warned = name, stats, False

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(samples)
        if bad.any():
            n = int(np.count_nonzero(bad))
            self.stats.skipped += n
            if not self.warned:
                log.warning("%s: %d non-finite (NaN/Inf) samples replaced by 0 (further ones counted, not logged)",
                            self.name, n)
                self.warned = True
            samples = np.where(bad, np.float32(0), samples).astype(np.float32, copy=False)
        return samples


class FrameBuffer:
    """Hand-over between a reader thread and the consumer.

    ``latest``: one slot; a new item replaces an unread one (``put`` returns 1 = dropped), so the
    consumer never lags. ``all``: a queue of ``capacity`` items; ``put`` blocks while it is full
    (back-pressure on the reader) until there is room or ``stop`` is set.
    """

    def __init__(self, mode: str, capacity: int) -> None:
        self.latest = mode == "latest"
        self.capacity = 1 if self.latest else capacity
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.finished = False

    def put(self, item: Any, stop: threading.Event) -> int:
        with self._cond:
            dropped = 0
            if self.latest:
                dropped = len(self._items)
                self._items.clear()
            else:
                while len(self._items) >= self.capacity and not stop.is_set():
                    self._cond.wait(0.05)
                if stop.is_set():
                    return 0
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Any | None:
        """The oldest item, or None after ``timeout`` s (or at once when finished and empty)."""
        with self._cond:
            if not self._items and not self.finished:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def finish(self) -> None:
        """No more items will come (the reader ended): wakes every waiter."""
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)
