"""Anomaly model and task: streaming == sequence, maps and scores, memory bank, ONNX == PyTorch, in-stream
threshold calibration, training recipe and the CLI on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memstream.models import build, save_checkpoint
from memstream.pipelines.cli import main

TINY = {"image_size": 32, "patch": 8, "dim": 32, "depth": 2, "heads": 2, "decoder_depth": 1, "decoder_levels": (0, 1),
        "feature_level": 0, "memory_slots": 4, "bank_size": 64, "score_masks": 2, "memae_items": 8}
TEMPORAL = {"temporal_dim": 32, "temporal_heads": 2, "temporal_layers": 1, "temporal_memory_length": 8,
            "temporal_grid": 2, "temporal_dims": 4}


def tiny(temporal: bool = False, **overrides):
    torch.manual_seed(0)
    return build("anomaly-small", **{**TINY, **(TEMPORAL if temporal else {"no_temporal": True}), **overrides}).eval()


def frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_temporal_streaming_equals_sequence():
    model = tiny(temporal=True)
    t = model.cfg.segment
    x = frames(3 * t).unsqueeze(0)
    with torch.no_grad():
        err, ok = model.forward_sequence(x)
        state = model.init_state(1)
        streamed = []
        for i in range(3):
            out, state = model.step(x[:, i * t:(i + 1) * t], state)
            streamed.append(out.temporal)
    streamed = torch.cat(streamed, 1)
    assert not bool(ok[0, 0]) and bool(ok[0, 1:].all())
    assert torch.allclose(streamed[ok], err[ok], atol=1e-5)  # stats are mean 0, sd 1 before fitting
    assert float(streamed[0, 0]) == 0.0


def _conveyor(frames_n: int, speed: int = 2, stop: tuple[int, int] | None = None) -> np.ndarray:
    """(F, 32, 32, 3) uint8: bright 4-px bars riding a belt at ``speed`` px per frame; stopped in ``stop``."""
    out = np.full((frames_n, 32, 32, 3), 40, np.uint8)
    pos = 0
    for f in range(frames_n):
        if stop is None or not stop[0] <= f < stop[1]:
            pos += speed
        for x in range(pos % 12 - 12, 32, 12):
            out[f, 16:24, max(0, x):max(0, x + 4)] = 220
    return out


def test_temporal_memory_flags_a_stopped_belt(tmp_path):
    from memstream.pipelines.anomaly import fit_temporal_code, train_anomaly, video_codes
    from memstream.pipelines.anomaly_task import score_video

    model = tiny(temporal=True).train()
    normal = [_conveyor(96), _conveyor(96, speed=3)]
    train_anomaly(model, np.concatenate(normal)[::4], normal, tmp_path, steps=0, temporal_steps=150, batch=4,
                  threads=1, spatial=False, log_every=1000)
    proj = model.cell_proj
    assert torch.allclose(proj.t() @ proj, torch.eye(proj.shape[1]), atol=1e-4)  # principal components
    assert fit_temporal_code(model, normal)["explained_variance"] > 0.5
    codes = video_codes(model, normal[0])
    assert codes.shape == (96, model.cfg.temporal_width)
    test = _conveyor(96, stop=(48, 64))
    temporal = score_video(model, test, model.cfg.segment)["temporal"]
    assert temporal[52:64].mean() > temporal[8:44].max()  # once stopped, every frame beats the normal ones


def test_maps_bank_and_fit():
    from memstream.pipelines.anomaly import coreset, fit_normality

    model = tiny()
    normal = frames(12).numpy()
    summary = fit_normality(model, normal, holdout=0.25)
    bank = model.banks[0]
    assert summary["bank"] == 64 and int(bank.valid.sum()) == 64 and summary["holdout_images"] == 3
    assert [(b["patch"], b["entries"]) for b in summary["banks"]] == [(4, 64), (6, 64)]  # one bank per patch size
    for b in model.banks:  # the bank's space: principal components of the normal patch features
        assert b.entries.shape == (64, 24) and torch.allclose(b.proj.t() @ b.proj, torch.eye(24), atol=1e-4)
    with torch.no_grad():
        amap, score, _ = model.spatial(torch.from_numpy(normal[:2]))
        # a bank member's patch features are at distance 0 from the bank
        feats = bank.space(model.features(torch.from_numpy(normal[3:4]))[0])
        assert float(torch.cdist(feats[:1], bank.entries[bank.valid]).min()) < float(
            torch.cdist(feats, bank.entries[bank.valid]).min(1).values.max()) + 1e-6
        # the features map: the mean of each bank's map, each upsampled from its own grid
        grids = model.grid_features(torch.from_numpy(normal[:2]))
        assert [g.shape[1] for g in grids] == [225, 36]  # 4x4 of the full image, 6x6 of the 2x-pooled one
        each = [model._upsample(b.distance(g), m) for b, g, m in zip(model.banks, grids, (1, 4), strict=True)]
        assert torch.allclose(model.feature_map(grids), (each[0] + each[1]) / 2)
    assert amap.shape == (2, 32, 32) and torch.allclose(score, amap.flatten(1).amax(1))
    x = torch.randn(100, 8)
    picked = coreset(x, 10)
    assert picked.shape == (10,) and len(set(picked.tolist())) == 10
    with pytest.raises(ValueError, match="addressing"):
        tiny(addressing="vq")
    with pytest.raises(ValueError, match="uint8 RGB"):
        model.step(torch.zeros(1, 1, 32, 32, 3), model.init_state(1))


def test_pixel_features_ignore_lighting_and_hold_every_offset():
    """The default patch features: a colour cast (a gain per channel) leaves them as they were; the bank holds
    the normal patches at every offset, so a shifted view of a normal texture lies on it; the map's border
    repeats the nearest cell (no feature is taken from outside the image)."""
    from memstream.pipelines.anomaly import fit_normality

    rng = np.random.default_rng(0)
    texture = rng.integers(40, 150, (1, 34, 34, 3)).astype(np.uint8)
    model = tiny()
    assert model.cfg.features_from == "pixels" and model.cfg.feature_grid == 15 and model.cfg.feature_margin == 1
    cast = np.clip(np.round(texture.astype(np.float64) * [1.6, 1.3, 1.05]), 0, 255).astype(np.uint8)
    with torch.no_grad():
        a, b = (model.features(torch.from_numpy(x[:, :32, :32])) for x in (texture, cast))
        c = tiny(colour_balance=False).features(torch.from_numpy(cast[:, :32, :32]))
    assert a.shape == (1, 225, 48) and torch.allclose(a, b, atol=0.02)  # uint8 rounding only
    assert float((a - c).abs().max()) > 0.1  # the luminance alone leaves the cast

    # a shift leaves unnormalised patches alone
    model = tiny(light_sigma=0.0, colour_balance=False, bank_size=4096, position_dims=0, pixel_patch=4)
    bank = model.banks[0]
    fit_normality(model, np.repeat(texture[:, :32, :32], 3, axis=0), holdout=0.5)  # one image in the bank
    assert int(bank.valid.sum()) == 13 * 13  # 4x4 patches at every offset of the 16x16 pooled image
    with torch.no_grad():
        shifted = model.features(torch.from_numpy(texture[:, 2:, 2:]))[0].view(7, 7, -1)  # 1 pooled pixel
        overlap = bank.space(shifted[:6, :6].reshape(36, -1))
        dist = torch.cdist(overlap, bank.entries[bank.valid]).amin(1)
        assert float(dist.max()) < 0.01  # every cell of the overlap is on the bank (cdist rounding: 1e-3)
        on_grid = bank.space(model.features(torch.from_numpy(texture[:, :32, :32]))[0])  # a grid-cell bank
        assert float(torch.cdist(overlap, on_grid).amin(1).max()) > 0.1
        raw = model.feature_map([shifted.view(1, 49, -1)])
    assert torch.equal(raw[:, :2], raw[:, 2:3].expand(-1, 2, -1)) and torch.equal(raw[:, :, -2:],
                                                                                    raw[:, :, -3:-2].expand(-1, -1, 2))


def test_feature_map_in_units_of_the_nearest_entrys_spread(monkeypatch):
    """The bank's neighbourhood sizes equal a brute-force k-nearest-neighbour search over the entries of other
    images, and the map divides each patch's nearest-neighbour distance by its nearest entry's size (a local
    outlier factor)."""
    import memstream.models.anomaly as anomaly_model
    from memstream.pipelines.anomaly import fit_bank_scale, fit_normality

    monkeypatch.setattr(anomaly_model, "BANK_CHUNK", 1024)  # the search's chunks meet in the middle of the bank
    model = tiny(bank_size=4096, pixel_patch=4)
    fit_normality(model, frames(40).numpy())
    memory = model.banks[0]
    bank = memory.entries[memory.valid]
    assert len(bank) > 2048
    d = torch.cdist(bank.double(), bank.double())
    sources = torch.arange(len(bank)) % 7  # seven "images"
    fit_bank_scale(model, sources, chunk=1000)  # chunks that do not divide the bank
    radius = d.masked_fill(sources[:, None] == sources[None, :], float("inf")).topk(5, largest=False).values[:, 4]
    assert torch.allclose(memory.scale[memory.valid].double(), radius + 0.5 * radius.median(), rtol=1e-3,
                          atol=1e-3)
    fit_bank_scale(model)  # no sources: any other entry (density_k = 5, itself excluded)
    scale = memory.scale[memory.valid]
    radius = d.topk(6, dim=-1, largest=False).values[:, 5]
    assert torch.allclose(scale.double(), radius + 0.5 * radius.median(), rtol=1e-3, atol=1e-3)
    feats = model.features(frames(2, 7))
    with torch.no_grad():
        got = model.feature_map([feats])
    q = memory.space(feats).flatten(0, 1).double()
    dist, nearest = torch.cdist(q, bank.double()).min(-1)
    want = model._upsample((dist / scale.double()[nearest]).float().view(2, -1), model.cfg.feature_margin)
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    plain = tiny(bank_size=4096, density_k=0, pixel_patch=4)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "banks.0.scale"})
    with torch.no_grad():
        assert torch.allclose(plain.feature_map([feats]), model._upsample(dist.float().view(2, -1), 2), atol=1e-3)


def test_each_bank_pools_its_own_image():
    """``pixel_pool`` per patch size: each bank cuts its patches from the image pooled by its own factor, on its
    own grid and margin; the map is the mean of the banks' maps, each upsampled from its own grid."""
    import torch.nn.functional as F
    from memstream.pipelines.anomaly import fit_normality

    model = tiny(bank_size=4096, density_k=0, pixel_patch=(4, 6), pixel_pool=(1, 2))
    cfg = model.cfg
    assert cfg.pixel_pool == (1, 2) and [b.pool for b in model.banks] == [1, 2]
    # 4x4 patches of the 32x32 image every 2 px: 15x15 cells, margin 1; 6x6 of the 16x16 pooled one: 6x6, margin 4
    assert [cfg.patch_grid(i) for i in range(2)] == [15, 6] and [cfg.patch_margin(i) for i in range(2)] == [1, 4]
    summary = fit_normality(model, frames(12).numpy())
    assert [(b["patch"], b["pool"]) for b in summary["banks"]] == [(4, 1), (6, 2)]
    x = frames(2, 7)
    image = model.pixel_image(x)
    assert image.shape == (2, 3, 32, 32)
    with torch.no_grad():
        grids = model.grid_features(x)
        got = model.feature_map(grids)
    unfold = lambda im, p: F.unfold(im, p, stride=2).transpose(1, 2)  # noqa: E731 - (F, cells, 3*p*p), channel-major
    assert torch.allclose(grids[0], unfold(image, 4), atol=1e-6)
    assert torch.allclose(grids[1], unfold(F.avg_pool2d(image, 2), 6), atol=1e-6)
    want = []
    for i, (bank, g) in enumerate(zip(model.banks, grids, strict=True)):
        dist = torch.cdist(bank.space(g).flatten(0, 1).double(), bank.entries[bank.valid].double()).amin(-1)
        want.append(model._upsample(dist.float().view(2, -1), cfg.patch_margin(i)))
    assert torch.allclose(got, torch.stack(want).mean(0), rtol=1e-3, atol=1e-3)
    # the preset: 4x4 of the full image, 6x6 of the pooled one; given patch sizes alone, every bank pools by 2
    assert tiny().cfg.pixel_pool == (1, 2) and tiny(pixel_patch=(4, 8)).cfg.pixel_pool == (2, 2)
    # one factor for every bank, however it is given; two banks may share a patch size at different factors
    assert tiny(pixel_pool=1).cfg.pixel_pool == (1, 1) == tiny(pixel_pool=(1, 1)).cfg.pixel_pool
    assert tiny(pixel_pool=(1, 1)).cfg.replace(pixel_patch=4).pixel_pool == (1,)
    assert tiny(pixel_patch=(4, 4), pixel_pool=(1, 2)).cfg.patch_grid(1) == 7
    for bad in ({"pixel_pool": (1, 2, 2)}, {"pixel_patch": (4, 4), "pixel_pool": (2, 2)}):
        with pytest.raises(ValueError, match="pixel_pool"):
            tiny(**bad)


