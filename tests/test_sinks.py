"""Sinks: JSON Lines, terminal view, overlay video, run summary (also through a real run of the runner)."""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
import torch
from memstream.export import TorchBackend
from memstream.memory import CoreConfig, MemoryCore
from memstream.pipelines.core_task import CoreProbeTask
from memstream.pipelines.runner import StreamRunner
from memstream.pipelines.segmenter import VideoSegmenter
from memstream.pipelines.sinks import (
    Durations,
    JsonlSink,
    OverlayVideoSink,
    RunStats,
    SummarySink,
    TerminalSink,
    percentiles_ms,
)
from memstream.pipelines.streams import Packet, Source, SourceInfo, SourceStats


class FrameSource(Source):
    def __init__(self, name, frames, fps=10.0, dropped=0):
        self.name, self.frames, self.fps = name, frames, fps
        self.stats = SourceStats(dropped=dropped, reconnects=1)

    def open(self):
        self.info = SourceInfo("video", self.fps, size=self.frames.shape[1:3])
        return self.info

    def __iter__(self):
        for i, f in enumerate(self.frames):
            yield Packet(f, i / self.fps)


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 24, 32, 3), dtype=np.uint8)


def test_jsonl_sink(tmp_path):
    path = tmp_path / "deep" / "events.jsonl"
    sink = JsonlSink(path)
    sink.write({"stream": "0", "time": np.float32(0.5), "n": np.int64(3), "v": torch.tensor([1.0, 2.0]),
                "bad": float("nan")})
    sink.write({"stream": "1", "time": 1.0, "type": "segment"})
    sink.flush()
    assert len(path.read_text().splitlines()) == 2  # on disk once flushed, before close
    with pytest.raises(ValueError, match="stream"):
        sink.write({"time": 0.0})
    sink.close()
    sink.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {"stream": "0", "time": 0.5, "n": 3, "v": [1.0, 2.0], "bad": None}
    assert second["type"] == "segment"
    buffer = io.StringIO()
    JsonlSink(buffer).write({"stream": "s", "time": 0.0})
    assert json.loads(buffer.getvalue()) == {"stream": "s", "time": 0.0}
    mirror = JsonlSink(buffer)
    flushed = []
    buffer.flush = lambda: flushed.append(True)
    mirror.write({"stream": "s", "time": 1.0})
    mirror.flush()
    mirror.close()
    assert flushed == [True, True] and not buffer.closed  # an open file it does not own is flushed, never closed


def test_terminal_sink_plain_and_rich():
    out = io.StringIO()
    sink = TerminalSink(out, interval=0.0)  # StringIO is no TTY: plain lines
    for i in range(3):
        sink.write({"stream": "cam", "time": i * 0.5, "end": i * 0.5 + 0.5, "type": "segment", "index": i})
    sink.finish({"total": {"segments": 3, "streams": 1, "latency_ms": {"p50": 1.0}, "real_time_factor": 0.1}})
    sink.close()
    text = out.getvalue()
    assert "cam: seg 3 t=1.50s" in text and "3 segments from 1 stream(s)" in text
    rich_out = io.StringIO()
    live = TerminalSink(rich_out, plain=False)
    live.write({"stream": "cam", "time": 0.0, "type": "segment", "index": 0, "output_norm": 1.5})
    live.close()
    live.close()
    assert "cam" in rich_out.getvalue()


