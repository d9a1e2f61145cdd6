"""Audio sources: files (soundfile for WAV/FLAC/OGG/..., PyAV for the rest, including the audio track
of a video), the microphone (sounddevice), and raw PCM on stdin.

Packets: data (n, C) float32 at the source's native rate (the segmenter resamples and down-mixes),
time = stream time of the first sample in seconds. NaN/Inf samples are replaced by 0, counted in
``stats.skipped`` and logged once.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import re
import select
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from memstream.pipelines.sources.common import (
    BaseSource,
    NonFinite,
    Reconnect,
    SkipLog,
    check_file,
    first_connection,
    log,
    one_line,
)
from memstream.pipelines.streams import Packet, SourceError, SourceInfo

SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au", ".snd",
                      ".caf", ".w64", ".rf64"}
# name -> (numpy dtype, scale, offset): sample = (raw - offset) / scale
PCM_FORMATS = {"s16le": ("<i2", 2.0 ** 15, 0.0), "s32le": ("<i4", 2.0 ** 31, 0.0), "f32le": ("<f4", 1.0, 0.0),
               "u8": ("u1", 128.0, 128.0)}


def _check_block(name: str, block_seconds: float) -> float:
    if not (isinstance(block_seconds, (int, float)) and math.isfinite(block_seconds) and block_seconds > 0):
        raise SourceError(name, f"block_seconds={block_seconds!r} must be a positive number")
    return float(block_seconds)


# libsndfile's log of a WAV/AIFF header whose audio chunk claims more bytes than the file holds: "data : 128000
# (should be 63978)". A writer that could not seek back (ffmpeg or sox writing to a pipe) leaves a placeholder size
# there, not a real one: 0, or a value near 2^31 or 2^32.
_CHUNK_SIZE = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_PLACEHOLDER_SIZE = 0x7FFF0000


def cut_short(extra_info: str) -> str | None:
    """Why a WAV/AIFF file is cut short, from libsndfile's header log (``SoundFile.extra_info``), or None."""
    m = _CHUNK_SIZE.search(extra_info or "")
    if m is None:
        return None
    declared, held = int(m.group(1)), int(m.group(2))
    if declared == 0 or declared >= _PLACEHOLDER_SIZE or declared <= held:
        return None
    return f"the file is cut short: its header declares {declared} bytes of audio, it holds {held}"


def header_cut_short(path: Path) -> str | None:
    """:func:`cut_short` of a file decoded by PyAV: FFmpeg clamps a WAV's length to what the file holds and logs
    nothing, so libsndfile reads the header (None where it cannot)."""
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as f:
            return cut_short(f.extra_info)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None


def _to_float(array: np.ndarray) -> np.ndarray:
    """Decoded samples of any PCM dtype -> float32 in [-1, 1]."""
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "u":
        half = 2.0 ** (8 * array.dtype.itemsize - 1)
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    return (array.astype(np.float64) / 2.0 ** (8 * array.dtype.itemsize - 1)).astype(np.float32)


