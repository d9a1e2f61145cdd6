"""Live sources: a real stream on loopback (ffmpeg publishes, is killed and restarted, the source
reconnects), and the reader machinery driven by scripted captures: latest/all modes, drop and
duplicate counting, stalls, the attempt limit, a reader stuck in a native call, a prompt close; the
microphone through a stand-in sounddevice."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from memstream.pipelines.sources import MicrophoneSource, Reconnect, UrlVideoSource
from memstream.pipelines.streams import SourceError
from sources_media import FFMPEG, Publisher, ScriptedCapture, ScriptedSource, fake_sounddevice, free_port

FAST = Reconnect(interval=0.02, backoff=1.0, max_interval=0.02, attempts=2)


def _times_increase(packets) -> bool:
    times = [p.time for p in packets]
    return all(b >= a for a, b in zip(times, times[1:]))


def _run(source, limit: float = 10.0, per_packet: float = 0.0):
    """All packets of ``source`` (opened and closed here), failing if it takes longer than ``limit`` s."""
    deadline, packets = time.monotonic() + limit, []
    with source:
        for packet in source:
            packets.append(packet)
            assert time.monotonic() < deadline, "the source did not end in time"
            time.sleep(per_packet)
    return packets


def _open_once_listening(source, publisher, within: float) -> None:
    """Open a loopback source whose ffmpeg publisher was just started: it needs a moment before it listens. When it
    began to listen between the capture's refused attempt and the source's diagnosis, the diagnosis's own connection
    took the one client `-listen 1` serves ("the server answers, ..."): the publisher starts again."""
    deadline = time.monotonic() + within
    while True:
        try:
            source.open()
            return
        except SourceError as e:
            assert time.monotonic() < deadline, e
            if "the server answers" in e.cause:
                publisher.kill()
                publisher.start()
            else:
                assert "connection refused" in e.cause, e
            time.sleep(0.1)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: needed to publish the loopback live stream")
@pytest.mark.parametrize("mode,backend", [("latest", "opencv"), ("all", "opencv"), ("all", "pyav")])
def test_loopback_stream_survives_publisher_restart(mode, backend):
    deadline = time.monotonic() + 25.0
    publisher = Publisher(free_port()).start()
    source = UrlVideoSource(publisher.url, mode=mode, reconnect=Reconnect(0.2, 1.5, 0.8, 8), stall_timeout=2.0,
                            open_timeout=3.0, backend=backend)
    try:
        _open_once_listening(source, publisher, within=10.0)
        assert source.info.live and source.info.size == (120, 160) and source.info.rate == pytest.approx(25)
        phase, after, packets, gone = "first", 0, [], 0.0
        for packet in source:
            assert time.monotonic() < deadline, f"no end in sight (phase {phase}, {source.stats})"
            packets.append(packet)
            if mode == "latest":
                time.sleep(0.06)  # a consumer slower than the stream: latest drops, never builds a backlog
            if phase == "first" and len(packets) >= 15:
                publisher.kill()
                time.sleep(0.3)
                publisher.start()
                phase = "restarted"
            elif phase == "restarted" and source.stats.reconnects >= 1:
                after += 1
                if after >= 15:
                    publisher.kill()
                    phase, gone = "gone", time.monotonic()
        assert phase == "gone" and source.stats.reconnects >= 1 and after >= 15
        assert time.monotonic() - gone < 8.0  # 8 attempts, 4.8 s of waits: then the stream ends cleanly
        assert "gave up after 8 reconnect attempts" in source.stats.errors[-1]
        assert {p.data.shape for p in packets} == {(120, 160, 3)} and _times_increase(packets)
        if mode == "latest":
            assert source.stats.dropped > 0
    finally:
        publisher.kill()
        source.close()


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: needed to publish the loopback live stream")
def test_the_runner_rides_out_a_publisher_restart():
    """Through StreamRunner: a live loopback stream whose publisher is killed and restarted reconnects and keeps
    producing segments in order; past its attempt limit it ends as an error while a file stream beside it ends
    cleanly. The summary counts the reconnect."""
    import torch
    from memstream.export import TorchBackend
    from memstream.memory import CoreConfig, MemoryCore
    from memstream.pipelines.core_task import CoreProbeTask
    from memstream.pipelines.runner import StreamRunner
    from memstream.pipelines.streams import Packet, Source, SourceInfo

    class Frames(Source):  # a finite video stream beside the live one
        name = "frames"

        def open(self):
            self.info = SourceInfo("video", 25.0)
            return self.info

        def __iter__(self):
            for i in range(40):
                yield Packet(np.full((120, 160, 3), i, np.uint8), i / 25)

    torch.manual_seed(0)
    core = MemoryCore(CoreConfig(dim=32, heads=2, layers=2, ff_mult=2, segment=4, memory_length=6)).eval()
    task = CoreProbeTask("video", core, frame_size=(24, 32), grid=(6, 8))
    publisher = Publisher(free_port()).start()
    live = UrlVideoSource(publisher.url, mode="all", reconnect=Reconnect(0.2, 1.5, 0.8, 6), stall_timeout=2.0,
                          open_timeout=3.0)
    deadline = time.monotonic() + 40.0
    try:
        _open_once_listening(live, publisher, within=10.0)
        runner = StreamRunner(task, TorchBackend(core), max_streams=2, batch_timeout=0.02)
        runner.add(live, "live", opened=True)
        runner.add(Frames(), "file")
        phase, seen = "first", {"live": [], "file": []}
        for r in runner.results():
            assert time.monotonic() < deadline, f"no end in sight (phase {phase}, {live.stats})"
            seen[r.stream].append(r)
            n = len(seen["live"])
            if r.stream != "live":
                continue
            if phase == "first" and n >= 8:
                publisher.kill()
                time.sleep(0.3)
                publisher.start()
                phase, at_restart = "restarted", n
            elif phase == "restarted" and live.stats.reconnects >= 1 and n >= at_restart + 8:
                publisher.kill()
                phase = "gone"
    finally:
        publisher.kill()
        live.close()
    rows = runner.summary["streams"]
    assert phase == "gone" and rows["live"]["reconnects"] >= 1
    assert rows["live"]["status"] == "error" and "gave up after 6 reconnect attempts" in rows["live"]["error"]
    assert rows["file"]["status"] == "ended" and len(seen["file"]) == 10
    assert [r.index for r in seen["live"]] == list(range(len(seen["live"])))
    times = [r.time for r in seen["live"]]
    assert times == sorted(times) and rows["live"]["segments"] == len(seen["live"])


def test_duplicates_and_gaps_are_counted():
    stamps = [0, 40, 80, 80, 120, 240, 280, 320, 320, 320, 360]  # 3 repeats, one gap of 3 intervals
    source = ScriptedSource([ScriptedCapture(stamps)], mode="all", reconnect=Reconnect(attempts=0))
    packets = _run(source)
    assert len(packets) == len(stamps) and (source.stats.duplicated, source.stats.dropped) == (3, 2)
    assert [p.time for p in packets] == pytest.approx([s / 1000 for s in stamps])
    assert source.stats.errors == ["the stream ended or no frame came in time; reconnection is off"]


def test_frames_without_timestamps_keep_their_spacing_through_a_burst():
    """A capture with no timestamps (MJPEG over HTTP, some cameras) is stamped with arrival times. Frames held up by
    a hiccup and then delivered at once keep a frame's spacing (they all shared one time before, so video segments
    overlapped). The times then lead the wall clock by at most the burst's 9 frames."""
    waits = [0.04] * 15 + [0.4] + [0.0] * 9 + [0.04] * 15  # 0.4 s hiccup, then the 9 held frames at once
    capture = ScriptedCapture([float("nan")] * len(waits), waits=waits)
    source = ScriptedSource([capture], mode="all", reconnect=Reconnect(attempts=0))
    start = time.monotonic()
    packets = _run(source)
    elapsed = time.monotonic() - start
    times = np.array([p.time for p in packets])
    assert len(packets) == len(waits) and source.stats.dropped == 0
    assert np.diff(times).min() > 0.0399  # a frame at the source's 25 fps between any two
    assert elapsed - 0.3 < times[-1] < elapsed + 9 * 0.04 + 0.05


