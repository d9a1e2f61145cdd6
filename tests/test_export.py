"""ONNX export of the streaming step: parity with PyTorch, metadata, backends and the state contract."""

from __future__ import annotations

import shutil
from typing import NamedTuple

import numpy as np
import onnx
import pytest
import torch
from conftest import VARIANTS, build_core
from memstream.export import (
    DEFAULT_OPSET,
    FALLBACK_OPSET,
    ExportError,
    OnnxBackend,
    TorchBackend,
    check_state_io,
    export_step,
    read_metadata,
)
from memstream.memory import CoreConfig
from memstream.memory.core import ONNX_STANDARD_OPS
from onnx import TensorProto, helper
from torch import Tensor, nn

EXPORT_BATCH = 2  # batch of the export example
RUN_BATCH = 3     # batch used at run time: the batch axis must be dynamic
STEPS = 60
EXTRA_METADATA = {"labels": ["a", "b"], "sample_rate": 16000}


@pytest.fixture(scope="module", params=[(v, o) for v in VARIANTS for o in (23, 18)],
                ids=lambda p: f"{p[0]}-opset{p[1]}")
def exported(request, tmp_path_factory):
    """(core, path, proto, opset) for one (variant, opset), exported once per module."""
    variant, opset = request.param
    core = build_core(variant, seed=11)
    # Every norm its own weights: at init they are all ones, so an export that bound one norm's weights to another
    # (the exporter folds equal initializers into one) would still match.
    with torch.no_grad():
        for module in core.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))
    path = tmp_path_factory.mktemp("onnx") / f"{variant}-{opset}.onnx"
    x = torch.randn(EXPORT_BATCH, core.cfg.segment, core.cfg.dim)
    proto = export_step(core, path, x, opset=opset, metadata=EXTRA_METADATA)
    return core, path, proto, opset


def _backend(path) -> OnnxBackend:
    # One ONNX Runtime thread: a spinning intra-op pool would fight torch's threads for the 2 cores.
    return OnnxBackend(path, providers=["CPUExecutionProvider"], threads=1)


# -- parity ----------------------------------------------------------------------------------------------
def test_onnx_runtime_matches_torch(exported):
    """>= 50 streamed steps, random resets and padded segments, batch 3 on a graph exported with batch 2."""
    core, path, _, _ = exported
    ort_backend, torch_backend = _backend(path), TorchBackend(core)
    b, t, d = RUN_BATCH, core.cfg.segment, core.cfg.dim
    g = torch.Generator().manual_seed(21)
    s_onnx, s_torch = ort_backend.init_state(b), torch_backend.init_state(b)
    n_resets = n_padded = 0
    for i in range(STEPS):
        x = torch.randn(b, t, d, generator=g)
        reset = (torch.rand(b, generator=g) < 0.08) & (i > 0)
        n_valid = torch.where(torch.rand(b, generator=g) < 0.15, torch.randint(0, t, (b,), generator=g), t)
        mask = torch.arange(t).unsqueeze(0) < n_valid.unsqueeze(1)
        n_resets += int(reset.sum())
        n_padded += int((n_valid < t).sum())
        y_onnx, s_onnx = ort_backend.step(x, s_onnx, reset, mask)
        y_torch, s_torch = torch_backend.step(x, s_torch, reset, mask)
        assert y_onnx.shape == y_torch.shape == (b, t, d)
        # padded positions hold finite values to be ignored
        valid = mask.unsqueeze(-1)
        torch.testing.assert_close(y_onnx * valid, y_torch * valid, atol=1e-4, rtol=0, msg=f"outputs, step {i}")
        for f, a, ref in zip(s_torch._fields, s_onnx, s_torch, strict=True):
            assert a.dtype == ref.dtype and a.shape == ref.shape, f"state.{f}"
            if ref.is_floating_point():
                torch.testing.assert_close(a, ref, atol=1e-4, rtol=0, msg=f"state.{f}, step {i}")
            else:
                assert torch.equal(a, ref), f"state.{f} differs at step {i}"
    assert n_resets >= 2 and n_padded >= 5  # the random schedule exercised both


def test_opset_constants():
    assert (DEFAULT_OPSET, FALLBACK_OPSET) == (23, 18)


