"""The runtime end to end with the bare core: packet-size invariance, batching == alone, torch == ONNX,
streams joining and leaving, failing and slow sources, graceful SIGINT/SIGTERM, the ``stream()`` API.

Sources here are tiny in-test classes (lists of packets, a slow one, a failing one), so these tests depend
on the Source contract only, not on any decoder library.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from memstream.export import TorchBackend
from memstream.memory import CoreConfig, MemoryCore
from memstream.pipelines.core_task import CoreProbeTask
from memstream.pipelines.launch import read_streams_file, stream
from memstream.pipelines.runner import StreamRunner
from memstream.pipelines.sinks import JsonlSink, SummarySink
from memstream.pipelines.sources.common import BaseSource
from memstream.pipelines.streams import Packet, Source, SourceError, SourceInfo

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


class ListSource(Source):
    """Packets from memory. ``delay``: seconds slept before every ``burst``-th packet; ``fail_after``: raise
    after that many packets; ``gate``: an Event waited on before each packet (a stalled live source)."""

    def __init__(self, name, kind, rate, packets, channels=1, delay=0.0, burst=1, fail_after=None, gate=None,
                 read_on_loop=False):
        self.name, self.packets, self.delay, self.burst = name, packets, delay, burst
        self.read_on_loop = read_on_loop
        self.packets_read = 0
        self.fail_after, self.gate = fail_after, gate
        self._info = SourceInfo(kind, rate, channels)
        self.closed = False

    def open(self):
        self.info = self._info
        return self.info

    def __iter__(self):
        for i, packet in enumerate(self.packets):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("decoder exploded")
            if self.gate is not None:
                self.gate.wait()
            if self.delay and i % self.burst == 0:
                time.sleep(self.delay)
            self.packets_read += 1
            yield packet

    def close(self):
        self.closed = True


def audio(seconds: float, seed: int, channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t)[:, None]
    return (tone + 0.05 * rng.standard_normal((n, channels))).astype(np.float32)


def audio_source(name, x, packet, **kw) -> ListSource:
    packets = [Packet(x[i:i + packet], i / RATE) for i in range(0, len(x), packet)]
    return ListSource(name, "audio", RATE, packets, channels=x.shape[1], **kw)


def video(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 30, 40, 3))
    drift = np.arange(frames)[:, None, None, None] * 7
    return ((base + drift + rng.integers(0, 30, (frames, 30, 40, 3))) % 256).astype(np.uint8)


def video_source(name, frames, burst=1, fps=8.0, **kw) -> ListSource:
    """``burst`` frames per packet: 1 -> (H, W, 3) packets, n -> (n, H, W, 3) packets."""
    if burst == 1:
        packets = [Packet(f, i / fps) for i, f in enumerate(frames)]
    else:
        packets = [Packet(frames[i:i + burst], i / fps) for i in range(0, len(frames), burst)]
    return ListSource(name, "video", fps, packets, **kw)


@pytest.fixture(scope="module")
def core() -> MemoryCore:
    torch.manual_seed(0)
    return MemoryCore(CoreConfig(dim=32, heads=2, layers=2, ff_mult=2, segment=4, memory_length=6)).eval()


@pytest.fixture(scope="module")
def audio_task(core) -> CoreProbeTask:
    return CoreProbeTask("audio", core)


@pytest.fixture(scope="module")
def video_task(core) -> CoreProbeTask:
    return CoreProbeTask("video", core, frame_size=(24, 32), grid=(6, 8))


def run(task, sources, backend=None, **kw) -> tuple[dict[str, list], dict]:
    """Run sources (a list, ids 0..n-1) to the end -> ({stream: [results]}, summary)."""
    runner = StreamRunner(task, backend or TorchBackend(task.model), kw.pop("sinks", ()),
                          max_streams=kw.pop("max_streams", len(sources)), **kw)
    for s in sources:
        runner.add(s)
    out: dict[str, list] = {}
    for r in runner.results():
        out.setdefault(r.stream, []).append(r)
    return out, runner.summary


def outputs(results) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.outputs for r in results]))


def events(results) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "stream"} for r in results for e in r.events]


def assert_events_close(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert math.isclose(x[k], y[k], rel_tol=tol, abs_tol=tol), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


# -- packet-size invariance -------------------------------------------------------------------------------
def test_audio_packet_size_invariance(audio_task):
    x = audio(1.37, seed=1)
    small, _ = run(audio_task, [audio_source("a", x, RATE // 100)])   # 10 ms packets
    large, _ = run(audio_task, [audio_source("a", x, RATE)])          # 1 s packets
    assert len(small["0"]) == math.ceil(len(x) / audio_task.segment_size)
    assert events(small["0"]) == events(large["0"])
    assert torch.equal(outputs(small["0"]), outputs(large["0"]))
    assert small["0"][-1].events[0]["valid_fraction"] < 1.0  # the padded last segment


def test_lost_audio_keeps_the_stream_times(audio_task):
    """Packets whose times jump (audio lost upstream) give the results of the same stream with silence there:
    every event time stays on the source's clock."""
    x = audio(1.2, 8, channels=1)
    packet = 320
    packets = [Packet(x[i:i + packet], i / RATE) for i in range(0, len(x), packet)]
    lost = set(range(10, 18))
    silenced = [Packet(np.zeros_like(p.data), p.time) if k in lost else p for k, p in enumerate(packets)]
    kept = [p for k, p in enumerate(packets) if k not in lost]
    got, _ = run(audio_task, [ListSource("gappy", "audio", RATE, kept)])
    want, _ = run(audio_task, [ListSource("silent", "audio", RATE, silenced)])
    assert_events_close(events(got["0"]), events(want["0"]))
    torch.testing.assert_close(outputs(got["0"]), outputs(want["0"]), atol=1e-5, rtol=1e-5)