class AudioFileSource(BaseSource):
    """An audio file, or the audio track of a video file.

    Args:
        path: WAV/FLAC/OGG/AIFF/... (soundfile) or anything FFmpeg reads (PyAV): mp3, m4a, mp4, mkv, ...
        block_seconds: packet length for soundfile (PyAV gives the codec's frames as they are).
        backend: ``None`` (by suffix, soundfile falling back to PyAV), ``"soundfile"`` or ``"pyav"``.
    Packets: (n, C) float32. Read on the runner's loop (``read_on_loop``): a local file never waits, and decoding a
    packet costs less than handing it over from a reader thread.
    """

    kind = "audio"
    read_on_loop = True

    def __init__(self, path: str | Path, block_seconds: float = 0.1, backend: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(name or str(path))
        if backend not in (None, "soundfile", "pyav"):
            raise SourceError(self.name, f"backend={backend!r} is not one of None, 'soundfile', 'pyav'")
        self.path, self.backend = Path(path), backend
        self.block_seconds = _check_block(self.name, block_seconds)
        self._file = self._container = self._blocks = self._first = None
        self._cut_short: str | None = None  # why the file holds less than its header says (libsndfile's reading)
        self._finite = NonFinite(self.name, self.stats)

    def _open(self) -> SourceInfo:
        path = check_file(self.name, self.path)
        causes = []
        if self.backend == "soundfile" or (self.backend is None and path.suffix.lower() in SOUNDFILE_SUFFIXES):
            import soundfile

            try:
                info = self._open_soundfile(path)
                if info.duration is not None or self.backend == "soundfile":
                    return info
                # No length in its header (a FLAC written to a pipe): libsndfile fails near the end of such a file
                # ("psf_fseek() failed"); FFmpeg reads it to the end.
                self._close()
            except SourceError:
                raise
            except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
                causes.append(f"soundfile: {getattr(e, 'error_string', None) or one_line(e)}")
                self._close()
                if self.backend == "soundfile":
                    raise SourceError(self.name, f"cannot decode audio ({causes[0]})") from e
        try:
            return self._open_pyav(path)
        except SourceError as e:
            if not causes or "zero-length" in e.cause:
                raise
            raise SourceError(self.name, f"{e.cause} ({causes[0]})") from e

    def _open_soundfile(self, path: Path) -> SourceInfo:
        import soundfile

        self._file = soundfile.SoundFile(str(path))
        rate, channels, frames = self._file.samplerate, self._file.channels, self._file.frames
        if frames <= 0:
            raise SourceError(self.name, "zero-length audio (the file holds no samples)")
        # Its samples are read to the end and run; then the stream ends as failed, naming the cause.
        self._cut_short = cut_short(self._file.extra_info)
        block = max(1, int(round(rate * self.block_seconds)))
        self._blocks = (b for b in self._file.blocks(blocksize=block, dtype="float32", always_2d=True))
        # A FLAC written to a pipe has no length in its header: libsndfile reports SF_COUNT_MAX frames.
        duration = frames / rate if frames < 2 ** 62 else None  # then _open reads the file with PyAV
        return SourceInfo("audio", float(rate), channels=channels, duration=duration)

    def _open_pyav(self, path: Path) -> SourceInfo:
        import av

        try:
            self._container = av.open(str(path))
        except EOFError as e:  # FFmpeg's end of file before a single packet
            raise SourceError(self.name, "zero-length audio (the file ends before any data)") from e
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise SourceError(self.name, f"cannot decode audio: {one_line(e)}") from e
        if not self._container.streams.audio:
            raise SourceError(self.name, "no audio track")
        stream = self._container.streams.audio[0]
        if stream.codec_context is None:
            raise SourceError(self.name, "unsupported audio codec or sample format (no decoder for it)")
        rate = stream.codec_context.sample_rate or stream.rate
        channels = stream.codec_context.layout.nb_channels or getattr(stream.codec_context, "channels", 0)
        if not rate or not channels:
            raise SourceError(self.name, f"unsupported audio stream (rate={rate}, channels={channels})")
        self._skips = SkipLog(self.name, self.stats)
        self._decode_error: str | None = None  # the latest undecodable packet's error
        self._blocks = self._read_pyav(stream, rate, channels)
        first = next(self._blocks, None)
        if first is None:
            if self._decode_error is not None:
                raise SourceError(self.name, f"cannot decode audio: {self._decode_error}")
            raise SourceError(self.name, "zero-length audio (no samples decoded)")
        self._first = first
        if self._cut_short is None and path.suffix.lower() in SOUNDFILE_SUFFIXES:  # also with backend="pyav"
            self._cut_short = header_cut_short(path)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1e6
        return SourceInfo("audio", float(rate), channels=channels, duration=duration)

    def _read_pyav(self, stream, rate: int, channels: int) -> Iterator[np.ndarray]:
        import av

        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as e:  # a damaged packet: skip it, the stream goes on
                self._decode_error = one_line(e)
                self._skips(f"skipped an undecodable audio packet at {packet.pts}: {self._decode_error}")
                continue
            for frame in frames:
                c = frame.layout.nb_channels
                if frame.sample_rate != rate or c != channels:
                    self._skips(f"skipped a frame of {frame.sample_rate} Hz x {c} channels in a {rate} Hz x "
                                f"{channels} stream")
                    continue
                array = frame.to_ndarray()
                array = array.T if frame.format.is_planar else array.reshape(-1, c)
                if len(array):
                    yield _to_float(array)

    def _packets(self) -> Iterator[Packet]:
        rate, position = self.info.rate, 0
        first, self._first = self._first, None
        for block in itertools.chain([first] if first is not None else [], self._blocks):
            yield Packet(self._finite(np.ascontiguousarray(block, dtype=np.float32)), position / rate)
            position += len(block)
        if self._cut_short:
            self.fail(f"{self._cut_short} ({position / rate:.3f} s decoded)")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._container is not None:
            self._container.close()
        self._file = self._container = self._blocks = None


class StdinPcmSource(BaseSource):
    """Raw interleaved PCM from stdin (``--source -``) or any binary stream.

    Args:
        rate: samples per second (the data carries no header, so it must be given).
        channels: interleaved channels.
        format: ``s16le``, ``s32le``, ``f32le`` or ``u8``.
        stream: a binary file object; default ``sys.stdin.buffer``.
        block_seconds: packet length (at most: a pipe's read gives what has arrived).
    Packets: (n, C) float32. Opening waits for the first data; no data at all is an error. The runner's reader
    thread opens it (``opens_in_reader``), so the program never blocks in a read of its own: ``cancel()`` (from any
    thread) ends a wait at open or between packets within ``POLL`` seconds. stdin itself is read from its file
    descriptor, not through ``sys.stdin.buffer``: a reader thread left waiting in a buffered read would hold that
    buffer's lock, and the interpreter aborts at exit when it finds the lock taken.
    """

    kind = "audio"
    opens_in_reader = True
    POLL = 0.1

    def __init__(self, rate: int, channels: int = 1, format: str = "s16le", stream: BinaryIO | None = None,
                 block_seconds: float = 0.1, name: str = "stdin") -> None:
        super().__init__(name)
        if format not in PCM_FORMATS:
            raise SourceError(name, f"unsupported sample format {format!r} (supported: {', '.join(PCM_FORMATS)})")
        if not (isinstance(rate, (int, float)) and rate > 0 and int(rate) == rate):
            raise SourceError(name, f"rate={rate!r} must be a positive integer (samples per second)")
        if not (isinstance(channels, int) and channels > 0):
            raise SourceError(name, f"channels={channels!r} must be a positive integer")
        self.rate, self.channels, self.format = int(rate), channels, format
        self.stream = stream
        dtype, self._scale, self._offset = PCM_FORMATS[format]
        self._dtype = np.dtype(dtype)
        self._frame_bytes = self._dtype.itemsize * channels
        self._block_bytes = max(1, int(round(self.rate * _check_block(name, block_seconds)))) * self._frame_bytes
        self._finite = NonFinite(self.name, self.stats)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop waiting for data, from any thread: a wait at open fails as cancelled, a running reading ends."""
        self._cancelled.set()

    def _open(self) -> SourceInfo:
        if self.stream is None:
            if sys.stdin is None or sys.stdin.isatty():
                raise SourceError(self.name, "stdin is a terminal or closed: pipe raw PCM into it")
            self._read = self._descriptor_reader(sys.stdin.buffer)
        else:
            self._read = self.stream.read
        self._pending = self._read(self._block_bytes)
        if not self._pending:
            if self._cancelled.is_set():
                raise SourceError(self.name, "cancelled while waiting for data")
            raise SourceError(self.name, "zero-length audio: no data on the input")
        return SourceInfo("audio", float(self.rate), channels=self.channels)

    def _descriptor_reader(self, stream: BinaryIO):
        """read(n) on ``stream``'s file descriptor that gives up (b"") once cancelled; ``stream.read`` where there
        is no descriptor to wait on (an in-memory stream, or select() that cannot wait on files: Windows)."""
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return stream.read
        if os.name != "posix":
            return stream.read

        def read(n: int) -> bytes:
            while not self._cancelled.is_set():
                if select.select([fd], [], [], self.POLL)[0]:
                    return os.read(fd, n)
            return b""

        return read

    def _decode(self, raw: bytes) -> np.ndarray:
        samples = np.frombuffer(raw, dtype=self._dtype).reshape(-1, self.channels).astype(np.float64)
        samples = ((samples - self._offset) / self._scale).astype(np.float32)
        return self._finite(samples)

    def _packets(self) -> Iterator[Packet]:
        position, carry = 0, b""
        while True:
            raw = self._pending if self._pending is not None else self._read(self._block_bytes)
            self._pending = None
            if not raw:
                break
            raw = carry + raw
            whole = len(raw) - len(raw) % self._frame_bytes
            raw, carry = raw[:whole], raw[whole:]
            if whole:
                samples = self._decode(raw)
                yield Packet(samples, position / self.rate)
                position += len(samples)
        if carry and not position:  # as with no data at all: not one sample came
            raise SourceError(self.name, f"zero-length audio: {len(carry)} byte(s) on the input, less than one "
                                         f"{self.format} frame of {self.channels} channel(s)")
        if carry:
            self.stats.skipped += 1
            log.warning("%s: dropped %d trailing bytes, less than one %s frame of %d channel(s)", self.name,
                        len(carry), self.format, self.channels)


class MicrophoneSource(BaseSource):
    """A microphone through sounddevice (PortAudio), captured in a callback thread.

    Args:
        device: PortAudio input device index or name substring; None = the default input.
        rate, channels: capture settings (native; the segmenter converts).
        block_seconds: callback/packet length.
        queue_seconds: audio kept while the consumer is busy; older blocks are dropped (counted).
        reconnect: policy when no audio arrives for ``stall_timeout`` s (with ``at_open``, also for a device
            that cannot be opened at start).
    Packets: (n, C) float32; time counts dropped samples too, so it stays wall-true.
    """

    kind = "audio"

    def __init__(self, device: int | str | None = None, rate: int = 16000, channels: int = 1,
                 block_seconds: float = 0.05, queue_seconds: float = 5.0, reconnect: Reconnect | None = None,
                 stall_timeout: float = 2.0) -> None:
        super().__init__("microphone" if device is None else f"microphone {device}")
        if not (isinstance(rate, (int, float)) and rate > 0 and int(rate) == rate):
            raise SourceError(self.name, f"rate={rate!r} must be a positive integer")
        if not (isinstance(channels, int) and channels > 0):
            raise SourceError(self.name, f"channels={channels!r} must be a positive integer")
        self.device, self.rate, self.channels = device, int(rate), channels
        self.block = max(1, int(round(rate * _check_block(self.name, block_seconds))))
        self.capacity = max(2, int(math.ceil(queue_seconds * rate / self.block)))
        self.reconnect = reconnect if reconnect is not None else Reconnect()
        self.stall_timeout = float(stall_timeout)
        self._stream = None
        self._lost = 0
        self._lock = threading.Lock()
        self._finite = NonFinite(self.name, self.stats)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop waiting for the device (``reconnect.at_open``), from any thread."""
        self._cancelled.set()

    def _sounddevice(self):
        try:
            import sounddevice
        except ImportError as e:
            raise SourceError(self.name, "sounddevice is not installed (pip install sounddevice)") from e
        except OSError as e:
            raise SourceError(self.name, f"PortAudio is not available ({one_line(e)}); install libportaudio2") from e
        return sounddevice

    def _start(self) -> None:
        sd = self._sounddevice()
        try:
            sd.check_input_settings(device=self.device, channels=self.channels, samplerate=self.rate,
                                    dtype="float32")
            self._queue: queue.Queue[np.ndarray] = queue.Queue(self.capacity)
            self._stream = sd.InputStream(device=self.device, channels=self.channels, samplerate=self.rate,
                                          dtype="float32", blocksize=self.block, callback=self._callback)
            self._stream.start()
        except (sd.PortAudioError, ValueError) as e:
            self._stop_stream()
            raise SourceError(self.name, f"no usable input device: {one_line(e)}") from e

    def _open(self) -> SourceInfo:
        first_connection(self.name, self.reconnect, self._start, self._cancelled)  # a device plugged in late
        return SourceInfo("audio", float(self.rate), channels=self.channels, live=True)

    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            log.debug("%s: PortAudio status %s", self.name, status)
        block = np.array(indata, dtype=np.float32, copy=True)
        while True:
            try:
                self._queue.put_nowait(block)
                return
            except queue.Full:  # the consumer is behind: drop the oldest block, keep the timeline
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                with self._lock:
                    self._lost += len(old)
                    self.stats.dropped += len(old)

    def _packets(self) -> Iterator[Packet]:
        position = seen_lost = failures = 0
        while True:
            try:
                if self._stream is None:
                    raise queue.Empty
                block = self._queue.get(timeout=self.stall_timeout)
            except queue.Empty:  # the device went silent (or could not be reopened): reopen it, within limits
                if failures >= self.reconnect.attempts:
                    tried = f" and {failures} reopen attempts failed" if failures else ""
                    self.fail(f"no audio for {self.stall_timeout:g} s{tried}")
                    return
                log.warning("%s: no audio for %g s; reopening the device", self.name, self.stall_timeout)
                self._stop_stream()
                time.sleep(self.reconnect.delay(failures))
                failures += 1
                try:
                    self._start()
                    self.stats.reconnects += 1
                except SourceError as e:
                    log.info("%s: reopen attempt %d failed: %s", self.name, failures, e.cause)
                continue
            failures = 0
            with self._lock:
                position += self._lost - seen_lost
                seen_lost = self._lost
            yield Packet(self._finite(block), position / self.rate)
            position += len(block)

    def _stop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # noqa: BLE001 - a vanished device may fail to close; nothing to keep
                log.debug("%s: error closing the input stream", self.name, exc_info=True)

    def _close(self) -> None:
        self._stop_stream()
