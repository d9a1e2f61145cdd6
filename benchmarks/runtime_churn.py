"""Memory of a long-running process whose streams come and go: what each served stream leaves behind.

    python benchmarks/runtime_churn.py [--streams 4000] [--slots 4] [--segments 5]

A service adds short streams (in-memory 16 kHz audio, ``--segments`` segments each) to one ``StreamRunner``
with ``--slots`` state slots (plus one for a stream that keeps the run open), never more than ``2 x slots``
waiting, until ``--streams`` have run; a JSON Lines sink (to /dev/null) and a MOT result sink (one file per
stream) receive the events. Prints one JSON object:
- ``kb_per_stream``: RSS growth from the 500th stream to the last one's joining, per stream in between (the
  run's summary keeps one row per stream, about 1 KB, by design);
- ``open_files_growth``: open file descriptors then minus at the 500th stream (about 0: no ended stream's
  file is left open);
- ``runner_records``: stream records the runner still holds at the end (0: ended streams are dropped);
- ``summary_rows``: rows in the run's summary (one per stream).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
from memstream.export import TorchBackend
from memstream.models import build
from memstream.pipelines.core_bench import rss_mb
from memstream.pipelines.core_task import CoreProbeTask
from memstream.pipelines.runner import StreamRunner
from memstream.pipelines.sinks import JsonlSink
from memstream.pipelines.track import MotResultSink
from runtime_streams import MemorySource, make_packets


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


class KeepAlive(MemorySource):
    """A stream that delivers nothing until ``done`` is set: the run lasts until the service has added all."""

    def __init__(self) -> None:
        super().__init__("keep-alive", [])
        self.done = threading.Event()

    def __iter__(self):
        self.done.wait()
        yield from ()


class TracksEvents:
    """Turns each segment event into a one-box ``tracks`` event, so the MOT sink opens a file per stream."""

    def __init__(self, sink: MotResultSink) -> None:
        self.sink = sink

    def write(self, event: dict) -> None:
        if event.get("type") == "segment":
            self.sink.write({"type": "tracks", "stream": event["stream"], "frame": event["index"] + 1,
                             "size": [100, 100], "tracks": [{"id": 1, "box": [0.1, 0.1, 0.5, 0.5], "score": 0.9}]})

    def end_stream(self, stream: str) -> None:
        self.sink.end_stream(stream)

    def close(self) -> None:
        self.sink.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=4000)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--segments", type=int, default=5, help="segments per stream")
    args = p.parse_args()
    if args.streams <= 1000:
        p.error("--streams must be > 1000 (growth is measured from the 500th stream on)")
    torch.set_num_threads(1)
    task = CoreProbeTask("audio", build("core-tiny"))
    packets = make_packets(task, args.segments, seed=0)
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sinks = [JsonlSink(os.devnull), TracksEvents(MotResultSink(Path(tmp)))]
        runner = StreamRunner(task, TorchBackend(task.model), sinks, max_streams=args.slots + 1,
                              batch_timeout=0.002)

        def serve() -> None:
            for k in range(args.streams):
                while len(runner._active) + len(runner._waiting) > 2 * args.slots + 1:
                    time.sleep(0.001)
                runner.add(MemorySource(f"m{k}", list(packets)))
                if k in (500, args.streams - 1):  # the last: the run is still open, its sinks too
                    gc.collect()
                    marks.update({f"rss_{k}": rss_mb(), f"files_{k}": open_files()})
            keep_alive.done.set()

        keep_alive = KeepAlive()
        runner.add(keep_alive)
        service = threading.Thread(target=serve)
        start = time.perf_counter()
        service.start()
        for _ in runner.results():
            pass
        service.join()
        wall = time.perf_counter() - start
    last = args.streams - 1
    rss, files = marks[f"rss_{last}"], marks[f"files_{last}"]
    print(json.dumps({
        "streams": args.streams, "slots": args.slots, "segments_per_stream": args.segments,
        "wall_s": round(wall, 2), "rss_at_500_mb": round(marks["rss_500"], 1), "rss_at_last_mb": round(rss, 1),
        "kb_per_stream": round((rss - marks["rss_500"]) * 1024 / (last - 500), 2),
        "open_files_growth": files - marks["files_500"], "runner_records": len(runner._streams),
        "summary_rows": len(runner.summary["streams"]),
    }))


if __name__ == "__main__":
    main()