def test_the_lead_of_arrival_times_over_the_wall_clock_is_bounded():
    """A long burst (2 s of held frames delivered at once) would push spaced arrival times far ahead of the wall
    clock: past MAX_LEAD frames are MIN_STEP apart, so times still increase and the lead stays bounded."""
    from memstream.pipelines.sources.live import _Stamper

    waits = [0.04] * 10 + [2.0] + [0.0] * 60 + [0.04] * 10
    source = ScriptedSource([ScriptedCapture([-1.0] * len(waits), waits=waits)], mode="all",
                            reconnect=Reconnect(attempts=0))
    times = []
    with source:
        opened_at = source._stamper.t0
        for packet in source:
            times.append(packet.time)
    assert len(times) == len(waits) and np.diff(times).min() > 0
    elapsed = time.monotonic() - opened_at
    assert times[-1] < elapsed + _Stamper.MAX_LEAD + 0.1


@pytest.mark.parametrize("how", ["timestamps restart", "timestamps restart below zero", "reconnect"])
def test_an_outage_is_counted_as_dropped_frames_and_logged(how, caplog):
    """A real-time stream (25 fps) that goes silent for ~1.5 s: its publisher restarted with timestamps from 0 on
    the same connection (OpenCV counts from the first packet's time, so the new ones can come out negative), or the
    connection dropped and came back. The timeline goes on at the wall clock, and the frames the outage took count
    as dropped, with a warning that says so."""
    paced = [40 * i for i in range(20)]
    if how.startswith("timestamps restart"):
        waits = [0.04] * 20 + [1.5] + [0.04] * 9
        offset = -3080 if how.endswith("below zero") else 0
        connections = [ScriptedCapture(paced + [offset + s for s in paced[:10]], waits=waits)]
        reconnect, where = Reconnect(attempts=0), "where the timestamps jumped"
    else:
        connections = [ScriptedCapture(paced, period=0.04), ScriptedCapture(paced[:10], period=0.04)]
        reconnect, where = Reconnect(interval=1.5, backoff=1.0, max_interval=1.5, attempts=1), "after a reconnect"
    source = ScriptedSource(connections, mode="all", reconnect=reconnect)
    with caplog.at_level("WARNING", logger="memstream.pipelines.sources"):
        packets = _run(source)
    times = [p.time for p in packets]
    assert len(packets) == 30 and _times_increase(packets)
    gap = times[20] - times[19]
    assert 1.4 < gap < 2.2 and 32 <= source.stats.dropped <= 55  # ~1.5 s (+ the read) at 25 fps
    assert source.stats.dropped == round(gap / 0.04) - 1
    message = f"s of the stream missing {where}; {source.stats.dropped} frames counted as dropped"
    assert any(message in r.getMessage() for r in caplog.records), caplog.text


