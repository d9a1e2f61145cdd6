"""Anomaly detection side by side: with memory vs without vs the feature memory alone, real and synthetic, speed.

    python benchmarks/anomaly.py --data DEFECTS [--checkpoint DIR] [--steps 300]

DEFECTS is a ``memstream data synth-defects`` folder. Per reduced MVTec category in ``../shared/realdata/anomaly``
and per synthetic category, models are trained on the normal images by the recipe of ``memstream train
anomaly``; the video model (default: the bundled ``anomaly-small``) is compared with itself retrained without
temporal memory. Prints one JSON object: ``image_auroc_hazelnut``, ``image_auroc_transistor`` (and
``*_no_memory``, ``*_features_only``, pixel AUROC), ``image_auroc_synthetic``, ``frame_auroc_video``,
``frame_auroc_video_no_memory``, ``fps_torch``, ``fps_onnx`` and ``goals``. The same run as
``memstream bench anomaly``.
"""

from __future__ import annotations

import sys

from memstream.pipelines.anomaly_bench import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench(sys.argv[1:]))