def test_video_burst_invariance(video_task):
    frames = video(23, seed=2)
    single, _ = run(video_task, [video_source("v", frames, burst=1, delay=0.002)])
    burst, _ = run(video_task, [video_source("v", frames, burst=7, delay=0.01)])
    assert len(single["0"]) == math.ceil(23 / video_task.segment_size)
    assert events(single["0"]) == events(burst["0"])
    assert torch.equal(outputs(single["0"]), outputs(burst["0"]))
    ev = single["0"][1].events[0]
    assert ev["time"] == 0.5 and ev["end"] == 1.0


# -- batching, backends, joining and leaving ---------------------------------------------------------------
def test_batched_streams_equal_each_alone(audio_task):
    xs = [audio(s, seed=k) for k, s in enumerate((0.9, 1.3, 0.5))]
    sizes = (160, 3000, 16000)
    together, summary = run(audio_task, [audio_source(f"s{k}", x, n) for k, (x, n) in enumerate(zip(xs, sizes))],
                            batch_timeout=0.2)
    assert summary["total"]["mean_batch"] > 1.2  # streams really shared steps
    for k, x in enumerate(xs):
        alone, _ = run(audio_task, [audio_source(f"s{k}", x, 1280)])
        torch.testing.assert_close(outputs(together[str(k)]), outputs(alone["0"]), atol=1e-5, rtol=1e-5)
        assert_events_close(events(together[str(k)]), events(alone["0"]))


def test_sources_read_on_the_loop_equal_reader_threads(audio_task):
    """Sources read on the model loop (no reader thread) give what reader threads give, beside thread-read streams
    in the same batches and with packets of any size; no thread is started for them."""
    xs = [audio(s, seed=k) for k, s in enumerate((0.9, 1.3, 0.5, 0.7))]
    sizes = (160, 3000, 16000, 640)

    def sources(on_loop):
        return [audio_source(f"s{k}", x, n, read_on_loop=on_loop(k)) for k, (x, n) in enumerate(zip(xs, sizes))]

    threads, _ = run(audio_task, sources(lambda k: False), batch_timeout=0.2)
    started = threading.active_count()
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), max_streams=4, batch_timeout=0.2)
    mixed_sources = sources(lambda k: k % 2 == 0)  # streams 0 and 2 on the loop, 1 and 3 with reader threads
    for src in mixed_sources:
        runner.add(src)
    assert threading.active_count() == started + 2
    mixed: dict[str, list] = {}
    for r in runner.results():
        mixed.setdefault(r.stream, []).append(r)
    assert runner.summary["total"]["mean_batch"] > 1.2
    assert all(src.closed for src in mixed_sources)
    for k in range(4):
        torch.testing.assert_close(outputs(mixed[str(k)]), outputs(threads[str(k)]), atol=1e-5, rtol=1e-5)
        assert_events_close(events(mixed[str(k)]), events(threads[str(k)]))
        assert runner.summary["streams"][str(k)]["status"] == "ended"


def test_a_source_read_on_the_loop_is_read_as_its_stream_needs_it(audio_task):
    """The loop reads such a source one segment ahead at most: a run closed early has read only that much, and the
    source is closed and its stream recorded as stopped."""
    x = audio(3.0, 30)
    src = audio_source("mem", x, audio_task.segment_size, read_on_loop=True)
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), max_streams=1)
    runner.add(src)
    results = runner.results()
    got = [next(results) for _ in range(3)]
    assert [r.index for r in got] == [0, 1, 2] and src.packets_read == 3
    results.close()
    assert src.closed and runner.summary["streams"]["0"]["status"] == "stopped"


def test_a_failing_or_removed_source_read_on_the_loop_ends_only_its_stream(audio_task):
    x = audio(0.8, 31)
    bad = audio_source("bad", audio(2.0, 32), 640, fail_after=5, read_on_loop=True)
    good = audio_source("good", x, 640, read_on_loop=True)
    got, summary = run(audio_task, [bad, good])
    alone, _ = run(audio_task, [audio_source("good", x, 640)])
    torch.testing.assert_close(outputs(got["1"]), outputs(alone["0"]), atol=1e-5, rtol=1e-5)
    rows = summary["streams"]
    assert rows["0"]["status"] == "error" and "decoder exploded" in rows["0"]["error"] and bad.closed
    assert rows["0"]["samples_in"] == 5 * 640 and rows["1"]["status"] == "ended"

    leaver = _RemoveOn("0", 2)
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [leaver], max_streams=1)
    leaver.runner = runner
    runner.add(audio_source("long", audio(3.0, 33), 320, read_on_loop=True))
    left = list(runner.results())
    assert runner.summary["streams"]["0"]["status"] == "removed"
    assert 3 <= len(left) < 3.0 * RATE / audio_task.segment_size


def test_outputs_reach_decoders_as_numpy_rows(audio_task):
    """The runner converts a step's outputs to numpy once: every stream's row reaches the caller as numpy."""
    xs = [audio(0.5, seed=k) for k in range(3)]
    together, summary = run(audio_task, [audio_source(f"s{k}", x, 1280) for k, x in enumerate(xs)], batch_timeout=0.2)
    assert summary["total"]["mean_batch"] > 1.2
    rows = [r.outputs for rs in together.values() for r in rs]
    assert all(isinstance(r, np.ndarray) and r.dtype == np.float32 and r.shape == (4, 32) for r in rows)


def test_to_numpy_keeps_structure_and_widens_half_floats():
    from collections import namedtuple

    from memstream.export import to_numpy

    Out = namedtuple("Out", "probs ids")
    out = to_numpy(Out(torch.ones(2, 3, dtype=torch.bfloat16), torch.arange(2)))
    assert isinstance(out, Out) and out.probs.dtype == np.float32 and out.ids.dtype == np.int64
    assert np.array_equal(out.probs, np.ones((2, 3), np.float32))
    arr = np.zeros(3, np.float16)
    assert to_numpy(arr) is arr  # numpy passes through: a decoder may convert what the runner converted