def test_latest_mode_drops_and_never_lags():
    n = 60
    source = ScriptedSource([ScriptedCapture([40 * i for i in range(n)], period=0.01)], mode="latest",
                            reconnect=Reconnect(attempts=0))
    packets = _run(source, per_packet=0.05)
    ids = [int(p.data[0, 0, 0]) for p in packets]
    assert len(packets) < n / 2 and ids == sorted(ids) and ids[-1] == n - 1
    assert source.stats.dropped == n - len(packets)  # every frame is either delivered or counted


def test_all_mode_back_pressure_delivers_every_frame():
    n = 40
    source = ScriptedSource([ScriptedCapture([40 * i for i in range(n)])], mode="all", buffer=4,
                            reconnect=Reconnect(attempts=0))
    with source:
        time.sleep(0.2)  # the reader fills the buffer and waits
        assert len(source._frames) == 4
        packets = [p for p in source if time.sleep(0.005) is None]
    assert [int(p.data[0, 0, 0]) for p in packets] == list(range(n)) and source.stats.dropped == 0


def test_reconnects_within_the_attempt_limit_then_ends():
    first = ScriptedCapture([40 * i for i in range(10)], ids=range(10))
    second = ScriptedCapture([40 * i for i in range(10)], ids=range(10, 20))  # timestamps start again at 0
    source = ScriptedSource([first, "refused", "refused", second], mode="all",
                            reconnect=Reconnect(interval=0.02, backoff=2.0, max_interval=0.05, attempts=3))
    packets = _run(source)
    assert [int(p.data[0, 0, 0]) for p in packets] == list(range(20))
    assert source.stats.reconnects == 1 and _times_increase(packets) and packets[10].time > packets[9].time
    assert source.connects == 1 + 3 + 3  # open, 2 refusals + success, then 3 failed attempts
    assert source.stats.errors[-1].startswith("gave up after 3 reconnect attempts")
    assert first.released and second.released


