"""``memstream demo``: the bundled models on bundled media, nothing downloaded.

1. Streaming speech recognition: the bundled ``asr-small`` transcribes the bundled sample recording (voices
   it never heard in training) through the same runner as ``memstream run asr``, the transcript appearing
   as the segments are decoded; then reference, hypothesis, WER and real-time factor.
2. Online action localization: the bundled ``action-small`` watches the bundled clip (a held-out synthetic
   scene) through the same runner as ``memstream run action``; each action is printed when it is emitted, then
   compared with the clip's annotations; an overlay video with the event timeline is written.
3. Associative recall: the bundled memory-core models streamed at growing distances (``memstream.pipelines.recall``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def asr_demo(threads: int = 2) -> int:
    from memstream.pipelines.asr import bundled_sample
    from memstream.pipelines.asr_eval import error_rates
    from memstream.pipelines.asr_task import AsrTask, TranscriptLineSink, bundled_asr_dir
    from memstream.pipelines.launch import stream

    sample, reference_file = bundled_sample(), bundled_asr_dir() / "sample.txt"
    if not sample.is_file() or not (bundled_asr_dir() / "model.safetensors").is_file():
        print(f"memstream demo: no bundled ASR model or sample under {bundled_asr_dir()}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    task = AsrTask()
    print(f"Streaming speech recognition: {sample.name}, 640 ms segments, bundled asr-small "
          f"({task.model.cfg.core.memory} memory), greedy CTC with endpointing")
    sink = TranscriptLineSink(sys.stdout)
    finals: list[str] = []

    class Finals:  # the stream's last utterance is finalised when it ends, outside any step's result
        def write(self, event: dict) -> None:
            if event.get("type") == "final" and event.get("text"):
                finals.append(event["text"])

        def close(self) -> None:
            pass

    seconds, start = 0.0, time.perf_counter()
    for result in stream(task, str(sample), sinks=[sink, Finals()]):
        seconds = max(seconds, result.end)
    sink.close()
    wall = time.perf_counter() - start
    hypothesis = " ".join(finals)
    reference = reference_file.read_text().strip() if reference_file.is_file() else ""
    print(f"\nreference : {reference.lower()}\nhypothesis: {hypothesis}")
    if reference:
        rates = error_rates([reference], [hypothesis])
        print(f"WER {rates['wer']:.1%}, CER {rates['cer']:.1%} on {seconds:.0f} s of speech by held-out voices; "
              f"{seconds / wall:.0f}x faster than real time (startup included)\n")
    return 0


def action_demo(threads: int = 2, overlay: str | None = None) -> int:
    import tempfile
    from pathlib import Path

    from memstream.pipelines.action import ActionLineSink, bundled_sample
    from memstream.pipelines.action_data import read_annotations
    from memstream.pipelines.action_metrics import detection_map, tiou
    from memstream.pipelines.action_task import ActionTask, bundled_action_dir
    from memstream.pipelines.launch import stream
    from memstream.pipelines.sinks import OverlayVideoSink

    sample, truth = bundled_sample(), bundled_action_dir() / "sample.json"
    if not sample.is_file() or not (bundled_action_dir() / "model.safetensors").is_file():
        print(f"memstream demo: no bundled action model or clip under {bundled_action_dir()}", file=sys.stderr)
        return 1
    torch.set_num_threads(threads)
    task = ActionTask()
    cfg = task.model.cfg
    overlay = overlay or str(Path(tempfile.gettempdir()) / "memstream-demo-action.mp4")
    print(f"Online action localization: {sample.name}, {cfg.segment}-frame segments at {cfg.fps:g} fps, bundled "
          f"action-small ({cfg.core.memory} memory with a write gate, {cfg.start_memory}-slot boundary queue); "
          "each action is printed when it is emitted:")
    events: list[dict] = []

    class Collect:
        def write(self, event: dict) -> None:
            if event.get("type") == "action":
                events.append(event)

        def close(self) -> None:
            pass

    seconds, start = 0.0, time.perf_counter()
    for result in stream(task, str(sample), sinks=[ActionLineSink(sys.stdout), Collect(),
                                                   OverlayVideoSink(overlay, task.draw)]):
        seconds = max(seconds, result.end)
    wall = time.perf_counter() - start
    videos = read_annotations(truth)
    name = next(iter(videos))
    print(f"\n{'annotated':>24} | {'best emitted event (tIoU)':<40}")
    for inst in videos[name].instances:
        same = [e for e in events if e["label"] == inst.label]
        overlaps = tiou((inst.start, inst.end), np.array([[e["start"], e["end"]] for e in same])) if same else []
        best = int(overlaps.argmax()) if len(overlaps) and overlaps.max() > 0 else None
        found = (f"{same[best]['start']:6.1f}-{same[best]['end']:6.1f} s ({overlaps[best]:.2f}), emitted "
                 f"{same[best]['emitted'] - inst.end:+.1f} s after the end" if best is not None else "missed")
        print(f"{inst.label:>8} {inst.start:6.1f}-{inst.end:6.1f} s | {found}")
    predictions = {name: [{"label": e["label"], "score": e["score"], "segment": [e["start"], e["end"]]}
                          for e in events]}
    score = detection_map(videos, predictions, list(cfg.classes))
    print(f"mAP@0.5 on this clip {score['map']['0.5']:.2f} (tIoU 0.3-0.7 mean {score['map']['mean']:.2f}); "
          f"{seconds:.0f} s of video in {wall:.1f} s; overlay video: {overlay}\n")
    return 0


def cli_demo(argv: list[str] | None = None) -> int:
    from memstream.pipelines import recall

    parser = argparse.ArgumentParser(prog="memstream demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=256, help="recall: sequences per distance (default 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("asr", "action", "recall"), help="run one part only")
    parser.add_argument("--overlay", help="action: where to write the overlay video (default: the temp folder)")
    args = parser.parse_args(argv)
    code = 0
    if args.only in (None, "asr"):
        code = asr_demo(args.threads)
    if args.only in (None, "action"):
        code = max(code, action_demo(args.threads, args.overlay))
    if args.only in (None, "recall"):
        code = max(code, recall.cli_demo(["--sequences", str(args.sequences), "--threads", str(args.threads)]))
    return code
