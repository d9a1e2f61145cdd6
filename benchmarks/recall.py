"""Long-range associative recall of every memory type: the same run as ``memstream bench recall``.

    python benchmarks/recall.py [--quick] [--types queue,knn,none] [--train-distance 4] [--threads 2]

Trains each memory type from scratch on CPU (fixed seeds, a few minutes each), evaluates recall by
streaming ``step`` segment by segment at 1x, 4x and 16x the longest training distance, and prints one JSON
object: ``recall`` (type -> {"1x", "4x", "16x"} accuracy), ``train_distance``, ``distances``, ``chance``,
``train_seconds``, ``steps``, ``total_seconds``. Progress goes to stderr. Options are those of
:func:`memstream.pipelines.recall.cli_bench`.
"""

from __future__ import annotations

import sys

from memstream.pipelines.recall import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench(sys.argv[1:]))