def test_url_decoder_backend_is_validated_and_reaches_the_source():
    from memstream.pipelines.sources import make_source

    assert make_source("rtsp://cam/1", "video", backend="pyav").backend == "pyav"
    assert make_source("rtsp://cam/1", "video").backend == "opencv"
    with pytest.raises(SourceError, match="backend='gstreamer' is not one of 'opencv', 'pyav'"):
        UrlVideoSource("rtsp://cam/1", backend="gstreamer")


def test_a_source_down_at_start_fails_at_once_by_default():
    source = ScriptedSource(["connection refused by 127.0.0.1:9", ScriptedCapture([0, 40, 80])], mode="all",
                            reconnect=Reconnect(interval=0.02, attempts=3))
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="connection refused by 127.0.0.1:9"):
        source.open()
    assert source.connects == 1 and time.monotonic() - t0 < 0.5


def test_retry_at_open_waits_for_a_source_that_comes_up():
    capture = ScriptedCapture([40 * i for i in range(6)], frame_count=6)  # finite: it ends after frame 6
    source = ScriptedSource(["refused", "refused", capture], mode="all",
                            reconnect=Reconnect(interval=0.02, backoff=2.0, max_interval=0.05, attempts=3,
                                                at_open=True))
    packets = _run(source)
    assert [int(p.data[0, 0, 0]) for p in packets] == list(range(6)) and source.connects == 3
    assert source.stats.reconnects == 0  # waiting for the first connection is not a reconnect
    assert capture.released


def test_retry_at_open_gives_up_after_its_attempts():
    source = ScriptedSource(["refused"] * 5, reconnect=Reconnect(interval=0.01, max_interval=0.02, attempts=3,
                                                                 at_open=True))
    with pytest.raises(SourceError, match="gave up after 3 attempts to open: refused"):
        source.open()
    assert source.connects == 1 + 3


def test_cancel_ends_a_wait_at_open_from_another_thread():
    source = ScriptedSource(["refused"] * 5, reconnect=Reconnect(interval=5.0, max_interval=5.0, attempts=3,
                                                                 at_open=True))
    threading.Timer(0.2, source.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="cancelled while waiting for the source"):
        source.open()
    assert time.monotonic() - t0 < 2.0 and source.connects == 1