def test_search_in_blocks_equals_all_at_once(monkeypatch):
    """Eager, the bank search runs in blocks of patches and entries (memory and speed); the nearest entry, its
    spread and so the distances are those of one search over all patches and entries, and a brute force's."""
    import memstream.models.anomaly as anomaly
    from memstream.pipelines.anomaly import fit_normality

    model = tiny(bank_size=4096, density_k=3, pixel_patch=(4, 6), pixel_pool=(1, 2))
    fit_normality(model, frames(12).numpy())
    with torch.no_grad():
        grids = model.grid_features(frames(3, 5))
        whole = [bank.distance(g) for bank, g in zip(model.banks, grids, strict=True)]
        monkeypatch.setattr(anomaly, "QUERY_BLOCK", 50)  # 50 patches x 300 entries a block: uneven last blocks
        monkeypatch.setattr(anomaly, "EAGER_BLOCK", 50 * 300)
        blocked = [bank.distance(g) for bank, g in zip(model.banks, grids, strict=True)]
    for bank, g, a, b in zip(model.banks, grids, whole, blocked, strict=True):
        assert a.shape == b.shape == g.shape[:2] and torch.allclose(a, b, atol=1e-5)
        d = torch.cdist(bank.space(g).flatten(0, 1).double(), bank.entries[bank.valid].double())
        nearest = d.argmin(-1)
        want = d.gather(1, nearest[:, None])[:, 0] / bank.scale[bank.valid][nearest].double()
        assert torch.allclose(b.flatten().double(), want, atol=1e-3)