def test_torch_and_onnx_backends_agree(video_task, tmp_path):
    pytest.importorskip("onnxruntime")
    from memstream.pipelines.launch import onnx_backend

    backend = onnx_backend(video_task, tmp_path / "core.onnx")
    clips = [video(19, seed=3), video(9, seed=4)]
    ref, _ = run(video_task, [video_source(f"v{k}", c) for k, c in enumerate(clips)])
    got, summary = run(video_task, [video_source(f"v{k}", c) for k, c in enumerate(clips)], backend=backend)
    assert summary["backend"] == "onnx"
    for sid in ref:
        torch.testing.assert_close(outputs(got[sid]), outputs(ref[sid]), atol=1e-4, rtol=1e-4)
        assert_events_close(events(got[sid]), events(ref[sid]), tol=1e-4)


class _JoinOn:
    """A sink that adds a stream when stream ``watch`` emits segment ``index`` (a late joiner)."""

    def __init__(self, watch, index, join):
        self.watch, self.index, self.join, self.runner = watch, index, join, None

    def write(self, event):
        if event["stream"] == self.watch and event.get("index") == self.index:
            self.runner.add(self.join, "late")

    def close(self):
        pass


def test_streams_join_and_leave_reusing_slots(audio_task):
    xa, xc, xd, xlate = audio(1.2, 5), audio(0.25, 6), audio(0.33, 7), audio(0.5, 8)
    joiner = _JoinOn("A", 3, audio_source("late", xlate, 800))
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [joiner], max_streams=2, batch_timeout=0.05)
    joiner.runner = runner
    runner.add(audio_source("A", xa, 320), "A")
    runner.add(audio_source("C", xc, 320), "C")
    runner.add(audio_source("D", xd, 320), "D")  # waits for a free slot: C's
    got: dict[str, list] = {}
    for r in runner.results():
        got.setdefault(r.stream, []).append(r)
    slots = {sid: row["slot"] for sid, row in runner.summary["streams"].items()}
    assert slots["D"] == slots["C"] and slots["late"] != slots["A"]
    assert set(runner.summary["streams"]) == {"A", "C", "D", "late"}
    assert all(row["status"] == "ended" for row in runner.summary["streams"].values())
    for sid, x in (("A", xa), ("C", xc), ("D", xd), ("late", xlate)):
        alone, _ = run(audio_task, [audio_source(sid, x, 1280)])
        torch.testing.assert_close(outputs(got[sid]), outputs(alone["0"]), atol=1e-5, rtol=1e-5)
        assert_events_close(events(got[sid]), events(alone["0"]))


class _EndsRecorder(CoreProbeTask):
    """The video probe task, recording which streams the runner says it is done with."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.ended: list[str] = []

    def end_stream(self, stream_id: str) -> None:
        self.ended.append(stream_id)


def test_streams_coming_and_going_leave_nothing_behind(core, tmp_path):
    """A process serving streams that come and go: after each stream ends the task and the sinks are told, its
    overlay video is complete while later streams still run, and the runner keeps no decoder for it."""
    import cv2
    from memstream.pipelines.sinks import OverlayVideoSink

    task = _EndsRecorder("video", core, frame_size=(24, 32), grid=(6, 8))
    overlay = OverlayVideoSink(tmp_path / "ov-{stream}.avi", codec="MJPG")
    closed_before_last: list[bool] = []

    class Watch:  # a sink that looks at the overlay when the last stream's first segment arrives
        def write(self, event):
            if event["stream"] == "s5" and event.get("index") == 0:
                closed_before_last.append("s0" not in overlay.writers and (tmp_path / "ov-s0.avi").is_file())

        def close(self):
            pass

    runner = StreamRunner(task, TorchBackend(core), [overlay, Watch()], max_streams=2)
    for k in range(6):
        runner.add(video_source(f"s{k}", video(9, k)), f"s{k}")
    for _ in runner.results():
        pass
    assert sorted(task.ended) == [f"s{k}" for k in range(6)]
    assert closed_before_last == [True] and overlay.writers == {}
    assert runner._streams == {} and runner.stats.latency == {}  # only the summary rows (and ids) are left
    assert all(row["latency_ms"]["p50"] > 0 for row in runner.summary["streams"].values())
    cap = cv2.VideoCapture(str(tmp_path / "ov-s0.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9


class _RemoveOn:
    def __init__(self, watch, index):
        self.watch, self.index, self.runner = watch, index, None

    def write(self, event):
        if event["stream"] == self.watch and event.get("index") == self.index:
            self.runner.remove(self.watch)

    def close(self):
        pass


def test_a_stream_can_have_its_own_sinks(audio_task, tmp_path):
    """`add(source, sinks=...)`: the stream's own sinks get its events only, and its summary and close() when it
    ends, while the run's sinks get every stream's."""
    short, long = audio(0.4, 31, channels=1), audio(1.0, 32, channels=1)
    run_events = JsonlSink(tmp_path / "all.jsonl")
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [run_events], max_streams=2)
    own = [JsonlSink(tmp_path / "a.jsonl"), SummarySink(tmp_path / "a-summary.json")]
    runner.add(audio_source("a", short, 320), "a", sinks=own)
    runner.add(audio_source("b", long, 320), "b")
    closed_while_b_ran = None
    for r in runner.results():
        if r.stream == "b" and closed_while_b_ran is None and runner.summary is None:
            closed_while_b_ran = (tmp_path / "a-summary.json").exists() or None
    mine = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    every = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert {e["stream"] for e in mine} == {"a"} and mine[-1]["type"] == "end"
    assert mine == [e for e in every if e["stream"] == "a"] and {e["stream"] for e in every} == {"a", "b"}
    summary = json.loads((tmp_path / "a-summary.json").read_text())
    assert list(summary["streams"]) == ["a"] and summary["total"]["segments"] == len(mine) - 1
    assert summary["events"] == {"segment": len(mine) - 1, "end": 1}
    assert closed_while_b_ran  # written when "a" ended, while "b" still ran


def test_events_are_in_the_file_after_every_step(audio_task, tmp_path):
    """The JSON Lines sink buffers; the runner flushes it after every step, so while the run goes on the file holds
    every event of the steps done (a killed run keeps them), and a stream's end event once the stream has left."""
    path = tmp_path / "events.jsonl"
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [JsonlSink(path)], max_streams=2)
    runner.add(audio_source("a", audio(0.4, 31, channels=1), 320), "a")
    runner.add(audio_source("b", audio(1.0, 32, channels=1), 320), "b")
    yielded, a_ended = 0, []
    for r in runner.results():
        yielded += len(r.events)
        on_disk = [json.loads(line) for line in path.read_text().splitlines()]
        assert len([e for e in on_disk if e["type"] == "segment"]) >= yielded
        if r.stream == "b":
            a_ended.append(any(e["stream"] == "a" and e["type"] == "end" for e in on_disk))
    assert not a_ended[0] and a_ended[-2], a_ended  # on disk while b still ran
    assert len(path.read_text().splitlines()) == yielded + 2  # and each stream's end