def test_the_runner_starts_the_other_streams_while_one_waits_at_open():
    """A live source that waits for its server at open is opened by its reader thread: the file stream beside
    it runs meanwhile, the live one joins when its server answers, and one still waiting when it is removed ends
    as removed at once."""
    task, runner_cls, frames_cls = _core_video_runner()
    comes_up = ScriptedCapture([40 * i for i in range(12)], frame_count=12)  # finite: it ends after frame 12
    late = ScriptedSource(["refused", "refused", comes_up], mode="all",
                          reconnect=Reconnect(interval=0.5, backoff=1.0, max_interval=0.5, attempts=4, at_open=True))
    never = ScriptedSource(["refused"] * 9, reconnect=Reconnect(interval=30.0, max_interval=30.0, attempts=3,
                                                                at_open=True))
    runner = runner_cls(task, _backend(task), max_streams=3, batch_timeout=0.02)
    runner.add(late, "late")
    runner.add(never, "never")
    runner.add(frames_cls(8), "file")
    first_live, order = None, []
    t0 = time.monotonic()
    for r in runner.results():
        order.append(r.stream)
        if r.stream == "file" and len(order) == 1:
            runner.remove("never")  # its reader is still waiting for the first connection (30 s)
        if r.stream == "late" and first_live is None:
            first_live = len(order)
        assert time.monotonic() - t0 < 10.0
    rows = runner.summary["streams"]
    assert order[0] == "file" and first_live is not None and first_live > 1  # the file did not wait for it
    assert rows["late"]["status"] == "ended" and rows["late"]["segments"] == 3 and late.connects == 3
    assert rows["never"]["status"] == "removed" and rows["never"]["segments"] == 0
    assert rows["file"]["status"] == "ended" and rows["file"]["segments"] == 2


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: needed to publish the loopback live stream")
def test_the_runner_waits_for_a_live_server_that_starts_late():
    """A loopback server that starts a second after the run: with ``at_open`` its stream joins when it answers
    (the file stream beside it has run meanwhile) and delivers segments until the run is stopped."""
    task, runner_cls, frames_cls = _core_video_runner()
    publisher = Publisher(free_port())
    live = UrlVideoSource(publisher.url, mode="all", reconnect=Reconnect(0.3, 1.0, 0.3, 40, at_open=True),
                          stall_timeout=2.0, open_timeout=3.0)
    runner = runner_cls(task, _backend(task), max_streams=2, batch_timeout=0.02)
    runner.add(live, "live")
    runner.add(frames_cls(8), "file")
    timer = threading.Timer(1.0, publisher.start)
    timer.start()
    order, deadline = [], time.monotonic() + 30.0
    try:
        for r in runner.results():
            assert time.monotonic() < deadline, f"no end in sight ({live.stats})"
            order.append(r.stream)
            if order.count("live") >= 5:
                runner.stop()
    finally:
        timer.cancel()
        publisher.kill()
        live.close()
    rows = runner.summary["streams"]
    assert order[:2] == ["file", "file"] and order.count("live") >= 5
    assert rows["file"]["status"] == "ended" and rows["live"]["status"] == "stopped"
    assert rows["live"]["reconnects"] == 0 and rows["live"]["error"] is None


def _core_video_runner():
    import torch
    from memstream.memory import CoreConfig, MemoryCore
    from memstream.pipelines.core_task import CoreProbeTask
    from memstream.pipelines.runner import StreamRunner
    from memstream.pipelines.streams import Packet, Source, SourceInfo

    class Frames(Source):  # a finite video stream
        name = "frames"

        def __init__(self, n):
            self.n = n

        def open(self):
            self.info = SourceInfo("video", 25.0)
            return self.info

        def __iter__(self):
            for i in range(self.n):
                yield Packet(np.full((6, 8, 3), i, np.uint8), i / 25)

    torch.manual_seed(0)
    core = MemoryCore(CoreConfig(dim=32, heads=2, layers=2, ff_mult=2, segment=4, memory_length=6)).eval()
    return CoreProbeTask("video", core, frame_size=(6, 8), grid=(3, 4)), StreamRunner, Frames


def _backend(task):
    from memstream.export import TorchBackend

    return TorchBackend(task.model)


