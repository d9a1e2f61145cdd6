"""Model registry: presets are functions that build a model from a frozen config, as timm's are.

    >>> from memstream.models import build, list_models
    >>> core = build("core-small", memory="slots")   # keyword arguments override the preset's config
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a preset under its function name with ``_`` written as ``-``."""
    name = fn.__name__.replace("_", "-")
    if name in _REGISTRY:
        raise ValueError(f"model preset {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **overrides) -> nn.Module:
    """Build the preset ``name``; keyword arguments replace fields of its config."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)