class _FailingFile:
    """A text file whose disk fills up after ``room`` flushes."""

    name = "/mnt/full/events.jsonl"

    def __init__(self, room: int) -> None:
        self.room, self.lines, self.closed = room, [], False
        self._pending: list[str] = []

    def write(self, text: str) -> None:
        self._pending.append(text)

    def flush(self) -> None:
        if self.room == 0:
            raise OSError(28, "No space left on device")
        self.room -= 1
        self.lines += "".join(self._pending).splitlines()
        self._pending = []

    def close(self) -> None:
        self.closed = True


def test_a_failing_sink_stops_the_run_and_keeps_what_was_computed(audio_task, tmp_path):
    """A sink that fails mid-run (a full disk): the run stops after that step, the other sinks get every event and a
    summary that counts each segment computed (streams 'stopped'), and the error, naming the file, is raised at the
    end; before, the summary said 0 segments and 'running'."""
    full = _FailingFile(room=3)
    failing = JsonlSink(full)
    kept = tmp_path / "events.jsonl"
    sinks = [failing, JsonlSink(kept), SummarySink(tmp_path / "summary.json")]
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), sinks, max_streams=2)
    # read on the loop: every step holds both streams, so the count of segments is exact
    runner.add(audio_source("a", audio(2.0, 33, channels=1), 320, read_on_loop=True), "a")
    runner.add(audio_source("b", audio(2.0, 34, channels=1), 320, read_on_loop=True), "b")
    with pytest.raises(OSError, match="writing /mnt/full/events.jsonl failed: No space left on device"):
        runner.run()
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    segments = [e for e in lines if e["type"] == "segment"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total"]["segments"] == len(segments) == 8  # 4 steps of 2: the failing flush was the 4th's
    assert {row["status"] for row in summary["streams"].values()} == {"stopped"}
    (why,) = summary["total"]["sink_errors"]  # why the run stopped, in the summary too
    assert why.startswith("JsonlSink: ") and "/mnt/full/events.jsonl" in why
    assert [e["type"] for e in lines].count("end") == 2  # the decoders were flushed into the sinks still working
    assert len([line for line in full.lines if '"segment"' in line]) == 6 and failing._file is None


def test_a_failing_sink_of_one_stream_ends_only_that_stream(audio_task, tmp_path):
    """A stream's own sink that fails (its file's disk fills up) ends that stream as an error naming the sink, as a
    failing source would; the run and the other stream go on to their end, the run's sinks get every event of
    both (the failing stream's included, up to its end event) and no error is raised. Before, it stopped the whole
    run and raised."""
    full = _FailingFile(room=2)
    run_events = tmp_path / "all.jsonl"
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [JsonlSink(run_events)], max_streams=2)
    runner.add(audio_source("a", audio(2.0, 35, channels=1), 320, read_on_loop=True), "a", sinks=[JsonlSink(full)])
    runner.add(audio_source("b", audio(2.0, 36, channels=1), 320, read_on_loop=True), "b")
    summary = runner.run()
    rows = summary["streams"]
    assert rows["b"]["status"] == "ended" and rows["b"]["segments"] == 2.0 * RATE // audio_task.segment_size
    assert rows["a"]["status"] == "error" and "JsonlSink failed" in rows["a"]["error"]
    assert "/mnt/full/events.jsonl" in rows["a"]["error"] and "No space left on device" in rows["a"]["error"]
    assert 3 <= rows["a"]["segments"] < rows["b"]["segments"] and "sink_errors" not in summary["total"]
    every = [json.loads(line) for line in run_events.read_text().splitlines()]
    mine = [e for e in every if e["stream"] == "a"]
    assert len([e for e in mine if e["type"] == "segment"]) == rows["a"]["segments"]
    assert mine[-1]["type"] == "end" and mine[-1]["status"] == "error" and mine[-1]["error"] == rows["a"]["error"]
    assert full.lines and all('"stream": "a"' in line for line in full.lines)


def test_remove_lets_a_stream_leave(audio_task):
    x = audio(3.0, 16)
    leaver = _RemoveOn("0", 2)
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), [leaver], max_streams=1, queue_size=2)
    leaver.runner = runner
    runner.add(audio_source("long", x, 320))
    got = list(runner.results())
    row = runner.summary["streams"]["0"]
    assert row["status"] == "removed" and 3 <= len(got) < 3.0 * RATE / audio_task.segment_size
    alone, _ = run(audio_task, [audio_source("long", x, 1280)])
    torch.testing.assert_close(outputs(got[:-1]), outputs(alone["0"][:len(got) - 1]), atol=1e-5, rtol=1e-5)


