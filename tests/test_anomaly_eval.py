"""``memstream eval anomaly`` end to end on tiny synth-defects sets and tiny models: JSON equal to the metrics of
anomaly_metrics on score_images output, the plot, per-category checkpoints, video frame AUROC with a temporal
model, torch == ONNX image AUROC, and the bad inputs that exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memstream.models import build, save_checkpoint
from memstream.pipelines.anomaly import fit_normality, load_images, read_video_frames
from memstream.pipelines.anomaly_data import find_categories, load_mask, read_mvtec
from memstream.pipelines.anomaly_metrics import (
    aupro,
    frame_auroc,
    image_auroc,
    image_auroc_interval,
    pixel_auroc,
    summarise,
)
from memstream.pipelines.anomaly_task import load_anomaly_model, model_backend_for, score_images, score_video
from memstream.pipelines.cli import main
from memstream.pipelines.synth_defects import generate

TINY = {"image_size": 32, "patch": 8, "dim": 32, "depth": 2, "heads": 2, "decoder_depth": 1, "decoder_levels": (0, 1),
        "feature_level": 0, "memory_slots": 4, "bank_size": 64, "score_masks": 2}
TEMPORAL = {"temporal_dim": 32, "temporal_heads": 2, "temporal_layers": 1, "temporal_memory_length": 8,
            "temporal_grid": 2, "temporal_dims": 4}
HAZELNUT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "anomaly" / "hazelnut_reduced"
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object and nothing else on stdout
    return json.loads(out)


def _checkpoint(folder: Path, data: Path | None, seed: int = 0, temporal: bool = False):
    """A tiny anomaly model (its feature bank fitted on ``data``'s first category, if given), saved to ``folder``."""
    torch.manual_seed(seed)
    model = build("anomaly-small", **TINY, **(TEMPORAL if temporal else {"no_temporal": True}))
    if data is not None:
        fit_normality(model, load_images([s.path for s in read_mvtec(find_categories(data)[0]).train], 32))
    save_checkpoint(folder, model, {"model": "anomaly", "config": model.cfg.to_dict()})
    return model.eval()


@pytest.fixture(scope="module")
def image_set(tmp_path_factory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("anomaly_eval")
    data = root / "set"
    generate(data, categories=["weave", "nut"], video=False, train=4, test_good=2, test_defect=2, size=32)
    model = _checkpoint(root / "ck", data)
    return data, root / "ck", model


@pytest.fixture(scope="module")
def video_set(tmp_path_factory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("anomaly_eval_video")
    data = root / "set"
    generate(data, categories=["weave"], train=4, test_good=2, test_defect=2, size=32, video_train=0, video_test=2,
             video_seconds=5.0, fps=4.0, video_size=64)
    model = _checkpoint(root / "ck", data, temporal=True)
    return data, root / "ck", model


def _direct(category: Path, model, batch: int = 8, scored: dict | None = None) -> dict:
    """The metrics computed here, from score_images output, as the command should report them; ``scored`` gets
    the category's (labels, image scores)."""
    test = read_mvtec(category).test
    maps, scores = score_images(model, load_images([s.path for s in test], 32), batch)
    labels = np.array([s.label for s in test])
    masks = np.stack([load_mask(s.mask_path, 32) if s.mask_path else np.zeros((32, 32), bool) for s in test])
    if scored is not None:
        scored[category.name] = (labels, scores)
    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
            "aupro": aupro(masks, maps, 0.3), "images": len(test), "anomalous": int(labels.sum()),
            "image_auroc_ci95": image_auroc_interval([(labels, scores)])}


def _same(got: dict, want: dict) -> bool:
    """A category's figures equal (to 1e-9; the interval's two ends each)."""
    flat = lambda d: {k: v for k, v in d.items() if k != "image_auroc_ci95"}  # noqa: E731
    return (set(got) == set(want) and flat(got) == pytest.approx(flat(want), abs=1e-9)
            and got["image_auroc_ci95"] == pytest.approx(want["image_auroc_ci95"], abs=1e-9))


def test_json_equals_direct_metrics_and_plot(image_set, tmp_path, capsys):
    data, ck, model = image_set
    png = tmp_path / "plots" / "anomaly.png"
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint", str(ck), "--json", "--plot", str(png)]) == 0
    result = _json(capsys)
    assert list(result["categories"]) == ["nut", "weave"] and "video" not in result
    scored = {}
    expected = summarise({c.name: _direct(c, model, scored=scored) for c in find_categories(data)})
    for name in ("nut", "weave"):
        got, want = result["categories"][name], expected[name]
        assert set(got) == {*METRICS, "image_auroc_ci95", "images", "anomalous"}
        assert got["image_auroc_ci95"] == pytest.approx(want["image_auroc_ci95"], abs=1e-9)
        assert got["image_auroc_ci95"][0] <= got["image_auroc"] <= got["image_auroc_ci95"][1]
        assert got["images"] == want["images"] and got["anomalous"] == want["anomalous"]
        assert got["images"] == 2 + 2 * len(read_mvtec(data / name).defects)
        for key in METRICS:
            assert got[key] == pytest.approx(want[key], abs=1e-9), (name, key)
    mean_interval = result["mean"].pop("image_auroc_ci95")
    assert result["mean"] == pytest.approx(expected["mean"], abs=1e-9) and set(result["mean"]) == set(METRICS)
    assert mean_interval == pytest.approx(image_auroc_interval(scored.values()), abs=1e-9)
    assert result["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "anomaly", "--data", str(data / "weave"), "--checkpoint", str(ck)]) == 0
    table = capsys.readouterr().out
    assert "image AUROC" in table and "weave" in table and "mean" in table and "nut" not in table
    assert "95% interval" in table


def test_score_override(image_set, capsys):
    """--score scores the checkpoint's images with another of its fitted maps, the same as the model switched."""
    data, ck, model = image_set
    assert main(["eval", "anomaly", "--data", str(data / "weave"), "--checkpoint", str(ck), "--json",
                 "--score", "position"]) == 0
    got = _json(capsys)["categories"]["weave"]
    switched = load_anomaly_model(ck)[0].use_score("position")
    assert _same(got, _direct(data / "weave", switched))
    assert not _same(got, _direct(data / "weave", model))  # not the checkpoint's own score


def test_checkpoint_per_category(image_set, tmp_path, capsys):
    data, ck, _ = image_set
    other = _checkpoint(tmp_path / "per" / "nut", data, seed=1)
    (tmp_path / "per" / "weave").symlink_to(Path(ck).resolve())  # weave: the shared checkpoint
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint-per-category", str(tmp_path / "per"),
                 "--json"]) == 0
    result = _json(capsys)
    assert result["categories"]["nut"]["image_auroc"] == pytest.approx(_direct(data / "nut", other)["image_auroc"])
    assert _same(result["categories"]["weave"], _direct(data / "weave", image_set[2]))
    (tmp_path / "per" / "nut").rename(tmp_path / "gone")
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint-per-category", str(tmp_path / "per")]) == 2
    assert "nut" in capsys.readouterr().err


@pytest.mark.skipif(not (HAZELNUT / "test").is_dir(), reason=f"{HAZELNUT} not found (shared/realdata/anomaly)")
def test_real_hazelnut(image_set, capsys):
    _, ck, model = image_set
    assert main(["eval", "anomaly", "--data", str(HAZELNUT), "--checkpoint", str(ck), "--json"]) == 0
    got = _json(capsys)["categories"]["hazelnut_reduced"]
    want = _direct(HAZELNUT, model)
    assert got["images"] == 10 and got["anomalous"] == 8
    assert _same(got, want)


def test_video_frame_auroc(video_set, tmp_path, capsys):
    data, ck, model = video_set
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint", str(ck), "--video", "--json"]) == 0
    result = _json(capsys)
    assert list(result["categories"]) == ["weave"]
    video = result["video"]
    assert set(video["frame_auroc"]) == {"score", "image_score", "temporal"}
    labels = json.loads((data / "video" / "labels.json").read_text())["videos"]
    tests = {n: v for n, v in sorted(labels.items()) if v["split"] == "test"}
    assert video["videos"] == 2 and video["frames"] == sum(v["frames"] for v in tests.values())
    assert video["anomalous_frames"] == sum(sum(v["frame_labels"]) for v in tests.values())
    outs = [score_video(model_backend_for(model, "torch"), read_video_frames(data / "video" / v["file"], 32),
                        model.cfg.segment) for v in tests.values()]
    y = np.concatenate([v["frame_labels"] for v in tests.values()]).astype(bool)
    kinds = {}
    for kind in ("appearance", "temporal"):
        kinds[kind] = np.concatenate([np.isin(np.arange(v["frames"]), [f for e in v["events"] if e["kind"] == kind
                                                                      for f in range(e["start_frame"],
                                                                                     e["end_frame"] + 1)])
                                      for v in tests.values()])
        assert video[f"{kind}_frames"] == int(kinds[kind].sum())
    for signal, aurocs in video["frame_auroc"].items():
        s = np.concatenate([o[signal] for o in outs])
        assert set(aurocs) == {"all", "appearance", "temporal"}
        assert aurocs["all"] == pytest.approx(frame_auroc(y, s), abs=1e-9)
        for kind, frames in kinds.items():
            keep = ~y | frames
            assert aurocs[kind] == pytest.approx(frame_auroc(frames[keep], s[keep]), abs=1e-9), (signal, kind)
    # the video folder alone: videos only, a table and a plot
    png = tmp_path / "video.png"
    assert main(["eval", "anomaly", "--data", str(data / "video"), "--checkpoint", str(ck), "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "frame AUROC" in table and "image AUROC" not in table and png.stat().st_size > 1000


def test_torch_and_onnx_agree(image_set, video_set, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data, ck, _ = image_set
    results = {}
    for backend in ("torch", "onnx"):
        assert main(["eval", "anomaly", "--data", str(data), "--checkpoint", str(ck), "--backend", backend,
                     "--json"]) == 0, capsys.readouterr().err
        results[backend] = _json(capsys)
    for name, got in results["onnx"]["categories"].items():
        assert got["image_auroc"] == pytest.approx(results["torch"]["categories"][name]["image_auroc"], abs=1e-3)
    # a model with temporal memory cannot score single images through its graph: a clear error
    vdata, vck, _ = video_set
    assert main(["eval", "anomaly", "--data", str(vdata), "--checkpoint", str(vck), "--backend", "onnx"]) == 2
    assert "segment" in capsys.readouterr().err


def test_bad_inputs_exit_2(image_set, tmp_path, capsys):
    data, ck, _ = image_set
    (tmp_path / "empty" / "something").mkdir(parents=True)
    assert main(["eval", "anomaly", "--data", str(tmp_path / "empty"), "--checkpoint", str(ck)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(tmp_path / "empty") in captured.err
    assert main(["eval", "anomaly", "--data", str(tmp_path / "nowhere"), "--checkpoint", str(ck)]) == 2
    assert "not found" in capsys.readouterr().err
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "track", torch.nn.Linear(2, 2), {"model": "track", "config": {}})
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint", str(tmp_path / "track")]) == 2
    assert "'track' is not 'anomaly'" in capsys.readouterr().err
    assert main(["eval", "anomaly", "--data", str(data), "--checkpoint", str(ck), "--video"]) == 2
    assert "labels.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "video").mkdir(parents=True)
    (broken / "video" / "labels.json").write_text(json.dumps({"videos": {"v": {"split": "test", "file": "v.mp4"}}}))
    assert main(["eval", "anomaly", "--data", str(broken), "--checkpoint", str(ck)]) == 2
    assert "video v: bad entry" in capsys.readouterr().err
