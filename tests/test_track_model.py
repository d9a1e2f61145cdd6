"""The tracker model: streaming == sequence, explicit track memory, ONNX Runtime == PyTorch, decoder rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memstream.models import build
from memstream.models.track import ASSIGN_NONE, ASSIGN_REMOVE, TrackConfig, TrackModel, pairwise_iou
from memstream.pipelines.track_decoder import TrackDecoder, TrackRules, load_rules

N, K = 6, 5


def tiny(**overrides) -> TrackModel:
    torch.manual_seed(0)
    args = {"dim": 32, "heads": 2, "layers": 1, "memory_length": 4, "image_size": (64, 96), "max_tracks": N,
            "max_detections": K, "neck_dim": 16, "embed_dim": 16, **overrides}
    return build("track-small", **args).eval()


def frames(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, s, 64, 96, 3), dtype=torch.uint8, generator=g)


def public(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, s, K, 2, generator=g) * 0.7
    wh = 0.05 + torch.rand(b, s, K, 2, generator=g) * 0.2
    score = torch.rand(b, s, K, 1, generator=g)
    valid = (torch.rand(b, s, K, 1, generator=g) > 0.2).float()
    return torch.cat((xy, xy + wh, score, valid), dim=-1)


def schedule(b: int, s: int) -> torch.Tensor:
    """Births, continuations, misses and a removal over ``s`` frames."""
    a = torch.full((b, s, N), ASSIGN_NONE, dtype=torch.long)
    a[:, 1, 0], a[:, 1, 1] = 0, 1
    a[:, 2, 0] = 2
    a[:, 4, 1] = 0  # slot 1 missed frame 2, matched again
    a[:, 5, 0] = ASSIGN_REMOVE
    a[:, 6, 0] = 3  # a new track in a freed slot
    a[1, 3, 2] = 4
    return a


@pytest.mark.parametrize("own", [True, False])
def test_streaming_equals_sequence(own):
    model = tiny()
    b, s = 2, 8
    x, assign = frames(b, s), schedule(b, s)
    dets = None if own else public(b, s)
    with torch.no_grad():
        whole, end = model.forward_sequence(x, assign, dets)
        state = model.init_state(b)
        steps = []
        for t in range(s):
            out, state = model.step(x[:, t:t + 1], state, None, None, assign[:, t],
                                    None if dets is None else dets[:, t])
            steps.append(out)
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        # the backbone sees B*S frames at once in one case, B in the other: convolution kernels may differ
        # in the last bits; everything discrete (validity, assignment) must be equal
        return torch.allclose(a, b, atol=1e-5, rtol=1e-5) if a.is_floating_point() else torch.equal(a, b)

    for name in whole._fields:
        streamed = torch.stack([getattr(o, name) for o in steps], dim=1)
        assert same(streamed, getattr(whole, name)), name
    for name in end._fields:
        assert same(getattr(state, name), getattr(end, name)), name
    assert whole.logp.shape == (b, s, K, N + 1)
    assert torch.allclose(whole.logp.exp().sum(-1), torch.ones(b, s, K), atol=1e-5)


def test_track_memory_is_explicit_and_kept_through_gaps():
    model = tiny()
    b, s = 1, 7
    x, dets = frames(b, s, 1), public(b, s, 1)
    dets[..., 5] = 1.0
    assign = torch.full((b, s, N), ASSIGN_NONE, dtype=torch.long)
    assign[:, 1, 0] = 0
    with torch.no_grad():
        _, after_birth = model.forward_sequence(x[:, :2], assign[:, :2], dets[:, :2])
        _, after_gap = model.forward_sequence(x[:, 2:], assign[:, 2:], dets[:, 2:], state=after_birth)
    assert bool(after_birth.track_valid[0, 0]) and not bool(after_birth.track_valid[0, 1:].any())
    # Five frames unseen: the track's memories and core state are untouched, only its gap grows.
    for name in ("track_long", "track_short", "track_query", "track_box", "core_keys"):
        if name in after_gap._fields:
            assert torch.equal(getattr(after_gap, name)[0, 0], getattr(after_birth, name)[0, 0]), name
    assert after_gap.track_gap[0, 0] == 5
    # A birth sets the long memory to the detection's embedding; later confident matches move it by the rate.
    assign = torch.full((b, 3, N), ASSIGN_NONE, dtype=torch.long)
    assign[:, 1, 0] = 0
    assign[:, 2, 0] = 1
    d = dets[:, :3].clone()
    d[:, :, :, 4] = 0.9
    with torch.no_grad():
        _, st1 = model.forward_sequence(x[:, :2], assign[:, :2], d[:, :2])
        emb1 = st1.prev_emb[0, 1].clone()
        _, st2 = model.forward_sequence(x[:, 2:3], assign[:, 2:3], d[:, 2:3], state=st1)
    rate = model.cfg.long_memory_rate
    expected = (1 - rate) * st1.track_long[0, 0] + rate * emb1
    assert torch.allclose(st2.track_long[0, 0], expected, atol=1e-6)
    assert torch.equal(st2.track_short[0, 0], emb1)


def test_reset_clears_a_stream_and_memory_off_keeps_last_observation_only():
    model = tiny()
    x, assign, dets = frames(2, 8), schedule(2, 8), public(2, 8)
    dets[..., 5] = 1.0
    with torch.no_grad():
        _, st = model.forward_sequence(x, assign, dets)
        reset = torch.tensor([True, False])
        out, st2 = model.step(x[:, 0:1], st, reset, None, torch.full((2, N), ASSIGN_NONE), dets[:, 0])
    assert not bool(st2.track_valid[0].any()) and bool(st2.track_valid[1].any())
    with torch.no_grad():
        on, _ = model.forward_sequence(x, assign, dets)
        off, _ = model.forward_sequence(x, assign, dets, memory=False)
    assert torch.equal(on.logp[:, :2], off.logp[:, :2])  # one observation each: nothing to forget yet
    assert not torch.allclose(on.logp[:, 2], off.logp[:, 2])  # slot 0 has two observations by frame 2


def test_bad_input_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="uint8 RGB"):
        model.forward_sequence(torch.zeros(1, 2, 64, 96, 3))
    with pytest.raises(ValueError, match="dets of shape"):
        model.forward_sequence(frames(1, 2), dets=torch.zeros(1, 2, K + 1, 6))
    with pytest.raises(ValueError, match="segment"):
        TrackConfig(core=build("core-tiny").cfg)
    with pytest.raises(ValueError, match="image_size"):
        tiny(image_size=(60, 96))


def test_pairwise_iou():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    assert torch.allclose(pairwise_iou(a, b), torch.tensor([[1.0, 0.0], [0.25, 0.0]]))


# -- the decoder ------------------------------------------------------------------------------------------
def _frame(probs: list[list[float]], scores: list[float]) -> tuple:
    """Association probabilities (K, N + 1) -> the decoder's inputs for one frame."""
    k = len(scores)
    p = np.full((k, N + 1), 1e-6)
    for j, row in enumerate(probs):
        p[j, : len(row)] = np.maximum(row, 1e-6)
    p /= p.sum(1, keepdims=True)
    boxes = np.tile(np.array([[0.1, 0.1, 0.2, 0.3]]), (k, 1))
    return boxes, np.asarray(scores, np.float32), np.ones(k, bool), np.log(p)