def test_a_finite_stream_ends_at_its_end_instead_of_replaying():
    """A file or VOD playlist over HTTP (FFmpeg reports its frame count) read to the end just ends; cut short, it
    reconnects like a live stream."""
    whole = ScriptedCapture([100 * i for i in range(12)], fps=10.0, frame_count=12)
    source = ScriptedSource([whole, ScriptedCapture([0, 100, 200], fps=10.0, frame_count=12)], mode="all",
                            reconnect=FAST)
    packets = _run(source)
    assert len(packets) == 12 and source.connects == 1 and source.stats.reconnects == 0
    assert source.stats.errors == [] and whole.released

    cut = ScriptedCapture([100 * i for i in range(5)], fps=10.0, frame_count=12)   # the connection broke
    rest = ScriptedCapture([100 * i for i in range(12)], fps=10.0, frame_count=12, ids=range(100, 112))
    source = ScriptedSource([cut, rest], mode="all", reconnect=FAST)
    packets = _run(source)
    assert len(packets) == 5 + 12 and source.stats.reconnects == 1 and source.stats.errors == []


def test_a_video_file_served_over_http_plays_once(tmp_path):
    """A real HTTP server on loopback serving an mp4: the URL source delivers its frames once and ends."""
    import functools
    import http.server
    import threading

    import cv2

    frames = 15
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 24))
    for i in range(frames):
        writer.write(np.full((24, 32, 3), 10 * i, np.uint8))
    writer.release()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = UrlVideoSource(f"http://127.0.0.1:{server.server_address[1]}/clip.mp4", mode="all",
                                reconnect=Reconnect(interval=0.05, backoff=1.0, max_interval=0.05, attempts=3))
        packets = _run(source, limit=20.0)
    finally:
        server.shutdown()
    assert len(packets) == frames and source.stats.reconnects == 0 and source.stats.errors == []


def test_a_stalled_stream_reconnects():
    frozen = ScriptedCapture([0, 40] + [80] * 400, period=0.005)  # frames keep coming, time stands still
    fresh = ScriptedCapture([40 * i for i in range(5)], ids=range(100, 105))
    source = ScriptedSource([frozen, fresh], mode="all", stall_timeout=0.3, reconnect=FAST)
    packets = _run(source)
    assert source.stats.reconnects == 1 and source.stats.duplicated >= 10
    assert [int(p.data[0, 0, 0]) for p in packets][-5:] == list(range(100, 105)) and _times_increase(packets)


def test_a_reader_stuck_in_a_read_never_blocks_iteration():
    stuck = ScriptedCapture([0, 40, 80, 120], hang=4.0)  # reads after open's three block
    source = ScriptedSource([stuck], mode="all", stall_timeout=0.2, open_timeout=0.2, reconnect=FAST)
    start = time.monotonic()
    packets = _run(source)
    assert time.monotonic() - start < 2.5 and len(packets) == 3
    assert "blocked" in source.stats.errors[-1]


_EXIT_AFTER_CLOSE = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
import torch  # a big interpreter to tear down: the left reader's read times out while that runs
from sources_media import Publisher
from memstream.pipelines.sources import UrlVideoSource
publisher = Publisher({port}, protocol="udp").start()
source = UrlVideoSource(publisher.url, stall_timeout={stall}, open_timeout=5.0)
source.open()
for i, _ in enumerate(source):
    if i == 10:
        break
publisher.kill()
time.sleep(0.2)
source.close()  # waits 2 s; the reader is still in its read, which gives up after stall_timeout
print("closed", flush=True)
"""


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: needed to publish the loopback live stream")
def test_a_program_exits_cleanly_while_a_closed_readers_read_runs_out():
    """A script that closes a live source whose publisher has died, then ends: the reader close() left inside
    OpenCV's read must not come back while the interpreter tears down (it aborted with exit 134, 'FATAL: exception
    not rethrown', in every try with a read timeout of 2.2-2.7 s). The end of the program waits for it."""
    import subprocess

    script = _EXIT_AFTER_CLOSE.format(tests=os.path.dirname(__file__), port=free_port(), stall=2.4)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "closed" in done.stdout, done.stderr[-2000:]
    assert "waiting up to" in done.stderr and "reader(s) to leave their read" in done.stderr


