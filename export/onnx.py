"""Export a streaming ``step`` to ONNX with its state as explicit inputs and outputs.

The graph is ``(x, *state, reset, mask) -> (outputs..., *state_out)``; names come from the state's
NamedTuple fields (``state.keys`` in, ``state_out.keys`` out), the batch axis is dynamic, and the
ONNX ``metadata_props`` carry everything a runtime needs (segment size, state shapes and dtypes,
the model config), so :class:`memstream.export.OnnxBackend` needs nothing but the file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence

import onnx
import torch
from memstream.memory.core import ONNX_STANDARD_OPS
from torch import Tensor, nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 23   # attention becomes the standard Attention op (fused in ONNX Runtime, TensorRT 10.14+)
FALLBACK_OPSET = 18  # attention decomposed into MatMul/Softmax for older runtimes
META_PREFIX = "memstream."


class ExportError(RuntimeError):
    """The exported graph does not keep the streaming contract (state in and out, nothing frozen)."""


def _output_names(outputs) -> list[str]:
    if isinstance(outputs, Tensor):
        return ["y"]
    if hasattr(outputs, "_fields"):
        return list(outputs._fields)
    return [f"y{i}" for i in range(len(outputs))]


class ExportStep(nn.Module):
    """Wraps ``model.step`` as ``forward(x, *state, reset, mask, *extra) -> (*outputs, *state)``.

    ``model`` needs ``step(x, state, reset, mask, **extra) -> (outputs, state)`` and ``init_state(batch)``;
    ``outputs`` is a tensor or a NamedTuple/tuple of tensors. ``extra`` names further per-step inputs
    (batch first), such as the tracker's assignment of the previous frame, passed by keyword.
    """

    def __init__(self, model: nn.Module, extra: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.state_type = type(model.init_state(1))
        self.extra = tuple(extra)

    def forward(self, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        n = len(flat) - len(self.extra)
        *state, reset, mask = flat[:n]
        named = dict(zip(self.extra, flat[n:], strict=True))
        outputs, new_state = self.model.step(x, self.state_type(*state), reset, mask, **named)
        outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
        return (*outputs, *new_state)


def io_names(model: nn.Module, outputs, extra: Sequence[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """(input names, output names, state field names) of the exported step."""
    fields = list(type(model.init_state(1))._fields)
    inputs = ["x", *(f"state.{f}" for f in fields), "reset", "mask", *extra]
    outs = [*_output_names(outputs), *(f"state_out.{f}" for f in fields)]
    return inputs, outs, fields


def example_inputs(model: nn.Module, x: Tensor, extra: dict[str, Tensor] | None = None) -> tuple[Tensor, ...]:
    b, t = x.shape[:2]
    state = model.init_state(b)
    return (x, *state, torch.zeros(b, dtype=torch.bool), torch.ones(b, t, dtype=torch.bool), *(extra or {}).values())


def check_state_io(proto: onnx.ModelProto, fields: Sequence[str]) -> None:
    """Fail when the graph lost a state input or output, or passes a state through unchanged.

    An in-place buffer update, or a tensor read into Python (``Tensor.item``) inside ``step``, exports
    "fine" but freezes the state into a constant: the state input then disappears from the graph or the
    output no longer depends on it.
    """
    graph_inputs = {i.name for i in proto.graph.input}
    graph_outputs = {o.name for o in proto.graph.output}
    missing = [f"state.{f}" for f in fields if f"state.{f}" not in graph_inputs]
    missing += [f"state_out.{f}" for f in fields if f"state_out.{f}" not in graph_outputs]
    if missing:
        raise ExportError(f"exported step lost state tensors {missing}: the state is frozen into the graph "
                          "(in-place buffer update, Tensor.item or Python control flow on tensor values in step)")
    consumed = {i for n in proto.graph.node for i in n.input} | graph_outputs
    unused = [f"state.{f}" for f in fields if f"state.{f}" not in consumed]
    if unused:
        raise ExportError(f"exported step ignores state inputs {unused}: the state is frozen into the graph")
    constants = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    constants |= {init.name for init in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    frozen = [f"state_out.{f}" for f in fields if f"state_out.{f}" in constants
              or (f"state_out.{f}" not in producers and f"state_out.{f}" not in graph_inputs)]
    if frozen:
        raise ExportError(f"exported step returns constant state tensors {frozen}")


def _dynamic_shapes(n_state: int, n_extra: int = 0):
    batch = torch.export.Dim("batch", min=1, max=4096)
    # forward(x, *flat): the varargs form one entry holding the state, reset, mask and extra inputs.
    return ({0: batch}, tuple({0: batch} for _ in range(n_state + 2 + n_extra)))


def export_step(model: nn.Module, path: str | os.PathLike, x: Tensor, *, opset: int = DEFAULT_OPSET,
                metadata: dict | None = None, extra: dict[str, Tensor] | None = None) -> onnx.ModelProto:
    """Export ``model.step`` to ``path``.

    Args:
        model: module with ``step``/``init_state`` (in eval mode for export).
        path: output ``.onnx`` file.
        x: an example segment input, (B, T, ...) with B >= 2 (batch is exported dynamic).
        opset: 23 (the core's attention and rotary positions as the standard Attention and RotaryEmbedding ops) or
            18 (both decomposed, for older runtimes).
        metadata: extra entries for ``metadata_props`` (e.g. sample rate, labels); values JSON-encoded.
        extra: example tensors of further named step inputs (batch first, batch as ``x``), passed to ``step``
            by keyword; recorded in the metadata as ``extra_inputs``.
    """
    if opset < FALLBACK_OPSET:
        raise ValueError(f"opset={opset}: memstream exports need opset >= {FALLBACK_OPSET}")
    if x.shape[0] < 2:
        raise ValueError("export_step: give an example with batch >= 2 so the batch axis stays dynamic")
    model = model.eval()
    extra = dict(extra or {})
    wrapper = ExportStep(model, tuple(extra)).eval()
    args = example_inputs(model, x, extra)
    n_state = len(args) - 3 - len(extra)
    with torch.no_grad():  # a probe for the output names, on a copy: a misbehaving step must not touch the model
        outputs, _ = copy.deepcopy(model).step(args[0], wrapper.state_type(*args[1:1 + n_state]), args[1 + n_state],
                                               args[2 + n_state], **extra)
    inputs, outs, fields = io_names(model, outputs, tuple(extra))
    with warnings.catch_warnings():
        # torch.export's deprecation chatter and a note on the shared batch axis name: not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*")
        standard_ops = ONNX_STANDARD_OPS.set(opset >= 23)  # the core's rotary and attention as ONNX's own ops
        try:
            program = torch.onnx.export(
                wrapper, args, dynamo=True, opset_version=opset, input_names=inputs, output_names=outs,
                dynamic_shapes=_dynamic_shapes(len(fields), len(extra)), optimize=True, verbose=False,
            )
        finally:
            ONNX_STANDARD_OPS.reset(standard_ops)
    mutated = program.exported_program.graph_signature.buffers_to_mutate
    if mutated:
        raise ExportError(f"step updates buffers in place ({', '.join(sorted(set(mutated.values())))}): the exported "
                          "graph would freeze that state into a constant; keep all state in the state NamedTuple")
    proto = program.model_proto
    check_state_io(proto, fields)
    spec = {f: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")}
            for f, t in zip(fields, args[1:1 + n_state], strict=True)}
    meta = {
        "format": 1, "segment": int(x.shape[1]), "input_shape": list(x.shape[1:]),
        "input_dtype": str(x.dtype).replace("torch.", ""), "state": spec, "outputs": outs[: len(outs) - len(fields)],
        "opset": opset, "state_type": wrapper.state_type.__name__,
    }
    if extra:
        meta["extra_inputs"] = {k: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")}
                                for k, t in extra.items()}
    config = getattr(model, "cfg", None)
    if config is not None and hasattr(config, "to_dict"):
        meta["config"] = config.to_dict()
    meta.update(metadata or {})
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, json.dumps(value)
    onnx.save(proto, os.fspath(path))
    log.info("exported %s (opset %d, %d state tensors)", path, opset, len(fields))
    return proto


def read_metadata(proto: onnx.ModelProto) -> dict:
    """The ``memstream.*`` metadata of an exported step, decoded."""
    meta = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(META_PREFIX):
            meta[entry.key[len(META_PREFIX):]] = json.loads(entry.value)
    if "state" not in meta or "segment" not in meta:
        raise ValueError("not a memstream step graph: metadata_props lacks memstream.state / memstream.segment")
    return meta
