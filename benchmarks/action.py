"""Online action localization side by side: memory vs window-only vs a window twice as long, and speed.

    python benchmarks/action.py --data ACTIONS [--checkpoint DIR] --window DIR --window2x DIR

ACTIONS is a ``memstream data synth-actions`` folder (its ``test`` subset: held-out seeds). The three
checkpoints come from ``memstream train action`` on the same data and steps (``--window-only`` and
``--window-only --segment 32`` for the baselines). Prints one JSON object: ``map50``, ``map50_long``,
``map50_long_no_memory``, ``map50_long_window2x`` (and the overall figures of each), ``fps_torch``,
``fps_onnx`` (end to end: decode, resize, backbone, core, heads, decoder, on 2 threads) and ``goals``.
The same run as ``memstream bench action``.
"""

from __future__ import annotations

import sys

from memstream.pipelines.action_bench import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench(sys.argv[1:]))
