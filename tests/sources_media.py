"""Helpers of the source tests: generated media, an ffmpeg loopback publisher, scripted captures for the
live-source machinery, and a stand-in ``sounddevice`` module."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import types
from pathlib import Path

import av
import numpy as np
from memstream.pipelines.sources import UrlVideoSource
from memstream.pipelines.streams import SourceError

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
FFMPEG = shutil.which("ffmpeg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path: Path, size: tuple[int, int], frames: int, fps: int = 25, start: int = 0) -> None:
    """An mpeg2video file of ``frames`` frames of (height, width) ``size``; frame i is filled with
    (start + i) * 8 % 256 (in every channel), so frames can be told apart after decoding."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((*size, 3), (start + i) * 8 % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_resolution_change(path: Path, frames: int = 20) -> None:
    """An MPEG-TS whose first ``frames`` frames are 120x160 and the next ``frames`` 240x320 (two
    transport streams back to back, as ``ffmpeg -i concat:a.ts|b.ts -c copy`` makes)."""
    a, b = path.with_suffix(".a.ts"), path.with_suffix(".b.ts")
    write_video(a, (120, 160), frames)
    write_video(b, (240, 320), frames, start=frames)
    path.write_bytes(a.read_bytes() + b.read_bytes())


class Publisher:
    """ffmpeg publishing a live test pattern as MPEG-TS on 127.0.0.1: over HTTP (``-listen 1``: the reader connects
    to it) or UDP (sent whether or not anybody reads)."""

    def __init__(self, port: int, fps: int = 25, protocol: str = "http") -> None:
        if protocol == "http":
            self.url, target = f"http://127.0.0.1:{port}/live.ts", ["-listen", "1", f"http://127.0.0.1:{port}/live.ts"]
        else:
            self.url, target = f"udp://127.0.0.1:{port}", [f"udp://127.0.0.1:{port}?pkt_size=1316"]
        self.command = [FFMPEG, "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                        f"testsrc=size=160x120:rate={fps}", "-c:v", "mpeg1video", "-g", "5", "-f", "mpegts", *target]
        self.process: subprocess.Popen | None = None

    def start(self) -> Publisher:
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


class ScriptedCapture:
    """Stands in for ``cv2.VideoCapture``: frames with the given timestamps (ms), one per ``period``
    s, then reads fail. Frame i is filled with ``ids[i] % 256``; ``hang`` makes every read after the
    first three (those of ``open``) block that long; ``waits[i]``, where given, replaces ``period`` before read i."""

    def __init__(self, stamps, period: float = 0.0, fps: float = 25.0, ids=None, hang: float = 0.0,
                 frame_count: float = -1.0, waits=None) -> None:
        self.stamps = list(stamps)
        self.waits = list(waits or [])
        self.frame_count = frame_count  # what FFmpeg reports: the length of a finite stream, <= 0 when live
        self.ids = list(ids) if ids is not None else list(range(len(self.stamps)))
        self.period, self.fps, self.hang = period, fps, hang
        self.index = -1
        self.released = False

    def read(self):
        if self.hang and self.index >= 2:
            time.sleep(self.hang)
        wait = self.waits[self.index + 1] if self.index + 1 < len(self.waits) else self.period
        if wait:
            time.sleep(wait)
        self.index += 1
        if self.index >= len(self.stamps):
            return False, None
        return True, np.full((6, 8, 3), self.ids[self.index] % 256, np.uint8)

    def get(self, prop: int) -> float:
        import cv2

        if prop == cv2.CAP_PROP_POS_MSEC:
            return float(self.stamps[min(self.index, len(self.stamps) - 1)])
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return self.frame_count
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


class ScriptedSource(UrlVideoSource):
    """A live source whose connections follow a script: each item is a ScriptedCapture, or a string
    (the cause of a failed connection attempt); past the script every attempt is refused."""

    watchdog_slack = 0.5

    def __init__(self, connections, **options) -> None:
        super().__init__("http://scripted.invalid/live", **options)
        self.script = list(connections)
        self.connects = 0

    def _connect(self):
        self.connects += 1
        item = self.script.pop(0) if self.script else "connection refused (end of script)"
        if isinstance(item, str):
            raise SourceError(self.name, item)
        return item


def fake_sounddevice(devices=("Fake Mic",), blocks: int = 20, nan_block: int | None = 3) -> types.ModuleType:
    """A ``sounddevice`` stand-in: the first stream started gives ``blocks`` blocks of a ramp
    (sample k = (k % 100) / 100, every channel) as fast as it can, block ``nan_block`` holding one NaN;
    streams started later give nothing (a device that went silent)."""
    mod = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def check_input_settings(device=None, channels=None, samplerate=None, dtype=None):
        if device is not None and not (isinstance(device, int) and 0 <= device < len(devices)) \
                and device not in devices:
            raise ValueError(f"No input device matching {device!r}")

    class InputStream:
        started = 0

        def __init__(self, device, channels, samplerate, dtype, blocksize, callback):
            self.channels, self.blocksize, self.callback = channels, blocksize, callback
            self.running = False

        def _run(self) -> None:
            for b in range(blocks):
                if not self.running:
                    return
                k = np.arange(b * self.blocksize, (b + 1) * self.blocksize)
                block = np.repeat(((k % 100) / 100).astype(np.float32)[:, None], self.channels, axis=1)
                if b == nan_block:
                    block[0, 0] = np.nan
                self.callback(block, self.blocksize, None, None)
                time.sleep(0.001)

        def start(self) -> None:
            self.running = True
            InputStream.started += 1
            if InputStream.started == 1:
                threading.Thread(target=self._run, daemon=True).start()

        def stop(self) -> None:
            self.running = False

        def close(self) -> None:
            self.running = False

    mod.PortAudioError = PortAudioError
    mod.check_input_settings = check_input_settings
    mod.InputStream = InputStream
    return mod
