"""``ntm`` memory: a Neural Turing Machine memory matrix read and written by addressed heads (Conformer-NTM).

The state is a matrix ``M: (R, C)`` of R rows of width C plus the previous read and write weights. Each
head addresses the rows exactly as an NTM does (Graves et al., 2014):

1. content: ``w_c = softmax(beta * cos(k, M_i))`` with key ``k`` and strength ``beta = softplus(.)``;
2. interpolation: ``w_g = g w_c + (1 - g) w_prev`` with gate ``g = sigmoid(.)``;
3. location: circular convolution of ``w_g`` with a shift distribution over offsets (-1, 0, +1);
4. sharpening: ``w = w_s^gamma / sum(w_s^gamma)`` with ``gamma = 1 + softplus(.)``.

Read: the controller is the masked mean of the segment's input tokens; ``Hr`` read heads address the
previous memory and their read vectors ``w M: (Hr, C)``, projected to the model width, are memory tokens
every block attends over (at the segment's first position, like ``slots``).

Write: the controller is the masked mean of the segment's final hidden tokens; one write head with
erase ``e = sigmoid(.)`` and add ``a = e * tanh(.)`` updates ``M <- M (1 - w e^T) + w a^T``. Tying the add
to the erase makes each element a convex mix of its old value and ``tanh(.)``, so ``|M| <= max(|M_0|, 1)``
on streams of any length. A segment without valid tokens leaves memory and weights unchanged.

In a causal core the read still uses the whole segment's summary (the step runs once the segment has
arrived); causality holds between segments, not inside the memory read.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from memstream.memory.base import MemoryType
from memstream.memory.config import CoreConfig
from memstream.memory.queue import masked_mean
from torch import Tensor, nn

SHIFTS = 3    # the shift distribution covers offsets (-1, 0, +1)
_EPS = 1e-6   # norm floor of the cosine similarity


class NtmState(NamedTuple):
    memory: Tensor         # (B, R, C) memory matrix
    read_weights: Tensor   # (B, Hr, R) read weights of the last segment
    write_weights: Tensor  # (B, R) write weights of the last segment
    step: Tensor           # (B,) int64 segments seen; 0 means "learned initial memory and weights"


def content_weights(memory: Tensor, key: Tensor, beta: Tensor) -> Tensor:
    """memory: (B, R, C), key: (B, H, C), beta: (B, H, 1) > 0 -> (B, H, R) softmax of beta * cosine similarity."""
    m = memory / memory.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    k = key / key.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    return torch.softmax(beta * torch.matmul(k, m.transpose(-1, -2)), dim=-1)


def shift_weights(w: Tensor, shift: Tensor) -> Tensor:
    """Circular convolution: w: (..., R), shift: (..., 3) over offsets (-1, 0, +1) -> (..., R).

    Offset +1 moves the weight of row i to row i + 1 (row R - 1 wraps to row 0). Written with slices and
    concatenation, which every ONNX runtime has.
    """
    from_prev = torch.cat((w[..., -1:], w[..., :-1]), dim=-1)  # row i holds w[i - 1]
    from_next = torch.cat((w[..., 1:], w[..., :1]), dim=-1)    # row i holds w[i + 1]
    return shift[..., 0:1] * from_next + shift[..., 1:2] * w + shift[..., 2:3] * from_prev


def sharpen(w: Tensor, gamma: Tensor) -> Tensor:
    """w: (..., R) >= 0, gamma: (..., 1) >= 1 -> w^gamma / sum(w^gamma), (..., R).

    Divided by the largest weight first (the ratio is unchanged): the largest term is then 1, so a large
    gamma never turns the sum into 0/0.
    """
    p = (w / w.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)).pow(gamma)
    return p / p.sum(dim=-1, keepdim=True)


def address(memory: Tensor, prev: Tensor, key: Tensor, beta: Tensor, gate: Tensor, shift: Tensor,
            gamma: Tensor) -> Tensor:
    """NTM addressing of H heads.

    memory: (B, R, C); prev: (B, H, R) previous weights; key: (B, H, C); beta: (B, H, 1) > 0; gate: (B, H, 1)
    in [0, 1]; shift: (B, H, 3) a distribution over offsets (-1, 0, +1); gamma: (B, H, 1) >= 1 -> (B, H, R).
    """
    w = gate * content_weights(memory, key, beta) + (1 - gate) * prev
    return sharpen(shift_weights(w, shift), gamma)


def erase_add(memory: Tensor, w: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """memory: (B, R, C), w: (B, R), erase: (B, C) in [0, 1], add: (B, C) -> M (1 - w e^T) + w a^T: (B, R, C)."""
    w = w.unsqueeze(-1)
    return memory * (1 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)


class _Head(nn.Module):
    """``heads`` addressing heads driven by one controller vector, plus ``extra`` raw outputs per head."""

    def __init__(self, dim: int, width: int, heads: int, extra: int = 0) -> None:
        super().__init__()
        self.sizes = [width, 1, 1, SHIFTS, 1, extra]
        self.heads = heads
        self.proj = nn.Linear(dim, heads * sum(self.sizes))

    def forward(self, c: Tensor, memory: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        """c: (B, D) controller, memory: (B, R, C), prev: (B, H, R) -> weights (B, H, R), extra (B, H, extra)."""
        p = self.proj(c).view(c.shape[0], self.heads, -1)
        key, beta, gate, shift, gamma, extra = p.split(self.sizes, dim=-1)
        w = address(memory, prev, key, F.softplus(beta), torch.sigmoid(gate), torch.softmax(shift, dim=-1),
                    1 + F.softplus(gamma))
        return w, extra


class NtmMemory(MemoryType):
    """NTM memory: ``ntm_rows`` x ``ntm_width`` matrix, ``ntm_read_heads`` read heads, one write head."""

    State = NtmState

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        d, r, c, hr = cfg.dim, cfg.ntm_rows, cfg.ntm_width, cfg.ntm_read_heads
        self.initial = nn.Parameter(torch.randn(r, c) * 0.1)  # rows differ, so content addressing can start
        self.initial_read = nn.Parameter(torch.zeros(hr, r))  # logits of the initial read weights
        self.initial_write = nn.Parameter(torch.zeros(r))
        self.norm_read = nn.LayerNorm(d)
        self.norm_write = nn.LayerNorm(d)
        self.read_head = _Head(d, c, hr)
        self.write_head = _Head(d, c, 1, extra=2 * c)
        self.out = nn.Linear(c, d)
        self.head_embed = nn.Parameter(torch.randn(hr, d) * 0.02)

    def state_spec(self, batch: int):
        c = self.cfg
        return {"memory": ((batch, c.ntm_rows, c.ntm_width), torch.float32),
                "read_weights": ((batch, c.ntm_read_heads, c.ntm_rows), torch.float32),
                "write_weights": ((batch, c.ntm_rows), torch.float32),
                "step": ((batch,), torch.int64)}

    def current(self, state: NtmState) -> tuple[Tensor, Tensor, Tensor]:
        """Memory (B, R, C), read weights (B, Hr, R), write weights (B, R), with the learned initial values for
        streams at step 0 (fresh or reset)."""
        fresh = (state.step == 0).view(-1, 1, 1)
        memory = torch.where(fresh, self.initial.unsqueeze(0), state.memory)
        read = torch.where(fresh, torch.softmax(self.initial_read, dim=-1).unsqueeze(0), state.read_weights)
        write = torch.where(fresh[:, 0], torch.softmax(self.initial_write, dim=-1).unsqueeze(0), state.write_weights)
        return memory, read, write

    def begin(self, x, state, ctx, rotary):
        memory, read_prev, write_prev = self.current(state)
        w_read, _ = self.read_head(self.norm_read(masked_mean(x, ctx.mask)), memory, read_prev)  # (B, Hr, R)
        vectors = torch.matmul(w_read, memory)  # (B, Hr, C)
        e = ctx.extra
        e["memory"], e["read_prev"], e["write_prev"], e["read_weights"] = memory, read_prev, write_prev, w_read
        e["tokens"] = self.out(vectors) + self.head_embed  # (B, Hr, D)
        # Read tokens sit at the segment's first position: a fixed relative distance to the segment.
        e["read_cos"], e["read_sin"] = rotary(ctx.pos[:, :1])
        e["read_valid"] = torch.ones(x.shape[0], self.cfg.ntm_read_heads, dtype=torch.bool, device=x.device)
        return x

    def read(self, layer, block, state, ctx):
        e = ctx.extra
        k, v = block.project_memory(e["tokens"], e["read_cos"], e["read_sin"])
        return k, v, e["read_valid"]

    def write(self, h, state, ctx):
        e = ctx.extra
        memory = e["memory"]
        c = self.norm_write(masked_mean(h, ctx.mask))
        w, extra = self.write_head(c, memory, e["write_prev"].unsqueeze(1))  # (B, 1, R), (B, 1, 2C)
        w = w.squeeze(1)
        erase_logit, add_raw = extra.squeeze(1).chunk(2, dim=-1)
        erase = torch.sigmoid(erase_logit)
        new_memory = erase_add(memory, w, erase, erase * torch.tanh(add_raw))
        # An all-padding segment leaves memory and weights as they were.
        keep = ctx.n > 0
        k3 = keep.view(-1, 1, 1)
        new = NtmState(memory=torch.where(k3, new_memory, memory),
                       read_weights=torch.where(k3, e["read_weights"], e["read_prev"]),
                       write_weights=torch.where(keep.view(-1, 1), w, e["write_prev"]),
                       step=state.step + 1)
        return h, new
