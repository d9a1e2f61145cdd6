"""``memstream demo``: the bundled models on bundled media, nothing downloaded.

1. Streaming speech recognition: the bundled ``asr-small`` transcribes the bundled sample recording (voices
   it never heard in training) through the same runner as ``memstream run asr``, the transcript appearing
   as the segments are decoded; then reference, hypothesis, WER and real-time factor.
2. Associative recall: the bundled memory-core models streamed at growing distances (``memstream.pipelines.recall``).
"""

from __future__ import annotations

import argparse
import sys
import time

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


def cli_demo(argv: list[str] | None = None) -> int:
    from memstream.pipelines import recall

    parser = argparse.ArgumentParser(prog="memstream demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=256, help="recall: sequences per distance (default 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("asr", "recall"), help="run one part only")
    args = parser.parse_args(argv)
    code = 0
    if args.only != "recall":
        code = asr_demo(args.threads)
    if args.only != "asr":
        code = max(code, recall.cli_demo(["--sequences", str(args.sequences), "--threads", str(args.threads)]))
    return code