def test_stream_ids_name_one_stream_for_the_whole_run(audio_task):
    """A running id and an ended one are both refused with the reason (events and result files of two streams
    would mix); remove() of an ended stream is a no-op, of an unknown id an error."""
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), max_streams=2)
    runner.add(audio_source("a", audio(0.3, 20), 320), "cam")
    runner.add(audio_source("b", audio(3.0, 21), 320), "slow")  # still running long after cam has ended
    with pytest.raises(ValueError, match="'slow' is running"):
        runner.add(audio_source("c", audio(0.3, 22), 320), "slow")
    results = runner.results()
    for _ in results:
        if "cam" not in runner._streams:  # cam has ended and been retired
            break
    with pytest.raises(ValueError, match="'cam' was used by a stream that has ended.*'cam-2'"):
        runner.add(audio_source("d", audio(0.3, 23), 320), "cam")
    assert runner.remove("cam") is False
    with pytest.raises(KeyError, match="no stream 'nobody'"):
        runner.remove("nobody")
    assert runner.add(audio_source("e", audio(0.3, 24), 320), "cam-2") == "cam-2"
    for _ in results:
        pass
    assert set(runner.summary["streams"]) == {"cam", "slow", "cam-2"}
    assert all(row["status"] == "ended" for row in runner.summary["streams"].values())


def test_failing_source_ends_only_its_stream(audio_task, tmp_path):
    x = audio(0.8, 9)
    bad = audio_source("bad", audio(2.0, 10), 640, fail_after=5)
    good = audio_source("good", x, 640)
    sinks = [JsonlSink(tmp_path / "events.jsonl"), SummarySink(tmp_path / "summary.json")]
    got, summary = run(audio_task, [bad, good], sinks=sinks)
    alone, _ = run(audio_task, [audio_source("good", x, 640)])
    torch.testing.assert_close(outputs(got["1"]), outputs(alone["0"]), atol=1e-5, rtol=1e-5)
    rows = summary["streams"]
    assert rows["0"]["status"] == "error" and "decoder exploded" in rows["0"]["error"]
    assert rows["1"]["status"] == "ended" and summary["total"]["errors"] == 1
    assert rows["0"]["samples_in"] == 5 * 640 and bad.closed
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    ends = {e["stream"]: e for e in lines if e["type"] == "end"}
    assert [e["type"] for e in lines if e["stream"] == "0"][-1] == "end"  # its decoder was flushed
    assert ends["0"]["status"] == "error" and ends["0"]["error"] == rows["0"]["error"]
    assert ends["1"]["status"] == "ended" and "error" not in ends["1"]
    assert [ends[k]["segments"] for k in "01"] == [rows[k]["segments"] for k in "01"]  # the decoder's own count


class _NoEndEvent(CoreProbeTask):
    """A task whose decoders announce nothing when a stream ends (as the ASR, tracking and anomaly decoders)."""

    def new_decoder(self, stream_id):
        decoder = super().new_decoder(stream_id)
        decoder.flush = lambda: []
        return decoder


class _Collect:
    """A sink that keeps every event; stops the runner once the streams ``stop_when`` have ended (by the summary's
    rows, not by the events under test)."""

    def __init__(self, stop_when=None):
        self.events, self.stop_when, self.runner = [], stop_when, None

    def write(self, event):
        self.events.append(event)
        rows = self.runner.stats.streams
        if self.stop_when and all(rows.get(sid, {}).get("status", "running") != "running" for sid in self.stop_when):
            self.runner.stop()

    def close(self):
        pass


def test_every_stream_ends_with_one_end_event_naming_how(core):
    """A stream's sinks learn that it ended, and how, from one ``end`` event (a service sees a camera's stream die
    without waiting for the run's summary), whether or not the task's decoder makes one: ended, error (with the
    cause), removed, stopped."""
    task = _NoEndEvent("audio", core)
    collect = _Collect(stop_when={"ok", "bad", "gone"})
    remover = _RemoveOn("gone", 1)
    runner = StreamRunner(task, TorchBackend(core), [collect, remover], max_streams=4, batch_timeout=0.01)
    collect.runner = remover.runner = runner
    runner.add(audio_source("ok", audio(0.3, 30), 320), "ok")
    runner.add(audio_source("bad", audio(2.0, 31), 320, fail_after=4), "bad")
    runner.add(audio_source("gone", audio(2.0, 32), 320), "gone")
    runner.add(audio_source("long", audio(30.0, 33), 320), "long")  # still running when the run is stopped
    runner.run()
    rows = runner.summary["streams"]
    ends = [e for e in collect.events if e["type"] == "end"]
    assert sorted(e["stream"] for e in ends) == ["bad", "gone", "long", "ok"]  # one each
    status = {e["stream"]: e["status"] for e in ends}
    assert status == {"ok": "ended", "bad": "error", "gone": "removed", "long": "stopped"}
    assert status == {sid: row["status"] for sid, row in rows.items()}
    for e in ends:
        assert e["segments"] == rows[e["stream"]]["segments"] and isinstance(e["time"], float)
        assert ("error" in e) == (e["stream"] == "bad")
    assert "decoder exploded" in next(e for e in ends if e["stream"] == "bad")["error"]


class LoggedFailureSource(BaseSource):
    """A BaseSource whose decoder fails mid-stream: BaseSource logs it into stats.errors and ends the iteration."""

    kind = "audio"

    def __init__(self, name, x, packet, fail_after):
        super().__init__(name)
        self.x, self.packet, self.fail_after = x, packet, fail_after

    def _open(self):
        return SourceInfo("audio", RATE, self.x.shape[1])

    def _packets(self):
        for k, i in enumerate(range(0, len(self.x), self.packet)):
            if k == self.fail_after:
                raise OSError("device unplugged")
            yield Packet(self.x[i:i + self.packet], i / RATE)


