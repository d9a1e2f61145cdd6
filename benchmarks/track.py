"""Multi-object tracking side by side: memstream vs its memory-off ablation vs SORT vs ByteTrack, and speed.

    python benchmarks/track.py --data TRACKS [--checkpoint DIR]

TRACKS is a ``memstream data synth-tracks`` folder (its ``test`` split: held-out seeds). Every tracker gets the
same public detections (``det/det.txt``); memstream also sees the images. Prints one JSON object:
``idf1_reentry``, ``idf1_reentry_no_memory``, ``idf1_reentry_iou``, ``idf1_reentry_bytetrack`` (and ``assa_*``)
on the identities that leave the view for >= 3 s and come back, ``hota`` (and DetA/AssA/MOTA/IDF1) over all test
scenes for each tracker, memstream with its own detector (``*_own``), the real MOT15 sequences
(``mot15_memstream``, ``mot15_iou``), ``fps_torch``, ``fps_onnx``, ``association_ms`` with 10/50/200 tracks and
``goals``. The same run as ``memstream bench track``.
"""

from __future__ import annotations

import sys

from memstream.pipelines.track_bench import cli_bench

if __name__ == "__main__":
    raise SystemExit(cli_bench(sys.argv[1:]))