def test_spread_is_measured_against_other_recordings():
    """Frames of one recording are near duplicates: with ``groups``, an entry's spread skips its own recording's
    entries (here exact copies), so it is the distance to another recording; without, the copies make it 0."""
    from memstream.pipelines.anomaly import fit_normality

    copies = np.repeat(frames(5).numpy(), 3, axis=0)  # 5 recordings of 3 identical frames
    spreads = []
    for groups in (None, np.repeat(np.arange(5), 3)):
        model = tiny(bank_size=4096, density_k=2, pixel_patch=4)
        fit_normality(model, copies, holdout=0.1, groups=groups)
        bank = model.banks[0]
        spreads.append(bank.scale[bank.valid])
    plain, grouped = spreads
    assert float(plain.median()) < 0.01 < 0.1 < float(grouped.min())  # copies at 0 (float rounding), others not
    with pytest.raises(ValueError, match="groups"):
        fit_normality(tiny(), copies, groups=np.zeros(3))


def test_bank_candidates_are_bounded(monkeypatch):
    import memstream.pipelines.anomaly as anomaly

    monkeypatch.setattr(anomaly, "MAX_PATCHES", 90)  # 9 bank images of 13 x 13 patches: 10 kept of each
    summary = anomaly.fit_normality(tiny(), frames(12).numpy(), holdout=0.25)
    assert summary["bank_from_patches"] == 90 and summary["bank"] == 64