def test_a_source_that_logs_its_failure_ends_its_stream_as_an_error(audio_task, tmp_path):
    x = audio(2.0, 10)
    bad = LoggedFailureSource("mic-a", x, 640, fail_after=6)
    good = audio_source("good", audio(0.8, 9), 640)
    got, summary = run(audio_task, [bad, good], sinks=[SummarySink(tmp_path / "summary.json")])
    rows = summary["streams"]
    assert rows["0"]["status"] == "error" and rows["0"]["error"] == "mic-a: OSError: device unplugged"
    assert rows["0"]["source_errors"] == ["OSError: device unplugged"]
    assert rows["1"]["status"] == "ended" and summary["total"]["errors"] == 1
    # What it delivered before failing was still run: 6 packets of 640 samples, the last segment padded.
    assert len(got["0"]) == math.ceil(6 * 640 / audio_task.segment_size) and rows["0"]["samples_in"] == 6 * 640


class SlowBackend(TorchBackend):
    """A model step that takes at least ``seconds`` (a model slower than the stream)."""

    def __init__(self, model, seconds):
        super().__init__(model)
        self.seconds = seconds

    def step(self, *args, **kw):
        time.sleep(self.seconds)
        return super().step(*args, **kw)


@pytest.mark.parametrize("mode", ["latest", "all"])
def test_latest_mode_never_queues_more_than_one_segment(audio_task, mode):
    """A live source in `latest` mode feeding a model slower than itself: the newest segment replaces a waiting
    one (latency stays about one step); in `all` mode every segment runs."""
    x = audio(2.0, 21, channels=1)
    n_segments = math.ceil(len(x) / audio_task.segment_size)

    class Live(ListSource):
        def open(self):
            self.info = SourceInfo("audio", RATE, 1, live=True)
            return self.info

    source = Live("cam", "audio", RATE, [Packet(x[i:i + 400], i / RATE) for i in range(0, len(x), 400)])
    source.mode = mode
    step = 0.01
    got, summary = run(audio_task, [source], backend=SlowBackend(audio_task.model, step))
    row = summary["streams"]["0"]
    assert row["segments"] == len(got["0"])
    if mode == "all":
        assert row["segments"] == n_segments and row["segments_dropped"] == 0
    else:
        assert row["segments_dropped"] > n_segments // 2  # the source is far faster than 10 ms per segment
        assert row["segments"] + row["segments_dropped"] == n_segments
        assert row["latency_ms"]["p99"] < 1e3 * 6 * step  # the one waiting segment and the step in flight (+ noise)
        assert summary["total"]["segments_dropped"] == row["segments_dropped"]
        times = [r.time for r in got["0"]]
        assert times == sorted(times) and got["0"][-1].index == n_segments - 1  # the last segment always runs


def test_slow_stream_does_not_stall_others(audio_task):
    gate = threading.Event()
    x = audio(1.0, 11)
    slow = audio_source("slow", audio(10.0, 12), audio_task.segment_size, gate=gate)
    fast = audio_source("fast", x, 320)
    runner = StreamRunner(audio_task, TorchBackend(audio_task.model), max_streams=2, batch_timeout=0.02)
    runner.add(slow, "slow")
    runner.add(fast, "fast")
    t0 = time.perf_counter()
    fast_done = None
    slow_seen = 0
    for r in runner.results():
        if r.stream == "fast" and r.index == math.ceil(len(x) / audio_task.segment_size) - 1:
            fast_done = time.perf_counter() - t0
            gate.set()  # now the slow stream delivers
        slow_seen += r.stream == "slow"
        if slow_seen == 3:
            runner.stop()
    assert fast_done is not None and fast_done < 8.0, fast_done  # 16 segments, never waiting on the stalled one
    rows = runner.summary["streams"]
    assert rows["fast"]["status"] == "ended" and rows["slow"]["status"] == "stopped"
    assert rows["slow"]["segments"] == 3


# -- the generator API --------------------------------------------------------------------------------
def test_stream_generator_api(core, tmp_path):
    xs = [audio(0.4, 13), audio(0.6, 14)]
    sources = [audio_source(f"m{k}", x, 400) for k, x in enumerate(xs)]
    got = list(stream(core, sources, kind="audio", sinks=[SummarySink(tmp_path / "s.json")]))
    task = CoreProbeTask("audio", core)
    assert {r.stream for r in got} == {"0", "1"}
    for k, x in enumerate(xs):
        mine = [r for r in got if r.stream == str(k)]
        assert [r.index for r in mine] == list(range(math.ceil(len(x) / task.segment_size)))
        assert all(r.events[0]["stream"] == str(k) and r.events[0]["time"] == r.time for r in mine)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["total"]["segments"] == len(got)

    early = stream(core, [audio_source("long", audio(3.0, 15), 400)], kind="audio")
    first = next(early)
    early.close()  # breaking out stops the run cleanly
    assert first.index == 0


def test_stream_decoder_option_picks_the_video_decoder(core, tmp_path):
    """`decoder=` reaches the sources (whose own word for it, `backend`, names the model's backend here); both
    decoders give the same frames of an mpeg2 file."""
    from sources_media import write_video

    path = tmp_path / "clip.mpg"
    write_video(path, (24, 32), 12)
    runs = {d: list(stream(core, str(path), kind="video", decoder=d)) for d in ("opencv", "pyav")}
    assert [r.index for r in runs["pyav"]] == [r.index for r in runs["opencv"]] == [0, 1, 2]
    for a, b in zip(runs["opencv"], runs["pyav"], strict=True):
        np.testing.assert_array_equal(a.segment.data, b.segment.data)
    with pytest.raises(SourceError, match="backend='gstreamer'"):
        list(stream(core, str(path), kind="video", decoder="gstreamer"))


