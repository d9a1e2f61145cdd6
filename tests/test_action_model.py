"""The action model: streaming equals the whole sequence, the boundary queue reaches back beyond any
window, ONNX Runtime equals PyTorch, bad configuration and input fail clearly."""

from __future__ import annotations

import pytest
import torch
from memstream.memory import CoreConfig
from memstream.models import build
from memstream.models.action import ActionConfig, ActionModel, distance_bucket, load_backbone_weights

T = 4


def tiny(**overrides) -> ActionModel:
    base = dict(segment=T, dim=32, heads=2, layers=2, memory_length=8, start_memory=3, image_size=32, dropout=0.0)
    return build("action-small", **{**base, **overrides}).eval()


def frames(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, 32, 32, 3), generator=g, dtype=torch.uint8)


def stream(model: ActionModel, x: torch.Tensor, mask: torch.Tensor):
    state = model.init_state(x.shape[0])
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[1], T):
            o, state = model.step(x[:, i:i + T], state, None, mask[:, i:i + T])
            outs.append(o)
    return type(outs[0])(*(torch.cat(parts, 1) for parts in zip(*outs, strict=True))), state


@pytest.mark.parametrize("overrides", [
    {},                                               # gated queue + boundary queue + motion
    {"memory": "none", "start_memory": 0},            # the window-only baseline
    {"motion": False, "write_gate": False},
    {"input": "features", "feature_dim": 12, "motion": False, "memory": "ntm"},
])
def test_streaming_equals_sequence(overrides):
    torch.manual_seed(0)
    model = tiny(**overrides)
    with torch.no_grad():
        model.start.bias.fill_(0.5)  # boundary writes happen, so the queue is exercised
    b, n = 2, 7 * T
    x = torch.randn(b, n, 12) if model.cfg.input == "features" else frames(b, n)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, -3:] = False
    with torch.no_grad():
        seq = model.forward_sequence(x, mask).outputs
    streamed, _ = stream(model, x, mask)
    for name in seq._fields:
        a, c = getattr(seq, name), getattr(streamed, name)
        valid = mask if a.dim() == 2 else mask.unsqueeze(-1)
        torch.testing.assert_close(a * valid, c * valid, atol=2e-5, rtol=1e-4, msg=name)


def test_boundary_queue_points_beyond_the_segment():
    torch.manual_seed(0)
    model = tiny()
    with torch.no_grad():  # every segment writes its candidate; the pointer prefers far candidates
        model.start.bias.fill_(5.0)
        model.distance_bias.weight.copy_(torch.arange(model.cfg.distance_buckets, dtype=torch.float).unsqueeze(1))
    x = frames(1, 6 * T)
    out, state = stream(model, x, torch.ones(1, 6 * T, dtype=torch.bool))
    assert bool(state.start_valid.all())  # 3 slots, 6 writes: the FIFO is full
    assert float(out.start_back.max()) > 2 * T  # a start estimate older than two segments
    # The queue holds the last three segments' candidates, oldest first.
    seg = state.start_pos // T
    assert seg.tolist() == [[3, 4, 5]]
    window = tiny(memory="none", start_memory=0)
    out_w, _ = stream(window, x, torch.ones(1, 6 * T, dtype=torch.bool))
    assert float(out_w.start_back.max()) <= T - 1  # without memory: never before the segment


def test_teacher_forcing_writes_the_given_frames():
    model = tiny()
    x = frames(1, 4 * T)
    start_index = torch.tensor([[2, -1, 0, -1]])
    with torch.no_grad():
        out = model.forward_sequence(x, start_index=start_index)
    n = 4
    memory_pos = out.candidate_pos[0, :, :n]
    ok = out.candidate_ok[0, :, :n]
    assert set(memory_pos[ok].tolist()) == {2, 2 * T}
    assert not ok[:T].any()  # nothing written before the first segment
    assert ok[3 * T:, 0].all() and ok[3 * T:, 2].all()