def test_overlay_video_sink(tmp_path):
    seg = VideoSegmenter(4, (24, 32), 10.0)
    segments = [s for i, f in enumerate(frames(10)) for s in seg.push(f, i / 10)] + seg.flush()
    calls = []

    def draw(frame, events):
        calls.append(len(events))
        frame[:4, :4] = 255

    sink = OverlayVideoSink(tmp_path / "overlay.avi", draw, codec="MJPG")
    for s in segments:
        sink.write_segment("a", s, [{"stream": "a", "time": s.start}])
        sink.write_segment("b", s, [])
    sink.close()
    sink.close()
    assert sink.frames == 20 and calls.count(1) == 10
    assert sink.paths == {"a": tmp_path / "overlay.avi", "b": tmp_path / "overlay.b.avi"}
    cap = cv2.VideoCapture(str(tmp_path / "overlay.avi"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 10


def test_durations_stay_bounded_and_accurate():
    """Exact as numpy up to Durations.EXACT values; after that a fixed-size histogram within 0.5 %."""
    rng = np.random.default_rng(0)
    few = rng.lognormal(-5, 1, 1000)
    d = Durations()
    for v in few:
        d.add(float(v))
    assert d.percentiles_ms() == percentiles_ms(list(few)) and d.bins is None
    many = rng.lognormal(-5, 1, 60_000)
    long_run, first, second = Durations(), Durations(), Durations()
    for i, v in enumerate(many):
        long_run.add(float(v))
        (first if i < 3000 else second).add(float(v))
    assert long_run.values == [] and long_run.bins.size < 3000  # memory no longer grows with the run
    assert long_run.count == 60_000 and long_run.total == pytest.approx(many.sum())
    exact = np.percentile(many, [50, 99]) * 1e3
    got = long_run.percentiles_ms()
    assert got["p50"] == pytest.approx(exact[0], rel=0.006) and got["p99"] == pytest.approx(exact[1], rel=0.006)
    first.extend(second)  # an exact record merged with a histogram: the histogram of both
    assert first.count == 60_000 and first.percentiles_ms() == got
    assert Durations().percentiles_ms() == {"p50": None, "p99": None}


def test_run_stats_and_summary_sink(tmp_path):
    stats = RunStats("core", "torch")
    stats.stream_started("0", "a.wav")
    for k in range(100):
        stats.segment_done("0", media_s=0.08, latency_s=0.001 * (k + 1), processing_s=0.004)
        stats.step_done(0.002, 1)
    stats.stream_ended("0", "ended", kind="audio", samples_in=128000, dropped=2)
    summary = stats.summary()
    row = summary["streams"]["0"]
    assert row["latency_ms"] == {"p50": 50.5, "p99": 99.01}
    assert row["real_time_factor"] == pytest.approx(0.05) and row["dropped"] == 2
    assert summary["total"]["samples_in"] == 128000 and summary["total"]["segments"] == 100
    assert summary["total"]["model_step_ms"] == {"p50": 2.0, "p99": 2.0}
    assert percentiles_ms([]) == {"p50": None, "p99": None}
    sink = SummarySink(tmp_path / "summary.json")
    sink.write({"stream": "0", "time": 0.0, "type": "segment"})
    sink.finish(summary)
    sink.close()
    sink.close()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["events"] == {"segment": 1} and written["total"]["streams"] == 1
    assert not (tmp_path / "summary.json.tmp").exists()


def test_events_and_summary_of_a_run(tmp_path):
    torch.manual_seed(0)
    core = MemoryCore(CoreConfig(dim=16, heads=2, layers=1, ff_mult=2, segment=4, memory_length=4)).eval()
    task = CoreProbeTask("video", core, frame_size=(24, 32), grid=(4, 4))
    sinks = [JsonlSink(tmp_path / "events.jsonl"), SummarySink(tmp_path / "summary.json"),
             OverlayVideoSink(tmp_path / "overlay.avi", task.draw, codec="MJPG")]
    runner = StreamRunner(task, TorchBackend(core), sinks, max_streams=2)
    runner.add(FrameSource("cam-a", frames(10, 1), dropped=3))
    runner.add(FrameSource("cam-b", frames(6, 2), fps=5.0))
    runner.run()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert all("stream" in e and "time" in e for e in lines)
    seg_events = [e for e in lines if e["type"] == "segment"]
    assert len(seg_events) == math.ceil(10 / 4) + math.ceil(6 / 4)
    assert {e["stream"] for e in lines if e["type"] == "end"} == {"0", "1"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    total, a, b = summary["total"], summary["streams"]["0"], summary["streams"]["1"]
    for key in ("frames_in", "samples_in", "segments", "dropped", "duplicated", "reconnects", "skipped",
                "latency_ms", "real_time_factor", "media_s", "processing_s"):
        assert key in total and key in a
    assert total["model_step_ms"]["p50"] > 0 and total["latency_ms"]["p99"] >= total["latency_ms"]["p50"] > 0
    assert (a["frames_in"], b["frames_in"], total["frames_in"]) == (10, 6, 16)
    assert (a["segments"], total["segments"], total["dropped"], total["reconnects"]) == (3, 5, 3, 2)
    assert a["source"] == "cam-a" and a["kind"] == "video" and a["status"] == "ended"
    assert a["media_s"] == pytest.approx(1.0) and b["media_s"] == pytest.approx(1.2)
    assert total["real_time_factor"] == pytest.approx(total["processing_s"] / total["media_s"], rel=1e-3)
    assert summary["events"] == {"segment": 5, "end": 2}
    assert (tmp_path / "overlay.avi").is_file() and (tmp_path / "overlay.1.avi").is_file()