def test_one_source_that_cannot_be_opened_does_not_stop_the_others(core, tmp_path, caplog):
    """The generator API and the CLI: a missing file among several sources is recorded as that stream's error
    (one log line naming it); the others run. Only when every source fails is the error raised (CLI: exit 2)."""
    import soundfile as sf
    from memstream.pipelines.cli import main

    wav = tmp_path / "ok.wav"
    sf.write(wav, audio(0.5, 3, channels=1), RATE)
    missing = tmp_path / "missing.wav"
    got = list(stream(core, [str(missing), str(wav)], kind="audio"))
    assert {r.stream for r in got} == {"1"} and len(got) == math.ceil(0.5 * RATE / CoreProbeTask("audio", core).
                                                                          segment_size)
    assert any("missing.wav" in r.message and "other streams go on" in r.message for r in caplog.records)

    out = tmp_path / "run"
    assert main(["run", "core", "--preset", "core-tiny", "--source", str(missing), "--source", str(wav),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["streams"]
    assert rows["0"]["status"] == "error" and "missing.wav" in rows["0"]["error"]
    assert rows["1"]["status"] == "ended" and rows["1"]["segments"] > 0
    # Every source failing: exit 2, and each failure is still recorded in the events and the summary (nothing was).
    none = tmp_path / "none"
    assert main(["run", "core", "--source", str(missing), "--source", str(tmp_path / "gone.wav"),
                 "--out", str(none)]) == 2
    rows = json.loads((none / "summary.json").read_text())["streams"]
    assert [row["status"] for row in rows.values()] == ["error", "error"] and "gone.wav" in rows["1"]["error"]
    ends = [json.loads(line) for line in (none / "events.jsonl").read_text().splitlines()]
    assert [(e["stream"], e["type"], e["status"]) for e in ends] == [("0", "end", "error"), ("1", "end", "error")]
    with pytest.raises(SourceError, match="missing.wav"):  # the generator API has nothing to yield: it raises
        list(stream(core, [str(missing), str(tmp_path / "gone.wav")], kind="audio"))


def test_cli_view_keeps_the_events_on_a_piped_stdout(tmp_path, capsys):
    """--view draws on stderr; with stdout piped (not a terminal) the events still go there, as without --view (they
    were dropped)."""
    import soundfile as sf
    from memstream.pipelines.cli import main

    wav = tmp_path / "clip.wav"
    sf.write(wav, audio(0.4, 6, channels=1), RATE)
    assert main(["run", "core", "--preset", "core-tiny", "--source", str(wav), "--view"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in events] == ["segment"] * 5 + ["end"]


def test_cli_run_core_repeats_and_onnx_matches_torch(tmp_path):
    """An untrained preset core is built from a fixed seed: two runs give the same events, ONNX Runtime the same."""
    import soundfile as sf
    from memstream.pipelines.cli import main

    wav = tmp_path / "clip.wav"
    sf.write(wav, audio(0.6, 5, channels=1), RATE)

    def norms(name: str, *extra: str) -> list[float]:
        out = tmp_path / name
        assert main(["run", "core", "--preset", "core-tiny", "--source", str(wav), "--out", str(out), *extra]) == 0
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        return [e["output_norm"] for e in events if e["type"] == "segment"]

    first = norms("a")
    assert len(first) > 3 and first == norms("b")
    assert norms("onnx", "--backend", "onnx") == pytest.approx(first, rel=1e-4)


def test_open_specs_closes_what_it_opened_when_a_later_source_fails(tmp_path):
    from memstream.pipelines.launch import open_specs
    from memstream.pipelines.streams import SourceError

    first = audio_source("first", audio(0.2, 1), 400)
    with pytest.raises(SourceError, match="missing.wav"):
        open_specs([first, str(tmp_path / "missing.wav")], "audio")
    assert first.closed


def test_streams_file(tmp_path):
    (tmp_path / "clip.wav").write_bytes(b"")
    f = tmp_path / "cams.streams"
    f.write_text("# cameras\nrtsp://host/1#frag\n\n0\nclip.wav  # a file\n/abs/missing.mp4\n")
    assert read_streams_file(f) == ["rtsp://host/1#frag", "0", str(tmp_path / "clip.wav"), "/abs/missing.mp4"]
    (tmp_path / "empty.streams").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no sources"):
        read_streams_file(tmp_path / "empty.streams")
    (tmp_path / "binary.streams").write_bytes(b"\xff\xfe\x00bad\n")  # it said only "'utf-8' codec can't decode..."
    with pytest.raises(ValueError, match=r"streams file .*binary.streams: not UTF-8 text \(invalid start byte at"):
        read_streams_file(tmp_path / "binary.streams")


# -- the CLI: graceful stop and errors -------------------------------------------------------------------
ENDLESS = textwrap.dedent("""
    import sys, time
    import numpy as np
    import memstream.pipelines.launch as launch
    from memstream.pipelines.cli import main
    from memstream.pipelines.streams import Packet, Source, SourceInfo

    class Endless(Source):
        name = "endless"
        def open(self):
            self.info = SourceInfo("audio", 16000, 1, live=True)
            return self.info
        def __iter__(self):
            rng, i = np.random.default_rng(0), 0
            while True:
                time.sleep(0.01)
                yield Packet(rng.standard_normal((160, 1)).astype(np.float32) * 0.1, i / 16000)
                i += 160

    launch.open_specs = lambda specs, kind, **options: [Endless() for _ in specs]
    sys.exit(main(["run", "core", "--source", "live-a", "--source", "live-b", "--kind", "audio",
                   "--out", sys.argv[1]]))
""")


def _feed_stdin(proc, stop: threading.Event) -> None:
    """Raw s16le noise at about real time until stopped or the pipe closes."""
    rng = np.random.default_rng(0)
    try:
        while not stop.is_set():
            proc.stdin.write((rng.standard_normal(800) * 3000).astype("<i2").tobytes())
            proc.stdin.flush()
            time.sleep(0.05)
    except (BrokenPipeError, ValueError, OSError):
        pass


@pytest.mark.parametrize("sig,feed", [(signal.SIGINT, "memory"), (signal.SIGTERM, "stdin")],
                         ids=["SIGINT-memory", "SIGTERM-stdin"])
def test_cli_graceful_stop(sig, feed, tmp_path):
    """A run on endless sources gets a signal: exit 0, every event line and the summary complete."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if feed == "memory":  # two endless in-memory streams through the CLI handler
        cmd, n_streams = [sys.executable, "-c", ENDLESS, str(out)], 2
    else:  # the real CLI reading raw PCM from a pipe (the sources module's StdinPcmSource)
        pytest.importorskip("memstream.pipelines.sources")
        cmd = [sys.executable, "-m", "memstream.pipelines.cli", "run", "core", "--source", "-", "--rate", "16000",
               "--channels", "1", "--format", "s16le", "--out", str(out)]
        n_streams = 1
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE if feed == "stdin" else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=feed != "stdin")
    stop_feeding = threading.Event()
    feeder = threading.Thread(target=_feed_stdin, args=(proc, stop_feeding), daemon=True)
    if feed == "stdin":
        feeder.start()
    events_file = out / "events.jsonl"
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if events_file.is_file() and len(events_file.read_text().splitlines()) >= 6:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        deadline = time.time() + 30
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        stop_feeding.set()
        _, stderr = proc.communicate(timeout=10)
    finally:
        stop_feeding.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]  # every line complete
    summary = json.loads((out / "summary.json").read_text())
    segments = [e for e in lines if e["type"] == "segment"]
    assert summary["total"]["segments"] == len(segments) >= 6
    assert summary["events"] == {"segment": len(segments), "end": n_streams}
    assert {row["status"] for row in summary["streams"].values()} == {"stopped"}
    for sid in map(str, range(n_streams)):
        mine = [e for e in lines if e["stream"] == sid]
        assert [e["index"] for e in mine[:-1]] == list(range(len(mine) - 1)) and mine[-1]["type"] == "end"


@pytest.mark.parametrize("delivered", [0, 32000], ids=["no-data-yet", "stalled"])
def test_cli_sigint_while_stdin_waits_for_data(delivered, tmp_path):
    """SIGINT while stdin delivers nothing (a producer not started yet, or one that stalled mid-stream, its pipe
    still open): exit 0 at once, with every event and a complete summary. Before, the run waited in the read until
    the producer closed its end, and a stalled one aborted the interpreter at exit (a reader thread held stdin's
    buffer lock)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "memstream.pipelines.cli", "run", "core", "--source", "-", "--rate", "16000",
           "--channels", "1", "--format", "s16le", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    events_file = out / "events.jsonl"
    try:
        proc.stdin.write(np.zeros(delivered, "<i2").tobytes())
        proc.stdin.flush()  # and the pipe stays open: the producer is alive but silent
        wanted = delivered // 1280  # core-tiny: segments of 8 tokens x 160 samples
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # the sinks are open: the signal handlers are in place
            if events_file.is_file() and len(events_file.read_text().splitlines()) >= wanted:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)  # with stdin still open (communicate() would close it: an end of input, not a stall)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert summary["total"]["segments"] == len([e for e in lines if e["type"] == "segment"]) == wanted
    assert summary["streams"]["0"]["status"] == "stopped"


def test_cli_signal_while_the_sources_open_stops_cleanly(tmp_path):
    """SIGTERM while a source is still opening (a slow camera or URL): exit 0, an empty but complete summary."""
    ready = tmp_path / "opening"
    script = ENDLESS.replace("launch.open_specs = lambda specs, kind, **options: [Endless() for _ in specs]",
                             "def slow_open(specs, kind, **options):\n"
                             f"    open({str(ready)!r}, 'w').close()\n"
                             "    time.sleep(3)\n"
                             "    return [Endless() for _ in specs]\n"
                             "launch.open_specs = slow_open")
    assert "slow_open" in script
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping before the first step" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["segments"] == 0
    assert {row["status"] for row in summary["streams"].values()} == {"stopped"}


def test_cli_errors_exit_2(tmp_path, capsys):
    from memstream.pipelines.cli import main

    assert main(["run", "core", "--kind", "audio"]) == 2
    assert "no source" in capsys.readouterr().err
    assert main(["run", "core", "--source", "-", "--rate", "16000", "--max-streams", "0"]) == 2
    assert "--max-streams 0: must be at least 1" in capsys.readouterr().err
    # --overlay on audio was ignored without a word; an unknown container failed only after the first step
    assert main(["run", "core", "--source", "-", "--rate", "16000", "--overlay", str(tmp_path / "o.mp4")]) == 2
    assert "--overlay draws on video frames; this run's sources are audio" in capsys.readouterr().err
    assert main(["run", "core", "--kind", "video", "--source", str(tmp_path / "missing.mp4"), "--overlay",
                 str(tmp_path / "o.xyz")]) == 2
    assert "unknown container '.xyz'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    try:
        from memstream.pipelines.sources import open_source  # noqa: F401
    except ImportError:
        pytest.skip("memstream.pipelines.sources.open_source is not there yet")
    assert main(["run", "core", "--source", str(tmp_path / "missing.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.wav" in err


# -- the benchmark ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_runtime_benchmark_prints_its_figures(backend):
    """`benchmarks/runtime_streams.py` runs with either backend and prints the one JSON object it documents."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "runtime_streams.py"
    run = subprocess.run([sys.executable, str(script), "--streams", "1,2", "--segments", "4", "--repeats", "1",
                          "--backend", backend], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["backend"] == backend
    assert result["device"] == ("cpu" if backend == "torch" else "CPUExecutionProvider")
    for key in ("throughput_speedup", "speedup_vs_one_stream", "runtime_overhead_ms"):
        assert set(result[key]) == {"1", "2"}, key
    assert result["mean_batch"]["1"] == 1.0 and result["mean_batch"]["2"] > 1.0  # two streams did run batched
    assert all(v["batched"] > 0 and v["sequential"] > 0 for v in result["throughput"].values())
    assert result["speedup_vs_one_stream"]["1"] == 1.0
    assert result["speedup_vs_one_stream_per_repeat"]["1"] == [1.0]
    assert len(result["speedup_vs_one_stream_per_repeat"]["2"]) == 1