def test_feature_config_errors_and_old_checkpoints():
    from memstream.models.anomaly import AnomalyConfig

    for bad, match in (({"pixel_patch": 3}, "pixel_patch"), ({"light_sigma": 0.5}, "light_sigma"),
                       ({"features_from": "vgg"}, "features_from"), ({"bank_pick": "kmeans"}, "bank_pick"),
                       ({"pixel_pool": 3}, "pixel_pool"), ({"position_dims": 64}, "position_dims"),
                       ({"density_soft": 0.0}, "density_soft"), ({"bank_dims": 49}, "bank_dims"),
                       ({"pixel_patch": (4, 4)}, "pixel_patch"), ({"pixel_patch": 16}, "pixel_patch")):
        with pytest.raises(ValueError, match=match):
            tiny(**bad)
    new = ("features_from", "bank_pick", "bank_dims", "density_k", "colour_balance")
    old = {k: v for k, v in tiny().cfg.to_dict().items() if k not in new}
    cfg = AnomalyConfig.from_dict(old)  # saved before the pixel features: it keeps the encoder's and the coreset
    assert cfg.features_from == "encoder" and cfg.bank_pick == "coreset" and cfg.feature_grid == cfg.grid
    assert cfg.bank_dims == 0 and cfg.density_k == 0 and not cfg.colour_balance
    one = AnomalyConfig.from_dict({**tiny().cfg.to_dict(), "pixel_patch": 4, "pixel_pool": 2})  # one patch size
    assert one.pixel_patch == (4,) and one.pixel_pool == (2,) and AnomalyConfig.from_dict(one.to_dict()) == one
    # weights saved before the banks were modules load into the first bank
    model = tiny(pixel_patch=4)
    model.banks[0].entries.normal_()
    renamed = {"banks.0.center": "bank_center", "banks.0.proj": "bank_proj", "banks.0.entries": "bank",
               "banks.0.valid": "bank_valid", "banks.0.scale": "bank_scale"}
    fresh = tiny(pixel_patch=4)
    fresh.load_state_dict({renamed.get(k, k): v for k, v in model.state_dict().items()})
    assert torch.equal(fresh.banks[0].entries, model.banks[0].entries)


