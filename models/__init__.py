"""memstream.models: encoders, task heads, task models, the registry and checkpoints."""

from memstream.models import action, anomaly, asr, core_presets, track  # noqa: F401  (register their presets)
from memstream.models.checkpoint import check_metadata, load_model, load_weights, read_config, save_checkpoint
from memstream.models.registry import build, list_models, register_model

__all__ = ["build", "list_models", "register_model", "save_checkpoint", "read_config", "load_weights", "load_model",
           "check_metadata"]
