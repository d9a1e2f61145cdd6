"""Checkpoints: safetensors weights plus a JSON file; loading never unpickles code.

A checkpoint is a folder with ``model.safetensors`` and ``config.json``; ``config.json`` holds
``{"model": <registered preset or kind>, "config": {...}, ...}`` plus any extra entries (training
metadata, normalisation statistics, vocabulary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, config: dict,
                    float_dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights and ``config`` (JSON-serialisable) into ``directory``. ``float_dtype`` (e.g.
    ``torch.float16``) stores floating tensors narrower, to keep bundled checkpoints small; loading casts them
    back to the model's dtype."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if float_dtype is not None:
        state = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in state.items()}
        config = {**config, "weights_dtype": str(float_dtype).removeprefix("torch.")}
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


def load_model(directory: str | os.PathLike, kind: str,
               from_config: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """A task checkpoint folder -> (model in eval mode, its config.json). ``kind`` must match the checkpoint's
    ``"model"`` entry; ``from_config`` builds the model from the ``"config"`` entry."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{kind} checkpoint {directory}: no such folder")
    config = read_config(directory)
    if config.get("model") != kind:
        raise ValueError(f"{directory}: model kind {config.get('model')!r} is not {kind!r}")
    return load_weights(directory, from_config(config["config"])).eval(), config


def check_metadata(metadata: dict, expected: dict, path, command: str) -> None:
    """Refuse an exported graph whose metadata disagrees with the checkpoint its decoder is built from."""
    wrong = [k for k, v in expected.items() if metadata.get(k) != v]
    if wrong:
        raise ValueError(f"{path}: ONNX metadata {', '.join(f'{k}={metadata.get(k)!r}' for k in wrong)} does not "
                         f"match the checkpoint ({', '.join(f'{k}={expected[k]!r}' for k in wrong)}); export it from "
                         f"the same checkpoint with `{command} --checkpoint ...`")
