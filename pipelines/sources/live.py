"""Live video: cameras and network streams, read by a background thread.

The reader thread owns the capture: it reads, stamps, counts and hands frames to a
:class:`FrameBuffer` (``latest``: newest frame only, overwritten ones counted as dropped; ``all``:
bounded queue, the reader waits = back-pressure). When a read fails or no new frame comes for
``stall_timeout`` s it reconnects per :class:`Reconnect`; past the attempt limit the stream ends
cleanly with the cause in ``stats.errors``. With ``Reconnect(at_open=True)`` the first connection is retried
the same way; ``cancel()`` (from any thread) ends such a wait. A finite stream (a file or VOD playlist served
over HTTP: FFmpeg reports its frame count) that read to its end just ends: reconnecting would replay it for
ever. The consumer also watches the reader's heartbeat, so a capture stuck inside a native call can never block
iteration forever.

Times: per connection, stream time = base + (container timestamp - first timestamp), where the base
of a new connection, or of a timeline whose timestamps jumped (a restarted publisher), is the wall-clock
time since the source opened (at least one frame after the previous time), so times keep increasing. A
repeated timestamp counts as a duplicated frame, a gap of more than 1.5 frame intervals as
``round(gap / interval) - 1`` dropped frames: within a timeline by its timestamps, across a reconnect or a
jump by the wall clock (an outage's missing frames). A gap of over ``max(1 s, 3 intervals)`` is logged.
Captures that give no timestamps (some cameras, MJPEG over HTTP) are stamped with arrival times, but never
closer than one frame at the source's rate, so frames that arrive in a burst (after a network hiccup) keep their
spacing and video segments never overlap. That lead over the wall clock is held under ``MAX_LEAD`` s: beyond it
(a long burst, or a source faster than its rate) frames are 1 ms apart.
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterator

import cv2
import numpy as np
from memstream.pipelines.sources.common import (
    MODES,
    BaseSource,
    FrameBuffer,
    Reconnect,
    SkipLog,
    first_connection,
    log,
    one_line,
)
from memstream.pipelines.sources.video import pyav_frames
from memstream.pipelines.streams import Packet, SourceError, SourceInfo

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt", "hls+http", "hls+https")
_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide
# Reader threads that close() left inside a native read or connect, with the time by which that call gives up (its
# timeout). The interpreter kills daemon threads at its end; one that comes back from FFmpeg/OpenCV then is unwound
# through their C++ frames, and the process aborts ("FATAL: exception not rethrown", exit 134). So the end of the
# program waits for them, at most until those times.
_LEFT_BEHIND: dict[threading.Thread, float] = {}
_LEFT_BEHIND_LOCK = threading.Lock()


def _leave_behind(thread: threading.Thread, gives_up_by: float) -> None:
    with _LEFT_BEHIND_LOCK:
        for t in [t for t in _LEFT_BEHIND if not t.is_alive()]:
            del _LEFT_BEHIND[t]
        _LEFT_BEHIND[thread] = gives_up_by


@atexit.register
def _wait_for_readers_left_behind() -> None:
    with _LEFT_BEHIND_LOCK:
        waiting = [(t, by) for t, by in _LEFT_BEHIND.items() if t.is_alive()]
    if waiting:
        log.info("waiting up to %.1f s for %d live reader(s) to leave their read before exiting",
                 max(by for _, by in waiting) - time.monotonic(), len(waiting))
    for thread, by in waiting:
        thread.join(timeout=max(0.0, by - time.monotonic()))


class _Stamper:
    """Stream times and drop/duplicate counting for one live source (runs in the reader thread)."""

    MAX_LEAD = 1.0  # s: arrival-time stamps may run this far ahead of the wall clock to keep a burst's spacing
    MIN_STEP = 0.001  # s between arrival-time stamps beyond MAX_LEAD: times still increase

    def __init__(self, name: str, rate: float, stall: float) -> None:
        self.name, self.rate, self.stall = name, rate, stall
        self.t0 = time.monotonic()
        self.last: float | None = None
        self.deltas: collections.deque[float] = collections.deque(maxlen=15)
        self.dropped = self.duplicated = 0
        self.new_connection()

    def new_connection(self) -> None:
        self.origin: float | None = None  # first timestamp of this connection
        self.prev: float | None = None
        self.clock = False                 # no usable timestamps: arrival times
        self.frames = 0

    @property
    def interval(self) -> float:
        return statistics.median(self.deltas) if len(self.deltas) >= 3 else 1.0 / self.rate

    def _rebase(self, stamp: float | None) -> float:
        """Start a timeline at this frame: 0 for the very first, else now (and after the previous frame); the frames
        that the wall clock says are missing in between count as dropped."""
        if self.last is None:
            self.base = 0.0
        else:
            interval = self.interval
            self.base = max(time.monotonic() - self.t0, self.last + interval)
            self._count_gap(self.base - self.last, interval,
                            "after a reconnect" if self.frames == 0 else "where the timestamps jumped")
        self.origin = stamp
        return self.base

    def _count_gap(self, gap: float, interval: float, where: str) -> None:
        if gap > 1.5 * interval:
            missing = round(gap / interval) - 1
            self.dropped += missing
            if gap > max(1.0, 3 * interval):
                log.warning("%s: %.1f s of the stream missing %s; %d frames counted as dropped", self.name, gap,
                            where, missing)

    def _arrival_time(self, waited: float) -> float:
        """A frame without a timestamp: its arrival time, but at least a frame (at the source's rate: a video
        segment ends one frame after its last) after the previous one while that keeps it within MAX_LEAD of the
        wall clock. Missing frames cannot be told from late ones here: a long wait is only logged."""
        now = time.monotonic() - self.t0
        period = 1.0 / self.rate
        if waited > max(1.0, 3 * period):
            log.warning("%s: no frame for %.1f s", self.name, waited)
        step = period if self.last + period - now <= self.MAX_LEAD else self.MIN_STEP
        return max(now, self.last + step)

    def __call__(self, stamp_ms: float, waited: float = 0.0) -> float:
        """The stream time of a frame read ``waited`` s after the previous one was handed over."""
        # A negative time is a time: OpenCV counts from the first packet's, so after a publisher restarted on the same
        # UDP port the new, lower ones come out negative (taken for "no timestamps", they stopped all drop counting).
        stamp = stamp_ms / 1000.0 if math.isfinite(stamp_ms) else None
        if self.frames == 0:
            t = self._rebase(stamp)
        elif self.clock or stamp is None or self.origin is None or (self.frames == 1 and stamp == self.origin <= 0):
            self.clock = True
            t = self._arrival_time(waited)
        else:
            delta = stamp - self.prev
            if abs(delta) < 1e-6:
                self.duplicated += 1
                t = self.last
            elif delta < 0 or delta > max(self.stall, 2.0):  # a timestamp discontinuity: start a new timeline
                t = self._rebase(stamp)
            else:
                if delta > 1.5 * self.interval:
                    self._count_gap(delta, self.interval, "(a gap in the timestamps)")
                else:
                    self.deltas.append(delta)
                t = self.base + stamp - self.origin
        self.prev = stamp
        self.frames += 1
        self.last = t
        return t


class _LiveVideoSource(BaseSource):
    """Common machinery of :class:`CameraSource` and :class:`UrlVideoSource` (see the module docstring)."""

    watchdog_slack = 5.0  # s beyond the configured timeouts before a reader stuck in a native call is abandoned

    def __init__(self, name: str, mode: str = "latest", buffer: int = 64, reconnect: Reconnect | None = None,
                 stall_timeout: float = 5.0, open_timeout: float = 10.0) -> None:
        super().__init__(name)
        if mode not in MODES:
            raise SourceError(name, f"mode={mode!r} is not one of {MODES}")
        if int(buffer) != buffer or buffer < 1:
            raise SourceError(name, f"buffer={buffer!r} must be a positive integer")
        for key, value in (("stall_timeout", stall_timeout), ("open_timeout", open_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise SourceError(name, f"{key}={value!r} must be a positive number of seconds")
        self.mode, self.buffer = mode, int(buffer)
        self.reconnect = reconnect if reconnect is not None else Reconnect()
        self.stall_timeout, self.open_timeout = float(stall_timeout), float(open_timeout)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cancelled = threading.Event()  # never cleared: a cancelled source stays cancelled
        self._abandoned = False

    def cancel(self) -> None:
        """Stop waiting for the source, from any thread: an ``open`` retrying the first connection gives up at
        once, a running reader ends as a closed one does. The runner calls it for a stream stopped or removed
        while its source opens."""
        self._cancelled.set()
        self._stop.set()

    def _connect(self) -> cv2.VideoCapture:
        """An opened capture, else SourceError with the cause."""
        raise NotImplementedError

    def _open(self) -> SourceInfo:
        cap = first_connection(self.name, self.reconnect, self._connect, self._cancelled)
        if self._cancelled.is_set():
            cap.release()
            raise SourceError(self.name, "cancelled while opening")
        frames, fps = [], cap.get(cv2.CAP_PROP_FPS)
        try:
            for _ in range(3):  # a few frames: the first one proves the stream, the deltas give the real rate
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append((frame, cap.get(cv2.CAP_PROP_POS_MSEC)))
        except cv2.error as e:
            cap.release()
            raise SourceError(self.name, f"cannot read a frame: {one_line(e)}") from e
        if not frames:
            cap.release()
            raise SourceError(self.name, f"connected, but no frame came within {self.stall_timeout:g} s")
        stamps = [s for _, s in frames]
        deltas = [b - a for a, b in zip(stamps, stamps[1:])]
        if deltas and all(0 < d < 1000 for d in deltas):
            fps = round(1000.0 / statistics.median(deltas), 3)
        elif not (math.isfinite(fps) and 0 < fps <= 1000):
            fps = 30.0
        self._stamper = _Stamper(self.name, fps, self.stall_timeout)
        self._length = self._frame_count(cap)
        self._frames = FrameBuffer(self.mode, self.buffer)
        if not self._cancelled.is_set():
            self._stop.clear()
        self._failures = self._overwritten = 0
        self._handed: float | None = None  # when the reader last handed a frame over
        self._abandoned = False
        self._heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(cap, frames), name=f"source {self.name}", daemon=True)
        self._thread.start()
        return SourceInfo("video", float(fps), size=frames[0][0].shape[:2], live=True)

    @staticmethod
    def _frame_count(cap: cv2.VideoCapture) -> int | None:
        """Frames of a finite stream (a file or a VOD playlist over HTTP), None for a live one: FFmpeg knows no
        duration for a live stream, and OpenCV reports a negative or zero count."""
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        return int(n) if math.isfinite(n) and 0 < n < 1e12 else None

    def _at_the_end(self, frames_read: int) -> bool:
        """A finite stream that delivered (about) all its frames has ended: reconnecting would replay it."""
        return self._length is not None and frames_read >= self._length - max(2, self._length // 50)

    # -- reader thread --------------------------------------------------------------------------

    def _put(self, frame: np.ndarray, stamp_ms: float) -> None:
        # From the previous frame handed over, not read: a back-pressure wait in put() is no wait for the source.
        waited = time.monotonic() - self._handed if self._handed is not None else 0.0
        t = self._stamper(stamp_ms, waited)
        self._overwritten += self._frames.put((frame, t), self._stop)
        self._handed = time.monotonic()
        self.stats.dropped = self._stamper.dropped + self._overwritten
        self.stats.duplicated = self._stamper.duplicated

    def _run(self, cap: cv2.VideoCapture | None, frames: list) -> None:
        try:
            for frame, stamp in frames:
                self._put(frame, stamp)
            advanced, read = time.monotonic(), len(frames)  # frames read on this connection
            while cap is not None and not self._stop.is_set():
                ok, frame = cap.read()
                self._heartbeat = time.monotonic()
                if self._stop.is_set():  # closed during the read: what it brought is not wanted any more
                    break
                if ok:
                    read += 1
                    duplicates = self._stamper.duplicated
                    self._put(frame, cap.get(cv2.CAP_PROP_POS_MSEC))
                    now = time.monotonic()  # after a back-pressure wait in _put, which is no stall
                    if self._stamper.duplicated == duplicates:
                        advanced, self._failures = now, 0
                    if now - advanced <= self.stall_timeout:
                        continue
                    cause = f"stalled: the timestamp has not advanced for {self.stall_timeout:g} s"
                elif self._at_the_end(read):
                    log.info("%s: the stream ended after its %d frames", self.name, self._length)
                    break
                else:
                    cause = "the stream ended or no frame came in time"
                cap.release()
                cap = self._reconnect(cause)
                advanced, read = time.monotonic(), 0
                self._length = self._frame_count(cap) if cap is not None else None
        except Exception as e:  # noqa: BLE001 - the thread must end the stream, not die silently
            self.fail(f"reader failed: {type(e).__name__}: {one_line(e)}")
        finally:
            if cap is not None:
                cap.release()
            self._frames.finish()

    def _reconnect(self, cause: str) -> cv2.VideoCapture | None:
        log.warning("%s: %s; reconnecting", self.name, cause)
        while self._failures < self.reconnect.attempts:
            if self._stop.wait(self.reconnect.delay(self._failures)):
                return None
            self._failures += 1
            try:
                cap = self._connect()
            except SourceError as e:
                cause = e.cause
                log.info("%s: reconnect attempt %d/%d failed: %s", self.name, self._failures,
                         self.reconnect.attempts, cause)
                continue
            finally:
                self._heartbeat = time.monotonic()
            self.stats.reconnects += 1
            self._stamper.new_connection()
            log.info("%s: reconnected (attempt %d)", self.name, self._failures)
            return cap
        if not self._stop.is_set():
            n = self.reconnect.attempts
            self.fail(f"{cause}; reconnection is off" if n == 0 else f"gave up after {n} reconnect attempts: {cause}")
        return None

    # -- consumer ---------------------------------------------------------------------------------

    def _packets(self) -> Iterator[Packet]:
        patience = self.stall_timeout + self.open_timeout + self.reconnect.max_interval + self.watchdog_slack
        while True:
            item = self._frames.get(timeout=0.1)
            if item is not None:
                frame, t = item
                yield Packet(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), t)
                continue
            if self._frames.finished or self._thread is None or not self._thread.is_alive():
                if len(self._frames) == 0:
                    return
                continue
            if time.monotonic() - self._heartbeat > patience:
                self.fail(f"the reader has been blocked for over {patience:g} s; giving up")
                self._stop.set()
                self._abandoned = True
                return

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._frames.finish()
            self._thread.join(timeout=0.0 if self._abandoned else 2.0)
            if self._thread.is_alive():  # inside a native read: it releases the capture when that returns
                log.warning("%s: reader thread still busy in a read; left to finish in the background", self.name)
                # A read gives up after stall_timeout, a connect after open_timeout (see UrlVideoSource).
                _leave_behind(self._thread, time.monotonic() + max(self.stall_timeout, self.open_timeout) + 1.0)
            self._thread = None


class CameraSource(_LiveVideoSource):
    """A local camera by index (V4L2 on Linux, the platform's default backend elsewhere).

    Args:
        index: camera index (0 = the first camera).
        width, height, fps: requested capture settings (the camera may choose others).
        mode, buffer, reconnect, stall_timeout, open_timeout: see the module docstring.
    Packets: (H, W, 3) uint8 RGB frames.
    """

    def __init__(self, index: int = 0, width: int | None = None, height: int | None = None, fps: float | None = None,
                 **options) -> None:
        super().__init__(f"camera {index}", **options)
        if int(index) != index or index < 0:
            raise SourceError(self.name, f"index={index!r} must be an integer >= 0")
        self.index = int(index)
        self.settings = {cv2.CAP_PROP_FRAME_WIDTH: width, cv2.CAP_PROP_FRAME_HEIGHT: height, cv2.CAP_PROP_FPS: fps}

    def _connect(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self.name, "cannot open the camera (absent, busy, or no permission)")
        for prop, value in self.settings.items():
            if value is not None:
                cap.set(prop, value)
        return cap


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _diagnose(url: str, timeout: float) -> str:
    """Why a TCP-based URL could not be opened, where a plain connection attempt can tell."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+")[-1]
    defaults = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}
    if scheme not in defaults or not parts.hostname:
        return "no video could be opened (unreachable, no data, or not a video stream)"
    address = (parts.hostname, parts.port or defaults[scheme])
    try:
        with socket.create_connection(address, timeout=min(timeout, 3.0)):
            pass
    except ConnectionRefusedError:
        return f"connection refused by {address[0]}:{address[1]}"
    except socket.gaierror as e:
        return f"cannot resolve host {address[0]!r}: {e.strerror}"
    except OSError as e:
        return f"cannot connect to {address[0]}:{address[1]}: {e.strerror or one_line(e)}"
    return "the server answers, but no video could be opened from this URL"