def _aligned(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images of one aligned part: a dark left half, a bright right half, sensor noise."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 32, 32, 3), 60.0)
    x[:, :, 16:] = 190.0
    return np.clip(x + rng.normal(0, 6, x.shape), 0, 255).astype(np.uint8)


def test_position_score_sees_normal_content_in_the_wrong_place():
    """A bright block moved into the dark half: every patch of it looks like a normal patch somewhere, so the
    global bank barely moves, while the per-position Gaussian of that place has never seen it."""
    from memstream.pipelines.anomaly import fit_normality

    model = tiny(score="position")
    summary = fit_normality(model, _aligned(24, 0))
    assert len(summary["position_stats"]) == 2
    proj = model.position_proj
    assert torch.allclose(proj.t() @ proj, torch.eye(proj.shape[1]), atol=1e-4)  # principal components
    test = _aligned(5, 1)
    test[0, 8:16, 0:8] = test[0, 8:16, 16:24]  # a right-half patch copied into the left half
    with torch.no_grad():
        raw, _ = model.raw_maps(torch.from_numpy(test))
        position, features = (model.standardise(n, raw[n]) for n in ("position", "features"))
        amap, score, _ = model.spatial(torch.from_numpy(test))
    assert torch.equal(amap, position)  # score "position" is that map alone
    assert float(score[0]) > float(score[1:].max()) + 3.0  # standard deviations above every normal image
    margin = lambda m: float(m[0].amax() - m[1:].amax())  # noqa: E731 - anomalous image's peak over the normals'
    assert margin(position) > 3 * max(margin(features), 0.1)
    with pytest.raises(ValueError, match="position_dims"):
        tiny(score="position", position_dims=0)


def test_memae_addressing_runs():
    model = tiny(addressing="memae")
    with torch.no_grad():
        amap, _, _ = model.spatial(frames(2))
    assert torch.isfinite(amap).all()


@pytest.mark.parametrize(("temporal", "score", "source"), [(False, "features", "pixels"), (True, "features", "pixels"),
                                                       (False, "position", "pixels"), (False, "features", "encoder")])
def test_onnx_runtime_equals_pytorch(tmp_path, temporal, score, source):
    pytest.importorskip("onnxruntime")
    from memstream.export import OnnxBackend, TorchBackend
    from memstream.pipelines.anomaly import fit_normality
    from memstream.pipelines.anomaly_task import export_anomaly, score_video

    model = tiny(temporal=temporal, score=score, features_from=source)
    fit_normality(model, frames(8).numpy())
    export_anomaly(model, tmp_path / "a.onnx")
    video = frames(3 * model.cfg.segment + 1, 5).numpy()  # a padded last segment
    ours = score_video(TorchBackend(model), video, model.cfg.segment)
    theirs = score_video(OnnxBackend(tmp_path / "a.onnx", threads=1), video, model.cfg.segment)
    for k in ours:
        assert np.allclose(ours[k], theirs[k], atol=1e-3), k


def test_onnx_search_is_whole_while_eager_search_is_blocked(tmp_path, monkeypatch):
    """Eager, the bank search runs in blocks (here many, of 50 patches); the exported graph searches all patches
    at once, so its batch axis stays dynamic: the same maps and scores at any batch."""
    pytest.importorskip("onnxruntime")
    import memstream.models.anomaly as anomaly
    from memstream.export import OnnxBackend
    from memstream.pipelines.anomaly import fit_normality
    from memstream.pipelines.anomaly_task import export_anomaly, score_images

    monkeypatch.setattr(anomaly, "QUERY_BLOCK", 50)
    monkeypatch.setattr(anomaly, "EAGER_BLOCK", 50 * 300)
    model = tiny(bank_size=4096)
    fit_normality(model, frames(8).numpy())
    export_anomaly(model, tmp_path / "a.onnx")
    images = frames(5, 3).numpy()
    maps, scores = score_images(model, images, batch=5)
    onnx = OnnxBackend(tmp_path / "a.onnx", threads=1)
    for batch in (2, 5):
        got_maps, got_scores = score_images(onnx, images, batch=batch)
        assert np.allclose(got_maps, maps, atol=1e-3) and np.allclose(got_scores, scores, atol=1e-3), batch


def test_in_stream_calibration():
    from memstream.pipelines.anomaly_task import AnomalyTask
    from memstream.pipelines.segmenter import Segment

    task = AnomalyTask(tiny(), calibration_s=1.0, k_std=3.0)
    decoder = task.new_decoder("0")
    rng = np.random.default_rng(0)
    events = []
    for i in range(20):
        score = 10.0 if i == 15 else float(rng.normal(1.0, 0.1))
        outputs = {"score": np.array([score]), "image_score": np.array([score]), "temporal": np.zeros(1),
                   "anomaly_map": np.zeros((1, 32, 32))}
        events += decoder.update(outputs, Segment(np.zeros((1, 32, 32, 3), np.uint8), np.ones(1, bool), i / 8, 8.0,
                                                  i, np.array([i / 8])))
    calibrating = [e for e in events if e.get("calibrating")]
    assert len(calibrating) == 9  # frames up to 1 s (8 frames at 8 fps) plus the one that crosses it
    judged = [e for e in events if "anomalous" in e]
    assert [e["anomalous"] for e in judged].count(True) == 1 and judged[15 - 9]["anomalous"]
    fixed = AnomalyTask(tiny(), threshold=5.0).new_decoder("1")
    assert fixed.threshold == 5.0


def test_cli_train_run_export(tmp_path, capsys):
    import cv2
    from memstream.pipelines.synth_defects import generate

    data = tmp_path / "defects"
    generate(data, categories=["weave"], train=6, test_good=2, test_defect=1, size=32, video_train=1, video_test=1,
             video_seconds=5, video_size=64)
    code = main(["train", "anomaly", "--data", str(data), "--category", "weave", "--out", str(tmp_path / "m"),
                 "--steps", "2", "--batch", "2", "--image-size", "32", "--threads", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mae"]["steps"] == 2 and summary["normality"]["bank"] > 0
    model = tiny(temporal=True)
    save_checkpoint(tmp_path / "v", model, {"model": "anomaly", "config": model.cfg.to_dict()})
    video = sorted((data / "video" / "test").glob("*.mp4"))[0]
    out = tmp_path / "out"
    assert main(["run", "anomaly", "--source", str(video), "--checkpoint", str(tmp_path / "v"), "--out", str(out),
                 "--calibration", "1", "--overlay", str(tmp_path / "heat.mp4")]) == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    scored = [e for e in events if e.get("type") == "anomaly"]
    cap = cv2.VideoCapture(str(video))
    assert len(scored) == int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert any("threshold" in e for e in scored) and (tmp_path / "heat.mp4").stat().st_size > 0
    assert main(["export", "anomaly", "--checkpoint", str(tmp_path / "v"), "--out", str(tmp_path / "a.onnx")]) == 0
    assert Path(tmp_path / "a.onnx").is_file()
    capsys.readouterr()
    assert main(["train", "anomaly", "--data", str(data), "--category", "nope", "--out", str(tmp_path / "x"),
                 "--steps", "1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bundled_model_flags_the_sample_clip():
    from memstream.export import TorchBackend
    from memstream.pipelines.anomaly import read_video_frames
    from memstream.pipelines.anomaly_metrics import frame_auroc
    from memstream.pipelines.anomaly_task import bundled_anomaly_dir, load_anomaly_model, score_video

    folder = bundled_anomaly_dir()
    model, config = load_anomaly_model(folder)
    assert model.cfg.score == "fused" and model.cfg.temporal is not None  # the video benchmark's best
    assert config["command"].startswith("memstream train anomaly") and (folder / "CARD.md").is_file()
    info = json.loads((folder / "sample.json").read_text())
    frames = read_video_frames(folder / "sample.mp4", model.cfg.image_size)
    assert len(frames) == info["frames"]
    scores = score_video(TorchBackend(model.eval()), frames, model.cfg.segment)
    assert frame_auroc(np.asarray(info["frame_labels"]), scores["score"]) > 0.8  # measured 0.875 (CARD.md)