def test_attention_op_by_opset(exported):
    core, _, proto, opset = exported
    ops = {n.op_type for n in proto.graph.node}
    domain_opset = {o.domain: o.version for o in proto.opset_import}
    assert domain_opset.get("", domain_opset.get("ai.onnx")) == opset
    if opset >= 23:
        assert "Attention" in ops, sorted(ops)
    else:
        assert "Attention" not in ops and "RotaryEmbedding" not in ops, sorted(ops)
    assert not ONNX_STANDARD_OPS.get(), "export_step left the standard-ops switch on"


def test_standard_ops_at_opset_23(exported):
    """At opset 23 the layers are ONNX's own RotaryEmbedding and 3-D Attention ops (heads as attributes, no
    transposes around attention); the queue concatenates its token-major entries without any Transpose at all. A
    memory that changes attention (knn) keeps the 4-D form, its heads separate."""
    core, _, proto, opset = exported
    if opset < 23:
        pytest.skip("the standard ops exist from opset 23")
    nodes = proto.graph.node
    attention = [n for n in nodes if n.op_type == "Attention"]
    rotary = [n for n in nodes if n.op_type == "RotaryEmbedding"]
    flat = [{a.name: a.i for a in n.attribute if a.name.endswith("num_heads")} for n in attention]
    flat = [h for h in flat if h]  # 3-D: heads as attributes (tokens' update layer is a plain 4-D block)
    if core.memory_changes_attention:
        assert not rotary and not flat, [n.op_type for n in nodes]
        return
    assert len(flat) == len(rotary) == core.cfg.layers
    assert all(h == {"q_num_heads": core.cfg.heads, "kv_num_heads": core.cfg.heads} for h in flat)
    assert all(a.i == 2 * core.cfg.heads for n in rotary for a in n.attribute if a.name == "num_heads")
    if core.cfg.memory == "queue":
        assert "Transpose" not in {n.op_type for n in nodes}


def test_standard_ops_switch_is_on_only_inside_the_export(monkeypatch, tmp_path):
    """The switch is on while torch.onnx.export traces at opset 23, off at 18, and off again after an export that
    fails."""
    core = build_core("queue")
    seen = []

    def failing_export(*args, **kwargs):
        seen.append((kwargs["opset_version"], ONNX_STANDARD_OPS.get()))
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    for opset in (23, 18):
        with pytest.raises(RuntimeError, match="exporter failed"):
            export_step(core, tmp_path / "bad.onnx", torch.zeros(2, core.cfg.segment, core.cfg.dim), opset=opset)
        assert not ONNX_STANDARD_OPS.get()
    assert seen == [(23, True), (18, False)]


def test_graph_io_names_and_dynamic_batch(exported):
    core, _, proto, _ = exported
    fields = list(core.State._fields)
    assert [i.name for i in proto.graph.input] == ["x", *(f"state.{f}" for f in fields), "reset", "mask"]
    assert [o.name for o in proto.graph.output] == ["y", *(f"state_out.{f}" for f in fields)]
    for value in [*proto.graph.input, *proto.graph.output]:
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), f"{value.name}: batch axis is static"
    check_state_io(proto, fields)


def test_onnx_backend_init_state_from_metadata(exported):
    core, path, _, _ = exported
    backend = _backend(path)
    for batch in (1, 5):
        mine, ref = backend.init_state(batch), core.init_state(batch)
        assert list(mine._fields) == list(ref._fields)
        for f, a, r in zip(ref._fields, mine, ref, strict=True):
            assert a.shape == r.shape and a.dtype == r.dtype, f"state.{f}"
            assert not a.any()


# -- metadata and the backend built from the file alone ------------------------------------------------
def test_metadata_is_complete(exported):
    core, path, _, opset = exported
    meta = read_metadata(onnx.load(path))
    assert meta["segment"] == core.cfg.segment
    assert meta["input_shape"] == [core.cfg.segment, core.cfg.dim]
    assert meta["input_dtype"] == "float32"
    assert meta["opset"] == opset
    assert meta["outputs"] == ["y"]
    spec = core.state_spec(1)
    assert list(meta["state"]) == list(spec)
    for f, (shape, dtype) in spec.items():
        assert meta["state"][f] == {"shape": list(shape[1:]), "dtype": str(dtype).replace("torch.", "")}
    assert CoreConfig.from_dict(meta["config"]) == core.cfg
    assert {k: meta[k] for k in EXTRA_METADATA} == EXTRA_METADATA


