"""Checkpoints: safetensors weights plus a JSON file; loading never unpickles code.

A checkpoint is a folder with ``model.safetensors`` and ``config.json``; ``config.json`` holds
``{"model": <registered preset or kind>, "config": {...}, ...}`` plus any extra entries (training
metadata, normalisation statistics, vocabulary).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, config: dict) -> Path:
    """Write ``model``'s weights and ``config`` (JSON-serialisable) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS)  # a crash mid-write never leaves a truncated checkpoint
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: no {CONFIG}")
    return json.loads(path.read_text())


def load_weights(directory: str | os.PathLike, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load ``model.safetensors`` from ``directory`` into ``model`` (shapes must match the config)."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: no {WEIGHTS}")
    model.load_state_dict(load_file(str(path)), strict=strict)
    return model
