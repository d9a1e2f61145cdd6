"""Shared fixtures: tiny core configurations of every memory type, deterministic seeds, 2 CPU threads."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. This must be set before torch loads its OpenMP runtime:
# with the default (spinning) policy on 2 cores shared with other processes, each tiny op waits for a
# descheduled spinning thread and the suite runs 10-100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from memstream.memory import CoreConfig, MemoryCore  # noqa: E402

torch.set_num_threads(2)

# Every memory variant the suite covers: id -> CoreConfig overrides.
VARIANTS: dict[str, dict] = {
    "queue": {"memory": "queue"},
    "queue-gated": {"memory": "queue", "write_gate": True},
    "tokens": {"memory": "tokens"},
    "tokens-update": {"memory": "tokens", "update_layer": True},
    "slots": {"memory": "slots"},
    "knn": {"memory": "knn"},
    "ntm": {"memory": "ntm"},
    "none": {"memory": "none"},
}

# Tiny but non-trivial: 2 layers, 2 heads, segment 4; queue keeps 1.5 segments, knn wraps after 4;
# ntm: 5 rows of width 6, 2 read heads.
TINY = {"dim": 16, "heads": 2, "layers": 2, "ff_mult": 2, "segment": 4, "memory_length": 6,
        "num_tokens": 3, "knn_capacity": 16, "knn_topk": 4, "ntm_rows": 5, "ntm_width": 6, "ntm_read_heads": 2}

GATE_FEATURE = 0   # the gated queue's write gate reads this input feature only (see build_core)
GATE_OFFSET = 3.0  # stream_inputs shifts that feature by +-GATE_OFFSET per segment


def build_core(variant: str = "queue", seed: int = 0, **overrides) -> MemoryCore:
    """A tiny MemoryCore of ``variant`` (a VARIANTS key) in eval mode, weights drawn from ``seed``.

    The gated queue's write gate is set to the sign of the segment's mean of input feature
    GATE_FEATURE, so the inputs of :func:`make_stream` decide deterministically which segments are
    kept (logit > 0) and which are skipped (logit < 0).
    """
    torch.manual_seed(seed)
    cfg = CoreConfig(**{**TINY, **VARIANTS[variant], **overrides})
    core = MemoryCore(cfg).eval()
    if cfg.memory == "queue" and cfg.write_gate:
        with torch.no_grad():
            core.memory.gate.weight.zero_()
            core.memory.gate.weight[0, GATE_FEATURE] = 1.0
            core.memory.gate.bias.zero_()
    return core


def make_stream(batch: int, segments: int, segment: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(B, segments * segment, dim) random tokens; feature GATE_FEATURE of each segment is shifted by
    +-GATE_OFFSET with a fixed pseudo-random sign per (stream, segment), so gate logits have both signs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, segments, segment, dim, generator=g)
    sign = torch.where(torch.rand(batch, segments, generator=g) < 0.5, -1.0, 1.0)
    sign[:, 0] = 1.0   # the first segments are written, ...
    sign[:, 1] = -1.0  # ... the second ones are not: both cases always occur
    x[..., GATE_FEATURE] += GATE_OFFSET * sign.unsqueeze(-1)
    return x.reshape(batch, segments * segment, dim)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    """Each memory variant in turn (a VARIANTS key)."""
    return request.param


@pytest.fixture(scope="session")
def make_core():
    """Factory: ``make_core(variant, seed=0, **config_overrides)`` -> tiny eval-mode MemoryCore."""
    return build_core


@pytest.fixture(scope="session")
def stream():
    """Factory: ``stream(batch, segments, segment, dim, seed=0)`` -> (B, S, D) inputs (see make_stream)."""
    return make_stream