def test_close_is_prompt():
    endless = ScriptedCapture([40 * i for i in range(100000)], period=0.002)
    source = ScriptedSource([endless], mode="all", buffer=8)
    source.open()
    for _, _packet in zip(range(20), source):
        pass
    thread, start = source._thread, time.monotonic()
    source.close()
    assert time.monotonic() - start < 0.5 and not thread.is_alive() and endless.released


def test_reconnect_policy_is_validated():
    for kwargs, value in (({"interval": -1}, "interval=-1"), ({"backoff": 0.5}, "backoff=0.5"),
                          ({"attempts": 1.5}, "attempts=1.5"), ({"interval": 5, "max_interval": 1}, "max_interval=1")):
        with pytest.raises(ValueError, match=value):
            Reconnect(**kwargs)
    assert [Reconnect(1, 2, 5, 4).delay(k) for k in range(4)] == [1, 2, 4, 5]


def test_microphone_with_a_stand_in_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(blocks=20, nan_block=3))
    source = MicrophoneSource(rate=8000, channels=2, block_seconds=0.01, stall_timeout=0.3,
                              reconnect=Reconnect(interval=0.01, attempts=1))
    packets = _run(source)
    assert source.info.live and (source.info.rate, source.info.channels) == (8000, 2)
    data = np.concatenate([p.data for p in packets])
    k = np.arange(20 * 80)
    expected = np.repeat(((k % 100) / 100).astype(np.float32)[:, None], 2, axis=1)
    expected[3 * 80, 0] = 0.0  # the NaN, replaced
    np.testing.assert_array_equal(data, expected)
    assert [p.time for p in packets] == pytest.approx([i * 0.01 for i in range(20)])
    assert source.stats.skipped == 1 and source.stats.reconnects == 1  # reopened once, then gave up
    assert "no audio for 0.3 s" in source.stats.errors[-1]


def test_microphone_absent_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice())
    with pytest.raises(SourceError) as err:
        MicrophoneSource(device="USB headset").open()
    assert str(err.value) == "microphone USB headset: no usable input device: No input device matching 'USB headset'"


def test_microphone_plugged_in_late_with_retry_at_open(monkeypatch):
    fake = fake_sounddevice(blocks=5, nan_block=None)
    check, calls = fake.check_input_settings, []

    def comes_up_on_the_third_try(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise ValueError("No input device matching 'USB headset'")
        return check(**{**kwargs, "device": None})

    fake.check_input_settings = comes_up_on_the_third_try
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    late = Reconnect(interval=0.02, max_interval=0.05, attempts=3, at_open=True)
    source = MicrophoneSource(device="USB headset", rate=8000, block_seconds=0.01, stall_timeout=0.2,
                              reconnect=late)
    source.open()
    assert len(calls) == 3 and source.info.live
    source.close()
    calls.clear()
    with pytest.raises(SourceError, match="No input device matching"):  # without at_open: at once
        MicrophoneSource(device="USB headset", reconnect=Reconnect(attempts=3)).open()
    assert len(calls) == 1


def test_timeouts_and_ffmpeg_options_reach_opencv(monkeypatch):
    import cv2
    from memstream.pipelines.sources import live

    seen = {}

    class Capture:
        def __init__(self, url, api, params):
            seen.update(url=url, api=api, params=dict(zip(params[::2], params[1::2])),
                        env=os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS"))

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(live.cv2, "VideoCapture", Capture)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "theirs;1")
    url = f"rtsp://user:pw@127.0.0.1:{free_port()}/cam"
    source = UrlVideoSource(url, ffmpeg_options={"rtsp_transport": "tcp"}, open_timeout=3, stall_timeout=2)
    with pytest.raises(SourceError) as err:
        source.open()
    assert seen == {"url": url, "api": cv2.CAP_FFMPEG, "env": "rtsp_transport;tcp",
                    "params": {cv2.CAP_PROP_OPEN_TIMEOUT_MSEC: 3000, cv2.CAP_PROP_READ_TIMEOUT_MSEC: 2000}}
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "theirs;1"
    assert "pw" not in str(err.value) and "connection refused" in err.value.cause
