"""ASR speed and memory side by side: PyTorch vs ONNX Runtime vs pocketsphinx, and RSS over an hour.

    python benchmarks/asr_speed.py --data CORPUS [--checkpoint DIR] [--threads 2] [--speed-seconds 180]

Real-time factor (compute / audio seconds) of the same clips (the first ``--speed-seconds`` of ``test/``)
decoded by PyTorch and ONNX Runtime streaming 640 ms segments, and by pocketsphinx (its own US English model),
taking turns clip by clip; then one hour of audio streamed through the runner, RSS from minute 5 to the end.
Prints one JSON object: ``rtf_torch``, ``rtf_onnx``, ``rtf_pocketsphinx``, ``rss_growth_mb`` and ``goals``.
The same run as ``memstream bench asr --skip accuracy``.
"""

from __future__ import annotations

import sys

from memstream.pipelines.asr_bench import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench([*sys.argv[1:], "--skip", "accuracy"]))