def test_reset_and_fixed_state():
    model = tiny()
    x = frames(2, 5 * T, seed=1)
    state = model.init_state(2)
    shapes = [t.shape for t in state]
    with torch.no_grad():
        for i in range(0, 5 * T, T):
            _, state = model.step(x[:, i:i + T], state)
        assert [t.shape for t in state] == shapes
        fresh, _ = model.step(x[:, :T], model.init_state(2))
        again, _ = model.step(x[:, :T], state, torch.tensor([True, False]))
    torch.testing.assert_close(fresh.class_probs[0], again.class_probs[0])
    assert not torch.allclose(fresh.class_probs[1], again.class_probs[1])


def test_bad_config_and_input():
    core = CoreConfig(dim=32, heads=2, layers=1, segment=T)
    for bad, match in ((dict(classes=()), "classes is empty"), (dict(classes=("a", "a")), "duplicates"),
                       (dict(classes=("background",)), "implicit"), (dict(classes=("a",), input="audio"), "input"),
                       (dict(classes=("a",), fps=0), "fps"), (dict(classes=("a",), image_size=16), "image_size"),
                       (dict(classes=("a",), backbone="no_such_net"), "timm"),
                       (dict(classes=("a",), input="features"), "feature_dim")):
        with pytest.raises(ValueError, match=match):
            ActionConfig(core=core, **bad)
    model = tiny()
    state = model.init_state(1)
    with pytest.raises(ValueError, match="uint8"):
        model.step(torch.zeros(1, T, 32, 32, 3), state)
    with pytest.raises(ValueError, match=r"takes \(B, 4, 32, 32, 3\)"):
        model.step(torch.zeros(1, T, 64, 64, 3, dtype=torch.uint8), state)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.forward_sequence(torch.zeros(1, T + 1, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask"):
        model.step(torch.zeros(1, T, 32, 32, 3, dtype=torch.uint8), state, None, torch.ones(1, T + 1, dtype=torch.bool))


def test_distance_buckets():
    d = torch.tensor([-3, 0, 1, 2, 3, 4, 7, 8, 10**9])
    assert distance_bucket(d, 16).tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 15]


def test_backbone_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = tiny()
    plain = timm.create_model(model.cfg.backbone, pretrained=False, num_classes=10)  # 3-channel stem + classifier
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(tmp_path / "bb.safetensors"))
    report = load_backbone_weights(model, tmp_path / "bb.safetensors")
    assert report["loaded"] > 10 and report["missing"] == 0 and report["unexpected"] == 2  # the classifier
    stem = model.encoder.backbone.conv_stem.weight
    assert stem.shape[1] == 6
    torch.save({"state_dict": {"unrelated.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_backbone_weights(model, tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(model, tmp_path / "missing.pth")


@pytest.mark.parametrize("opset", [23, 18])
def test_onnx_runtime_equals_pytorch(tmp_path, opset):
    from memstream.export import OnnxBackend, TorchBackend, export_step

    torch.manual_seed(0)
    model = tiny()
    with torch.no_grad():
        model.start.bias.fill_(0.2)
    export_step(model, tmp_path / "a.onnx", frames(2, T), opset=opset)
    ort, pt = OnnxBackend(tmp_path / "a.onnx", threads=1), TorchBackend(model)
    s_ort, s_pt = ort.init_state(3), pt.init_state(3)
    g = torch.Generator().manual_seed(3)
    for i in range(24):
        x = frames(3, T, seed=i)
        reset = torch.rand(3, generator=g) < 0.15
        mask = torch.ones(3, T, dtype=torch.bool)
        if i % 7 == 6:
            mask[2, 2:] = False
        o1, s_ort = ort.step(x, s_ort, reset, mask)
        o2, s_pt = pt.step(x, s_pt, reset, mask)
        for name in o2._fields:
            torch.testing.assert_close(getattr(o1, name), getattr(o2, name), atol=1e-4, rtol=1e-4)
        for a, c in zip(s_ort, s_pt, strict=True):
            torch.testing.assert_close(a, c.to(a.dtype), atol=1e-4, rtol=1e-4)