def test_decoder_birth_match_tolerance_and_death():
    rules = TrackRules(det_thresh=0.3, new_track_thresh=0.5, match_thresh=0.3, min_hits=2, max_lost_s=0.3)
    dec = TrackDecoder(rules, N, frame_rate=10.0)  # max_lost = 3 frames
    new = [0.0] * N + [1.0]
    out, assign = dec.update(*_frame([new, new, new], [0.9, 0.6, 0.2]))
    assert [t["id"] for t in out] == [1, 2]  # warm-up frame: births reported; the 0.2 detection is ignored
    assert list(assign[:2]) == [0, 1] and (assign[2:] == ASSIGN_NONE).all()
    cont = [[0.9] + [0.0] * N, [0.0, 0.9] + [0.0] * (N - 1)]
    out, assign = dec.update(*_frame(cont, [0.9, 0.9]))
    assert [t["id"] for t in out] == [1, 2] and list(assign[:2]) == [0, 1]
    # Track 2 matched twice (confirmed); track 1 too. Now only track 1 is seen: track 2 is lost, not dead.
    for _ in range(3):
        out, assign = dec.update(*_frame([[0.9] + [0.0] * N], [0.9]))
        assert [t["id"] for t in out] == [1] and assign[1] == ASSIGN_NONE
    out, assign = dec.update(*_frame([[0.9] + [0.0] * N], [0.9]))
    assert assign[1] == ASSIGN_REMOVE  # lost for more than max_lost frames
    # A weak match (below match_thresh) is not taken: the detection starts a new track instead.
    out, assign = dec.update(*_frame([[0.2] + [0.0] * (N - 1) + [0.8]], [0.9]))
    assert assign[0] == ASSIGN_NONE and out == [] and 0 in assign[1:]