def test_onnx_backend_needs_only_the_file(exported, tmp_path):
    core, path, _, _ = exported
    alone = tmp_path / "copied.onnx"  # nothing next to it: no config file, no weights
    shutil.copyfile(path, alone)
    backend = _backend(alone)
    assert backend.segment == core.cfg.segment
    assert CoreConfig.from_dict(backend.config) == core.cfg
    assert backend.input_shape == (core.cfg.segment, core.cfg.dim)


def test_onnx_backend_rejects_wrong_input_shape(exported):
    core, path, _, _ = exported
    backend = _backend(path)
    t, d = core.cfg.segment, core.cfg.dim
    state = backend.init_state(2)
    for bad in (torch.zeros(2, t + 1, d), torch.zeros(2, t, d - 1), torch.zeros(2, t)):
        with pytest.raises(ValueError, match=rf"\(B, {t}, {d}\)"):
            backend.step(bad, state, torch.zeros(2, dtype=torch.bool))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_export_without_autograd_keeps_the_graph_path(mode, tmp_path):
    """The eager step's inference shortcuts (no reset when none is asked for, no attention mask once every key is
    visible, the new queue as a view) depend on tensor values; an export under no_grad or inference_mode must
    still trace the graph path (reset Where nodes, masks), the same graph as with autograd on."""
    core = build_core("queue")
    x = torch.zeros(EXPORT_BATCH, core.cfg.segment, core.cfg.dim)
    export_step(core, tmp_path / "grad.onnx", x)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        export_step(core, tmp_path / "fast.onnx", x)
    ops = [[n.op_type for n in onnx.load(tmp_path / f).graph.node] for f in ("grad.onnx", "fast.onnx")]
    assert ops[0] == ops[1]
    assert ops[1].count("Where") >= len(core.init_state(1)) - 1, "the reset was traced away"


def test_onnx_backend_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxBackend(tmp_path / "missing.onnx")


def test_export_rejects_bad_arguments(tmp_path):
    core = build_core("none")
    x = torch.randn(EXPORT_BATCH, core.cfg.segment, core.cfg.dim)
    with pytest.raises(ValueError, match="batch >= 2"):
        export_step(core, tmp_path / "a.onnx", x[:1])
    with pytest.raises(ValueError, match="opset=17"):
        export_step(core, tmp_path / "a.onnx", x, opset=17)


# -- the state contract cannot be broken unnoticed ------------------------------------------------------
class _State(NamedTuple):
    memory: Tensor  # (B, D)
    step: Tensor    # (B,) int64


class _Contract(nn.Module):
    """A tiny stateful module; subclasses break the streaming contract in one way each."""

    dim, segment = 8, 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(self.dim, self.dim)

    def init_state(self, batch: int, device=None) -> _State:
        return _State(torch.zeros(batch, self.dim, device=device), torch.zeros(batch, dtype=torch.int64,
                                                                                device=device))


class _Good(_Contract):
    def step(self, x, state, reset, mask):
        memory = torch.where(reset.view(-1, 1), 0.0, state.memory) * 0.5 + x.mean(1)
        return self.proj(x) + memory.unsqueeze(1), _State(memory, state.step + 1)


class _MemoryInBuffer(_Contract):
    """Keeps its memory in a registered buffer updated in place: ONNX freezes it into a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(self.dim))

    def step(self, x, state, reset, mask):
        self.memory.mul_(0.5).add_(x.mean((0, 1)))
        memory = self.memory.expand(x.shape[0], -1).clone()
        return self.proj(x) + memory.unsqueeze(1), _State(memory, state.step + 1)


class _CounterInBuffer(_Good):
    """Threads its state correctly but also counts calls in a buffer (in place) and uses the count."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def step(self, x, state, reset, mask):
        self.calls += 1
        y, new = super().step(x, state, reset, mask)
        return y + self.calls, new


class _ItemControlFlow(_Contract):
    """Drives Python control flow from a tensor value with .item()."""

    def step(self, x, state, reset, mask):
        if state.step.max().item() > 0:
            memory = state.memory * 0.5 + x.mean(1)
        else:
            memory = x.mean(1)
        return self.proj(x) + memory.unsqueeze(1), _State(memory, state.step + 1)