class _PyAvCapture:
    """What the live reader uses of ``cv2.VideoCapture`` (``read``, ``get``, ``release``), over PyAV.

    Unlike OpenCV, every frame keeps its own size, and the timestamps are the decoder's own. A damaged packet is
    a counted, logged skip (:func:`pyav_frames`, as for files); a timeout or a dropped connection ends the reads,
    so the source reconnects.
    """

    def __init__(self, url: str, options: dict[str, str], open_timeout: float, read_timeout: float,
                 skips: SkipLog) -> None:
        import av

        self._av = av
        self.container = av.open(url, options=options, timeout=(open_timeout, read_timeout))
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(redact(url), "no video track in the stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._frames = pyav_frames(self.container, self.stream, skips)
        self._ms = math.nan

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            frame = next(self._frames)
        except (StopIteration, self._av.FFmpegError, OSError):  # the end, a timeout, a dropped connection
            return False, None
        self._ms = 1000.0 * frame.time if frame.time is not None else math.nan
        return True, frame.to_ndarray(format="bgr24")

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self._ms
        if prop == cv2.CAP_PROP_FPS:
            rate = self.stream.average_rate or self.stream.guessed_rate
            return float(rate) if rate else 0.0
        if prop == cv2.CAP_PROP_FRAME_COUNT:  # 0 for a live stream: no known length
            return float(self.stream.frames or 0)
        return 0.0

    def release(self) -> None:
        self.container.close()


class UrlVideoSource(_LiveVideoSource):
    """A network video stream (rtsp, rtmp, http(s) incl. HLS playlists, udp, rtp, tcp, srt) via FFmpeg: OpenCV's
    (default) or PyAV's.

    Opening gives up after ``open_timeout`` s and a read after ``stall_timeout`` s (OpenCV's
    ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``, PyAV's ``timeout``), so a dead server
    never blocks.

    Args:
        url: the stream's URL (a password in it is never logged).
        ffmpeg_options: FFmpeg demuxer/protocol options, e.g. ``{"rtsp_transport": "tcp"}``
            (OpenCV: through ``OPENCV_FFMPEG_CAPTURE_OPTIONS``; PyAV: ``av.open(options=)``).
        backend: ``"opencv"`` or ``"pyav"`` (keeps each frame's own size, as a video file's PyAV backend does).
        mode, buffer, reconnect, stall_timeout, open_timeout: see the module docstring.
    Packets: (H, W, 3) uint8 RGB frames.
    """

    def __init__(self, url: str, ffmpeg_options: dict[str, str] | None = None, backend: str = "opencv",
                 **options) -> None:
        super().__init__(redact(url), **options)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(self.name, f"unsupported URL scheme {scheme!r} (supported: {', '.join(URL_SCHEMES)})")
        if backend not in ("opencv", "pyav"):
            raise SourceError(self.name, f"backend={backend!r} is not one of 'opencv', 'pyav'")
        self.url = url
        self.ffmpeg_options = dict(ffmpeg_options or {})
        self.backend = backend
        self._skips = SkipLog(self.name, self.stats)  # one log budget for the source, across reconnects

    def _connect(self) -> cv2.VideoCapture:
        if self.backend == "pyav":
            return self._connect_pyav()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout * 1000)]
        with _ENV_LOCK:
            key, saved = "OPENCV_FFMPEG_CAPTURE_OPTIONS", os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            if self.ffmpeg_options:
                os.environ[key] = "|".join(f"{k};{v}" for k, v in self.ffmpeg_options.items())
            try:
                cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
            finally:
                if self.ffmpeg_options:
                    if saved is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = saved
        if not cap.isOpened():
            cap.release()
            raise SourceError(self.name, _diagnose(self.url, self.open_timeout))
        return cap

    def _connect_pyav(self) -> _PyAvCapture:
        import av

        try:
            return _PyAvCapture(self.url, {k: str(v) for k, v in self.ffmpeg_options.items()}, self.open_timeout,
                                self.stall_timeout, self._skips)
        except (ConnectionError, TimeoutError) as e:  # PyAV's own subclasses them: the socket says more
            raise SourceError(self.name, _diagnose(self.url, self.open_timeout)) from e
        except (av.FFmpegError, OSError) as e:
            raise SourceError(self.name, f"cannot open the stream: {one_line(e)}") from e
