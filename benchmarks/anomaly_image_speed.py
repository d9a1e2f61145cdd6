"""Image scoring speed of the anomaly model's feature configurations, side by side in one run.

    python benchmarks/anomaly_image_speed.py [--images 32] [--rounds 3] [--threads 2]

Times ``AnomalyModel.spatial`` (maps and image scores, the ``features`` score) on random 128x128 images for:
the preset default (pixel patches, one bank per patch size: 4x4 of the full-resolution image, 6x6 of the
2x-pooled one), the same with the eager search over all of a batch's patches in one block (``one_block``: the
search before it went in cache-sized blocks, 2026-11-23), both banks on the 2x-pooled image (the default before
2026-11-23), one bank of 4x4 pixel patches of the pooled image (before 2026-11-22), and the encoder's patch
embeddings with a 4096-entry bank (the bundled video model's). The search is exhaustive, so its cost does not
depend on what the banks hold: they are left empty. Rounds are interleaved, so the machine's drift hits every
configuration alike. Prints one JSON object: images per second for each and the ratios to the default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import memstream.models.anomaly as anomaly_model
import torch
from memstream.models import build

CONFIGS = {
    "pixels_default": {},
    "pixels_default_one_block": {},
    "pixels_both_pooled": {"pixel_pool": 2},
    "pixels_one_bank": {"pixel_patch": 4},
    "encoder": {"features_from": "encoder", "bank_pick": "coreset", "bank_size": 4096, "bank_dims": 0,
                "density_k": 0, "colour_balance": False},
}


@contextlib.contextmanager
def search_in_one_block(on: bool):
    """The eager bank search as before 2026-11-23: all patches of the batch against 8192 entries at a time."""
    saved = anomaly_model.QUERY_BLOCK, anomaly_model.EAGER_BLOCK
    if on:
        anomaly_model.QUERY_BLOCK = anomaly_model.EAGER_BLOCK = 2 ** 62
    try:
        yield
    finally:
        anomaly_model.QUERY_BLOCK, anomaly_model.EAGER_BLOCK = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {name: build("anomaly-small", no_temporal=True, position_dims=0, **over).eval()
              for name, over in CONFIGS.items()}
    images = torch.randint(0, 256, (args.images, 128, 128, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    seconds = dict.fromkeys(models, 0.0)
    with torch.inference_mode():
        for model in models.values():
            model.spatial(images[:2])  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                with search_in_one_block(name.endswith("_one_block")):
                    start = time.perf_counter()
                    for i in range(0, args.images, 16):
                        model.spatial(images[i:i + 16])
                    seconds[name] += time.perf_counter() - start
    rate = {name: args.images * args.rounds / s for name, s in seconds.items()}
    default = rate["pixels_default"]
    print(json.dumps({"images_per_s": {k: round(v, 1) for k, v in rate.items()},
                      "ratio_to_default": {k: round(v / default, 2) for k, v in rate.items()},
                      "images": args.images, "rounds": args.rounds, "threads": args.threads,
                      "image_size": 128}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
