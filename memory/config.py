"""Configuration of the memory core: one frozen dataclass, validated at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MEMORY_TYPES = ("queue", "tokens", "slots", "knn", "ntm", "none")


def requirement(owner: str):
    """``need(ok, message)`` for a config's ``__post_init__``: raises ``ValueError("<owner>: <message>")`` unless
    ``ok``, so every config names itself in its errors the same way."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{owner}: {message}")

    return need


def check_known_fields(cls: type, d: dict) -> None:
    """A saved config with fields the dataclass ``cls`` does not have fails, naming them."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")


@dataclass(frozen=True)
class CoreConfig:
    """Hyper-parameters of :class:`memstream.memory.MemoryCore`.

    Attributes:
        dim: model width ``D``.
        heads: attention heads; ``dim`` must divide by it and the head width must be even (rotary).
        layers: number of pre-norm transformer blocks ``L``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        segment: tokens per segment ``T``; the step always takes exactly this many.
        memory: one of ``queue``, ``tokens``, ``slots``, ``knn``, ``ntm``, ``none``.
        memory_length: ``queue``: past tokens kept per layer, an int for every layer or a tuple with
            one entry per layer (0 switches a layer's memory off).
        write_gate: ``queue``: a learned gate decides per segment whether it is written (MATR).
        num_tokens: ``tokens``/``slots``: number of memory tokens or slots ``K``.
        update_layer: ``tokens``: a dedicated block updates the memory instead of write tokens.
        knn_capacity: ``knn``: ring-buffer entries ``C`` per stream.
        knn_topk: ``knn``: entries retrieved per query and head.
        knn_layer: ``knn``: index of the block that reads the ring buffer (negative counts from the end).
        ntm_rows: ``ntm``: rows ``R`` of the memory matrix (the locations heads address).
        ntm_width: ``ntm``: width ``C`` of each memory row.
        ntm_read_heads: ``ntm``: read heads ``Hr``; each read vector is one memory token every block attends over.
        causal: causal attention inside a segment (memory is always entirely visible).
        dropout: dropout on attention output and feed-forward (training only).
        rope_base: rotary frequency base.
    """

    dim: int = 256
    heads: int = 4
    layers: int = 4
    ff_mult: int = 4
    segment: int = 16
    memory: str = "queue"
    memory_length: int | tuple[int, ...] = 64
    write_gate: bool = False
    num_tokens: int = 16
    update_layer: bool = False
    knn_capacity: int = 4096
    knn_topk: int = 32
    knn_layer: int = -1
    ntm_rows: int = 32
    ntm_width: int = 32
    ntm_read_heads: int = 2
    causal: bool = False
    dropout: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if isinstance(self.memory_length, list):
            object.__setattr__(self, "memory_length", tuple(self.memory_length))

        need = requirement("CoreConfig")

        for name in ("dim", "heads", "layers", "ff_mult", "segment"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        need(self.dim % self.heads == 0, f"dim={self.dim} is not divisible by heads={self.heads}")
        need((self.dim // self.heads) % 2 == 0,
             f"head width dim/heads={self.dim // self.heads} must be even for rotary positions")
        need(self.memory in MEMORY_TYPES,
             f"unknown memory type memory={self.memory!r}; choose one of {', '.join(MEMORY_TYPES)}")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must lie in [0, 1)")
        need(self.rope_base > 1.0, f"rope_base={self.rope_base} must be > 1")
        lengths = self.layer_memory_lengths
        need(len(lengths) == self.layers,
             f"memory_length={self.memory_length!r} needs one entry per layer (layers={self.layers})")
        need(all(isinstance(m, int) and m >= 0 for m in lengths),
             f"memory_length={self.memory_length!r} must be non-negative integers")
        if self.memory == "queue":
            need(max(lengths) > 0, f"memory_length={self.memory_length!r}: queue capacity 0 holds nothing")
        if self.memory in ("tokens", "slots"):
            need(self.num_tokens > 0, f"num_tokens={self.num_tokens}: {self.memory} capacity 0 holds nothing")
        if self.memory == "knn":
            need(self.knn_capacity > 0, f"knn_capacity={self.knn_capacity}: capacity 0 holds nothing")
            need(self.knn_capacity >= self.segment,
                 f"knn_capacity={self.knn_capacity} is smaller than one segment ({self.segment} tokens)")
            need(0 < self.knn_topk <= self.knn_capacity,
                 f"knn_topk={self.knn_topk} must lie in [1, knn_capacity={self.knn_capacity}]")
            need(-self.layers <= self.knn_layer < self.layers,
                 f"knn_layer={self.knn_layer} is outside the {self.layers} layers")
        if self.memory == "ntm":
            for name in ("ntm_rows", "ntm_width", "ntm_read_heads"):
                value = getattr(self, name)
                need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                     f"{name}={value!r} must be a positive integer")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def layer_memory_lengths(self) -> tuple[int, ...]:
        if isinstance(self.memory_length, int):
            return (self.memory_length,) * self.layers
        return tuple(self.memory_length)

    @property
    def knn_layer_index(self) -> int:
        return self.knn_layer % self.layers

    def replace(self, **changes) -> CoreConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["memory_length"], tuple):
            d["memory_length"] = list(d["memory_length"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CoreConfig:
        check_known_fields(cls, d)
        return cls(**d)
