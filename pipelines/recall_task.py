"""Long-range associative recall: the task generator and the model that streams it.

A sequence is a run of fixed-size segments (``T`` tokens, the core's segment size)::

    [pairs] x P   [distractors] x distance   [query]
    k v k v ...   d d d d d d d d ...        ? k ? k ...

The first ``P`` segments each show ``T / 2`` key-value pairs (distinct keys, values drawn with
replacement); then ``distance`` segments of random distractor tokens; then one query segment that asks
``queries`` of the shown keys, each after a query marker. The answer at a queried key's position is the
value that key was paired with ``distance`` or more segments earlier, so a model without memory can only
guess (chance = ``1 / num_values``). Each segment also gets a *salient* label (it shows pairs): the target
of the queue memory's learned write gate, as MATR supervises its write flag with actionness.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from memstream.memory import CoreConfig, MemoryCore
from memstream.memory.config import requirement
from memstream.memory.queue import QueueMemory
from torch import Tensor, nn

PAD, QUERY = 0, 1  # token ids; keys, values and distractors follow
IGNORE = -100      # target at positions that are not queries (cross-entropy's ignore_index)


@dataclass(frozen=True)
class RecallTask:
    """The task's vocabulary and layout; ``segment`` must equal the core's segment size.

    Attributes:
        segment: tokens per segment ``T`` (even: a pair segment holds ``T / 2`` pairs).
        num_keys, num_values, num_distractors: sizes of the three token vocabularies.
        pair_segments: segments of key-value pairs at the start of every sequence ``P``.
        queries: keys asked in the query segment (at most ``T / 2`` and at most the pairs shown).
    """

    segment: int = 8
    num_keys: int = 32
    num_values: int = 16
    num_distractors: int = 32
    pair_segments: int = 2
    queries: int = 4

    def __post_init__(self) -> None:
        need = requirement("RecallTask")

        for name in ("segment", "num_keys", "num_values", "num_distractors", "pair_segments", "queries"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        need(self.segment % 2 == 0, f"segment={self.segment} must be even (a pair takes two tokens)")
        need(self.num_keys >= self.num_pairs,
             f"num_keys={self.num_keys} < {self.num_pairs} pairs shown: keys must be distinct")
        need(self.queries <= min(self.segment // 2, self.num_pairs),
             f"queries={self.queries} exceeds segment/2={self.segment // 2} or the {self.num_pairs} pairs")

    @property
    def num_pairs(self) -> int:
        return self.pair_segments * (self.segment // 2)

    @property
    def first_key(self) -> int:
        return QUERY + 1

    @property
    def first_value(self) -> int:
        return self.first_key + self.num_keys

    @property
    def first_distractor(self) -> int:
        return self.first_value + self.num_values

    @property
    def vocab_size(self) -> int:
        return self.first_distractor + self.num_distractors

    @property
    def chance(self) -> float:
        return 1.0 / self.num_values

    def num_segments(self, distance: int) -> int:
        return self.pair_segments + distance + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RecallTask:
        return cls(**d)


class RecallBatch(NamedTuple):
    tokens: Tensor   # (B, S) int64 token ids, S = segments * T
    targets: Tensor  # (B, S) int64 value index (0..num_values-1) at query positions, IGNORE elsewhere
    mask: Tensor     # (B, S) bool valid tokens (all True: the generator makes whole segments)
    salient: Tensor  # (B, N) bool per segment: it shows key-value pairs


def make_batch(task: RecallTask, batch: int, distance: int, generator: torch.Generator) -> RecallBatch:
    """``batch`` sequences with ``distance`` distractor segments between the pairs and the query.

    Deterministic given ``generator``'s state. Sequences have ``task.num_segments(distance)`` segments.
    """
    if not isinstance(distance, int) or distance < 1:
        raise ValueError(f"make_batch: distance={distance!r} must be an integer >= 1 (distractor segments)")
    if batch < 1:
        raise ValueError(f"make_batch: batch={batch!r} must be >= 1")
    t, p, n_pairs = task.segment, task.pair_segments, task.num_pairs
    g = generator
    keys = torch.rand(batch, task.num_keys, generator=g).argsort(1)[:, :n_pairs]       # (B, P*T/2) distinct
    values = torch.randint(task.num_values, (batch, n_pairs), generator=g)              # (B, P*T/2)
    pairs = torch.stack((keys + task.first_key, values + task.first_value), dim=2)      # (B, P*T/2, 2)
    distractors = torch.randint(task.num_distractors, (batch, distance * t), generator=g)
    distractors = distractors + task.first_distractor                                    # (B, distance*T)
    asked = torch.rand(batch, n_pairs, generator=g).argsort(1)[:, :task.queries]       # (B, Q) pair indices
    query = torch.full((batch, t), QUERY, dtype=torch.long)
    query[:, 1:2 * task.queries:2] = torch.gather(keys, 1, asked) + task.first_key      # "? k ? k ..."
    tokens = torch.cat((pairs.view(batch, p * t), distractors, query), dim=1)
    targets = torch.full_like(tokens, IGNORE)
    first_query = tokens.shape[1] - t
    targets[:, first_query + 1:first_query + 2 * task.queries:2] = torch.gather(values, 1, asked)
    salient = torch.zeros(batch, task.num_segments(distance), dtype=torch.bool)
    salient[:, :p] = True
    return RecallBatch(tokens, targets, torch.ones_like(tokens, dtype=torch.bool), salient)


@dataclass(frozen=True)
class RecallConfig:
    """A :class:`RecallModel`: the core's config and the task it reads (vocabulary, answer classes)."""

    core: CoreConfig
    task: RecallTask

    def __post_init__(self) -> None:
        if self.core.segment != self.task.segment:
            raise ValueError(f"RecallConfig: core segment={self.core.segment} "
                             f"!= task segment={self.task.segment}")

    @property
    def segment(self) -> int:
        return self.core.segment

    def to_dict(self) -> dict:
        return {"core": self.core.to_dict(), "task": self.task.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> RecallConfig:
        return cls(core=CoreConfig.from_dict(d["core"]), task=RecallTask.from_dict(d["task"]))


class RecallModel(nn.Module):
    """Token embedding + :class:`MemoryCore` + linear head over the value classes.

    Shapes: ``tokens`` (B, T) for ``step`` or (B, S) with S a multiple of T for ``forward_sequence``,
    int64 ids; ``mask`` the same shape, bool; ``reset`` (B,) bool. Outputs are logits (B, T|S, num_values);
    only the query positions' logits mean anything. The state is the core's.
    """

    def __init__(self, cfg: RecallConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.core.dim
        self.embed = nn.Embedding(cfg.task.vocab_size, d, padding_idx=PAD)
        self.core = MemoryCore(cfg.core)
        self.head = nn.Linear(d, cfg.task.num_values)
        self.State = self.core.State

    @property
    def gated(self) -> bool:
        """Whether the core's memory is a queue with a learned write gate (trained by :meth:`gate_loss`)."""
        return isinstance(self.core.memory, QueueMemory) and self.core.memory.gate is not None

    def init_state(self, batch: int, device: torch.device | str | None = None):
        return self.core.init_state(batch, device)

    def step(self, tokens: Tensor, state, reset: Tensor | None = None, mask: Tensor | None = None):
        """tokens: (B, T) -> (logits (B, T, num_values), new state)."""
        y, state = self.core.step(self.embed(tokens), state, reset, mask)
        return self.head(y), state

    def forward_sequence(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """tokens: (B, S) -> logits (B, S, num_values), equal to streaming its S / T segments."""
        return self.head(self.core.forward_sequence(self.embed(tokens), mask))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_sequence(tokens, mask)

    def gate_loss(self, tokens: Tensor, mask: Tensor, salient: Tensor) -> Tensor:
        """BCE of the write gate's per-segment logits against ``salient`` (B, N); 0 when there is no gate.

        The gate sees the same embedded segment the core's ``begin`` gives it, so what it learns here is
        exactly what decides the writes while streaming.
        """
        if not self.gated:
            return torch.zeros((), device=tokens.device)
        b, s = tokens.shape
        t = self.cfg.segment
        x = self.embed(tokens).view(b, s // t, t, -1)
        logits = self.core.memory.gate_logits(x, mask.view(b, s // t, t))  # (B, N)
        return F.binary_cross_entropy_with_logits(logits, salient.to(logits.dtype))
