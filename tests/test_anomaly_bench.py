"""``memstream bench anomaly`` end to end on a tiny synth-defects set: one JSON object naming every figure the
issue asks for, the headline score being the preset's (the benchmark's choice), real data skipped with a reason."""

from __future__ import annotations

import json

import numpy as np
import torch
from memstream.models import build, save_checkpoint
from memstream.pipelines.cli import main
from memstream.pipelines.synth_defects import generate

TINY_VIDEO = {"image_size": 32, "patch": 8, "dim": 32, "depth": 2, "heads": 2, "decoder_depth": 1,
              "decoder_levels": (0, 1), "memory_slots": 4, "bank_size": 64, "score_masks": 2, "temporal_dim": 32,
              "temporal_heads": 2, "temporal_layers": 1, "temporal_memory_length": 8, "temporal_grid": 2,
              "temporal_dims": 4}


def test_bench_json(tmp_path, capsys, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = tmp_path / "set"
    generate(data, categories=["weave"], train=4, test_good=2, test_defect=2, size=32, video_train=1, video_test=1,
             video_seconds=6.0, fps=4.0, video_size=64)
    torch.manual_seed(0)
    model = build("anomaly-small", **TINY_VIDEO)
    save_checkpoint(tmp_path / "video", model, {"model": "anomaly", "config": model.cfg.to_dict()})
    capsys.readouterr()
    assert main(["bench", "anomaly", "--data", str(data), "--checkpoint", str(tmp_path / "video"), "--realdata",
                 str(tmp_path / "none"), "--steps", "1", "--temporal-steps", "1", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["real_hazelnut_reduced"].startswith("skipped")
    assert model.cfg.score == "features"
    assert out["image_auroc_synthetic"] == out["image_auroc_synthetic_features"]
    low, high = out["image_auroc_synthetic_ci95"]
    assert 0.0 <= low <= high <= 1.0 and out["synthetic"]["weave"]["features"]["image_auroc_ci95"][0] == low
    for key in ("image_auroc_synthetic_rec", "image_auroc_synthetic_fused", "image_auroc_synthetic_position",
                "frame_auroc_video", "frame_auroc_video_no_memory", "frame_auroc_video_temporal"):
        assert 0.0 <= out[key] <= 1.0, key
    by_event = out["frame_auroc_video_by_event"]
    assert set(by_event) == {"score", "temporal", "score_no_memory", "temporal_no_memory"} and by_event["score"]
    assert all(0.0 <= v <= 1.0 for v in by_event["temporal"].values())
    assert out["fps_torch"] > 0 and out["fps_onnx"] > 0 and out["video_test_frames"] == 24
    assert not list(scratch.iterdir())  # category models, the no-memory model and the ONNX export are cleaned up
    assert set(out["goals"]) == {"image_auroc_synthetic>=0.95", "video_memory>no_memory"}


def test_category_scores_in_batches_equal_all_at_once(tmp_path, monkeypatch):
    """The bench scores a category's test images a batch at a time (bounded memory however large the test
    set); the figures do not depend on the batch."""
    import memstream.pipelines.anomaly_bench as bench
    from memstream.pipelines.anomaly import fit_normality, load_images
    from memstream.pipelines.anomaly_data import read_mvtec

    generate(tmp_path / "set", categories=["nut"], train=6, test_good=3, test_defect=2, size=32, video=False)
    dataset = read_mvtec(tmp_path / "set" / "nut")
    torch.manual_seed(0)
    model = build("anomaly-small", **{k: v for k, v in TINY_VIDEO.items() if not k.startswith("temporal")},
                  no_temporal=True)
    fit_normality(model, load_images([t.path for t in dataset.train], 32))
    figures = []
    for batch in (3, 64):
        monkeypatch.setattr(bench, "EVAL_BATCH", batch)
        figures.append(bench._evaluate(model, dataset)[0])
    assert set(figures[0]) == {"rec", "features", "position", "fused"} and len(dataset.test) == 11
    for score, got in figures[0].items():
        for name, value in got.items():
            assert np.allclose(value, figures[1][score][name], atol=1e-3), (score, name)
