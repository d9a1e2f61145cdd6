"""Presets of the bare memory core (used by `memstream export core` and `memstream bench core`)."""

from __future__ import annotations

from memstream.memory import CoreConfig, MemoryCore
from memstream.models.registry import register_model


@register_model
def core_small(**overrides) -> MemoryCore:
    """Width 256, 4 layers, 16-token segments, 64 memory tokens per layer (the benchmark shape)."""
    return MemoryCore(CoreConfig(dim=256, heads=4, layers=4, segment=16, memory_length=64, num_tokens=64,
                                 knn_capacity=4096).replace(**overrides))


@register_model
def core_tiny(**overrides) -> MemoryCore:
    """Width 64, 2 layers: for tests and quick experiments."""
    return MemoryCore(CoreConfig(dim=64, heads=4, layers=2, segment=8, memory_length=32, num_tokens=8,
                                 knn_capacity=256, knn_topk=8).replace(**overrides))