def _example(model: _Contract) -> Tensor:
    return torch.randn(EXPORT_BATCH, model.segment, model.dim)


def test_contract_good_module_exports(tmp_path):
    model = _Good().eval()
    export_step(model, tmp_path / "good.onnx", _example(model), opset=FALLBACK_OPSET)
    backend, state_o, state_t = _backend(tmp_path / "good.onnx"), model.init_state(3), model.init_state(3)
    for i in range(4):
        x, reset = torch.randn(3, model.segment, model.dim), torch.tensor([False, i == 2, False])
        mask = torch.ones(3, model.segment, dtype=torch.bool)
        y_o, state_o = backend.step(x, state_o, reset, mask)
        with torch.no_grad():
            y_t, state_t = model.step(x, state_t, reset, mask)
        torch.testing.assert_close(y_o, y_t, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [_MemoryInBuffer, _CounterInBuffer], ids=["memory-in-buffer", "counter-in-buffer"])
def test_contract_inplace_buffer_update_raises(cls, tmp_path):
    model = cls().eval()
    with pytest.raises(ExportError, match="state|buffer"):
        export_step(model, tmp_path / "bad.onnx", _example(model), opset=FALLBACK_OPSET)
    assert not (tmp_path / "bad.onnx").exists()


def test_contract_item_control_flow_raises(tmp_path):
    """torch.export refuses data-dependent control flow: a clear error, never a silently frozen graph."""
    model = _ItemControlFlow().eval()
    with pytest.raises((ExportError, torch.onnx.OnnxExporterError)) as info:
        export_step(model, tmp_path / "bad.onnx", _example(model), opset=FALLBACK_OPSET)
    message = str(info.value) + "".join(str(e) for e in (info.value.__cause__, info.value.__context__) if e)
    # today torch.export refuses it (GuardOnDataDependentSymNode); an ExportError would do as well
    assert isinstance(info.value, ExportError) or "data-dependent" in message.lower(), message[:500]
    assert not (tmp_path / "bad.onnx").exists()


def _graph(*, state_input: bool = True, state_output: str = "add") -> onnx.ModelProto:
    """x, state.memory, reset, mask -> y, state_out.memory; state_out.memory made by ``state_output``:
    "add" (x + state), "constant" (a Constant node), "initializer" (a graph initializer), "none" (absent)."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f, ["batch", 4])]
    if state_input:
        inputs.append(helper.make_tensor_value_info("state.memory", f, ["batch", 4]))
    inputs += [helper.make_tensor_value_info("reset", TensorProto.BOOL, ["batch"]),
               helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4])]
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    initializers = []
    outputs = [helper.make_tensor_value_info("y", f, ["batch", 4])]
    zeros = helper.make_tensor("zeros", f, [2, 4], np.zeros(8, dtype=np.float32).tolist())
    if state_output == "add":
        nodes.append(helper.make_node("Add", ["x", "state.memory" if state_input else "x"], ["state_out.memory"]))
    elif state_output == "constant":
        nodes.append(helper.make_node("Constant", [], ["state_out.memory"], value=zeros))
    elif state_output == "initializer":
        initializers.append(helper.make_tensor("state_out.memory", f, [2, 4], np.zeros(8, np.float32).tolist()))
    if state_output != "none":
        outputs.append(helper.make_tensor_value_info("state_out.memory", f, ["batch", 4]))
    graph = helper.make_graph(nodes, "step", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_check_state_io_accepts_a_good_graph():
    proto = _graph()
    onnx.checker.check_model(proto)
    check_state_io(proto, ["memory"])


@pytest.mark.parametrize("kind", ["missing-input", "constant-output", "initializer-output", "missing-output"])
def test_check_state_io_rejects(kind):
    proto = {
        "missing-input": lambda: _graph(state_input=False),
        "constant-output": lambda: _graph(state_output="constant"),
        "initializer-output": lambda: _graph(state_output="initializer"),
        "missing-output": lambda: _graph(state_output="none"),
    }[kind]()
    with pytest.raises(ExportError, match="state"):
        check_state_io(proto, ["memory"])