def test_decoder_tentative_tracks_die_at_first_miss_and_rules_load(tmp_path):
    dec = TrackDecoder(TrackRules(min_hits=3), N, frame_rate=10.0)
    new = [0.0] * N + [1.0]
    for _ in range(3):  # warm-up frames
        dec.update(*_frame([[0.9] + [0.0] * N], [0.9]))
    _, assign = dec.update(*_frame([new], [0.9]))  # a birth after warm-up: tentative, not reported
    slot = int(np.flatnonzero(assign == 0)[0])
    _, assign = dec.update(*_frame([[0.9] + [0.0] * N], [0.9]))
    assert assign[slot] == ASSIGN_REMOVE
    path = tmp_path / "rules.yaml"
    path.write_text("tracker_type: memstream\nmin_hits: 1\nmax_lost_s: 5\n")
    assert load_rules(path) == TrackRules(min_hits=1, max_lost_s=5.0)
    path.write_text("tracker_type: memstream\nmax_age: 3\n")
    with pytest.raises(ValueError, match="max_age"):
        load_rules(path)
    path.write_text("tracker_type: bytetrack\n")
    with pytest.raises(ValueError, match="bytetrack"):
        load_rules(path)
    with pytest.raises(ValueError, match="match_thresh"):
        TrackRules(match_thresh=1.5)


def test_onnx_runtime_equals_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from memstream.export import OnnxBackend, TorchBackend
    from memstream.pipelines.track import export_track

    model = tiny()
    path = tmp_path / "track.onnx"
    export_track(model, path, public=True)
    ort, pt = OnnxBackend(path, threads=1), TorchBackend(model)
    b, s = 2, 12
    x, dets = frames(b, s, 3), public(b, s, 3)
    rules = TrackRules(det_thresh=0.0, new_track_thresh=0.3, match_thresh=0.2, min_hits=1)
    runs = []
    for backend in (pt, ort):
        state = backend.init_state(b)
        decoders = [TrackDecoder(rules, N, 10.0) for _ in range(b)]
        assign = torch.full((b, N), ASSIGN_NONE, dtype=torch.long)
        outs, ids = [], []
        for t in range(s):
            reset = torch.tensor([t == 0, t in (0, 7)])  # stream 1 restarts mid-way
            if t == 7:
                decoders[1] = TrackDecoder(rules, N, 10.0)
                assign[1] = ASSIGN_NONE
            out, state = backend.step(x[:, t:t + 1], state, reset, None, assign=assign, dets=dets[:, t])
            outs.append(out)
            rows = []
            for i, dec in enumerate(decoders):
                tracks, a = dec.update(out.det_box[i].numpy(), out.det_score[i].numpy(), out.det_valid[i].numpy(),
                                       out.logp[i].numpy())
                assign[i] = torch.from_numpy(a)
                rows.append([(tr["id"], tuple(np.round(tr["box"], 3))) for tr in tracks])
            ids.append(rows)
        runs.append((outs, ids))
    (pt_outs, pt_ids), (ort_outs, ort_ids) = runs
    for a, c in zip(pt_outs, ort_outs, strict=True):
        assert torch.equal(a.det_valid, c.det_valid)
        assert torch.allclose(a.det_box, c.det_box, atol=1e-5)
        assert torch.allclose(a.logp, c.logp, atol=1e-3)
    assert pt_ids == ort_ids
    assert any(rows for rows in pt_ids)
