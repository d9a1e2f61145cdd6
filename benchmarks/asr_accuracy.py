"""ASR accuracy side by side: memory vs no memory vs full attention, short vs long-form, and real speech.

    python benchmarks/asr_accuracy.py --data CORPUS [--checkpoint DIR] --no-memory DIR --full-attention DIR

CORPUS is a ``memstream data synth-speech`` folder (``test/``: held-out voices, short utterances;
``test-longform/``: 5-20 min recordings of those voices). The three checkpoints come from ``memstream train
asr`` with the same corpus and steps (``--memory none`` / ``--full-context`` for the baselines). Prints one
JSON object: ``wer_short``, ``wer_long``, ``wer_short_no_memory``, ``wer_long_no_memory``,
``wer_short_full_attention``, ``wer_long_full_attention``, ``wer_real``, ``long_over_short`` and ``goals``.
The same run as ``memstream bench asr --skip speed``.
"""

from __future__ import annotations

import sys

from memstream.pipelines.asr_bench import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench([*sys.argv[1:], "--skip", "speed"]))
