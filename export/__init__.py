"""memstream.export: ONNX export of streaming steps and the backends that run them."""

from memstream.export.backend import OnnxBackend, TorchBackend, available_providers, to_numpy
from memstream.export.onnx import (
    DEFAULT_OPSET,
    FALLBACK_OPSET,
    ExportError,
    ExportStep,
    check_state_io,
    export_step,
    read_metadata,
)

__all__ = [
    "DEFAULT_OPSET", "FALLBACK_OPSET", "ExportError", "ExportStep", "check_state_io", "export_step",
    "read_metadata", "OnnxBackend", "TorchBackend", "available_providers", "to_numpy",
]
