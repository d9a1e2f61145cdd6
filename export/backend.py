"""Backends: the one place a model runs. ``TorchBackend`` and ``OnnxBackend`` share one signature,

    outputs, state = backend.step(x, state, reset, mask)

with torch tensors in and out, so the runtime never knows which one it drives. Both return the outputs on
the CPU, where decoders read them; the state stays where the model runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from memstream.export.onnx import read_metadata
from torch import Tensor, nn

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _to_host(outputs):
    """A step's outputs (a tensor or a NamedTuple of tensors) on the CPU, one copy per field.

    Decoders read the outputs one stream's row at a time; rows of a GPU tensor would each be a separate
    device-to-host copy that waits for the device, once per stream per step.
    """
    if isinstance(outputs, Tensor):
        return outputs.cpu()
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):
        return type(outputs)(*(_to_host(o) for o in outputs))
    return outputs


def to_numpy(outputs):
    """A step's outputs (a tensor or a NamedTuple of tensors, on any device) -> the same as numpy arrays.

    16-bit floats are widened to float32 (numpy has no bfloat16); numpy arrays pass through, so decoders
    may call it on outputs the runner already converted. The runner converts once per step: a torch op
    per stream (a row index, ``.cpu()``, ``.numpy()``) costs more than the decoding itself, and each one
    hands the GIL to the reader threads.
    """
    if isinstance(outputs, Tensor):
        t = outputs.detach().cpu()
        return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):
        return type(outputs)(*(to_numpy(o) for o in outputs))
    return outputs


class TorchBackend:
    """Runs a PyTorch model's ``step`` in inference mode on ``device``; outputs come back on the CPU."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.segment = model.cfg.segment if hasattr(model, "cfg") else None

    def init_state(self, batch: int) -> NamedTuple:
        return self.model.init_state(batch, self.device)

    @torch.inference_mode()
    def step(self, x: Tensor, state: NamedTuple, reset: Tensor, mask: Tensor | None = None, **extra: Tensor):
        x = x.to(self.device)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)
        extra = {k: v.to(self.device) for k, v in extra.items()}
        outputs, state = self.model.step(x, state, reset.to(self.device), mask.to(self.device), **extra)
        return _to_host(outputs), state


def _numpy_dtype(name: str) -> np.dtype:
    return {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_, "uint8": np.uint8}[name]


def available_providers(preferred: Sequence[str] = PREFERRED_PROVIDERS) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in preferred if p in have]


class OnnxBackend:
    """Runs an exported step graph with ONNX Runtime, configured from the graph's metadata alone.

    Args:
        path: ``.onnx`` file written by :func:`memstream.export.export_step`.
        providers: execution providers in order of preference; default TensorRT, CUDA, CPU (those
            present in the installed onnxruntime build).
        threads: intra-op threads (None: ONNX Runtime's default).
        spin: let idle pool threads spin-wait for the next run (lowest latency when the runtime owns the
            cores; turn off when other work shares them).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, spin: bool = True) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("OnnxBackend needs onnxruntime: pip install 'memstream[cpu]' or "
                               "'memstream[gpu]'") from e
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OnnxBackend: no such model file {path}")
        self.metadata = read_metadata(onnx.load(path, load_external_data=False))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = list(providers) if providers is not None else available_providers()
        self.session = ort.InferenceSession(path, options, providers=self.providers)
        log.info("OnnxBackend %s on %s", path, self.session.get_providers())
        self.segment = int(self.metadata["segment"])
        self.input_shape = tuple(self.metadata["input_shape"])
        self.input_dtype = _numpy_dtype(self.metadata["input_dtype"])
        self.state_spec = self.metadata["state"]
        self.fields = list(self.state_spec)
        self.State = NamedTuple(self.metadata.get("state_type", "State"), [(f, Tensor) for f in self.fields])
        self.output_names = list(self.metadata["outputs"])
        if len(self.output_names) > 1:
            self.Outputs = NamedTuple("Outputs", [(f, Tensor) for f in self.output_names])

    @property
    def config(self) -> dict | None:
        return self.metadata.get("config")

    def init_state(self, batch: int) -> NamedTuple:
        """The empty state (all zeros) for ``batch`` streams, from the metadata's shapes and dtypes."""
        return self.State(*(torch.zeros((batch, *s["shape"]), dtype=getattr(torch, s["dtype"]))
                            for s in self.state_spec.values()))

    def step(self, x: Tensor, state: NamedTuple, reset: Tensor, mask: Tensor | None = None, **extra: Tensor):
        """One step; ``extra`` holds the graph's further named inputs (metadata ``extra_inputs``), if any."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"OnnxBackend: input of shape {tuple(x.shape)}; the graph takes "
                             f"(B, {', '.join(map(str, self.input_shape))})")
        b = x.shape[0]
        if mask is None:
            mask = torch.ones(b, self.segment, dtype=torch.bool)
        feeds = {"x": x.detach().cpu().numpy().astype(self.input_dtype, copy=False),
                 "reset": reset.detach().cpu().numpy().astype(np.bool_, copy=False),
                 "mask": mask.detach().cpu().numpy().astype(np.bool_, copy=False)}
        for name, t in zip(self.fields, state, strict=True):
            feeds[f"state.{name}"] = t.detach().cpu().numpy()
        wanted = self.metadata.get("extra_inputs", {})
        if set(extra) != set(wanted):
            raise ValueError(f"OnnxBackend: the graph takes extra inputs {sorted(wanted)}, got {sorted(extra)}")
        for name, t in extra.items():
            feeds[name] = t.detach().cpu().numpy().astype(_numpy_dtype(wanted[name]["dtype"]), copy=False)
        results = self.session.run(None, feeds)
        n_out = len(self.output_names)
        outputs = [torch.from_numpy(r) for r in results[:n_out]]
        new_state = self.State(*(torch.from_numpy(r) for r in results[n_out:]))
        return (outputs[0] if n_out == 1 else self.Outputs(*outputs)), new_state
