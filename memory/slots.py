"""``slots`` memory: K slots read by every layer and written slot-wise (Memformer).

Read: each block attends over ``[slots ; segment]`` (slots projected by the block's own key/value
weights). Write: each slot attends to itself and to the processed segment (slot-wise, slots never
see each other), a gate mixes old and new, and biased memory normalisation (BMN) pulls slots that are
not refreshed towards a learned terminal state while keeping every slot at a fixed norm, so the state
stays bounded on streams of any length.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from memstream.memory.base import VectorMemory
from memstream.memory.config import CoreConfig
from torch import Tensor, nn


class SlotsState(NamedTuple):
    memory: Tensor  # (B, K, D) slots
    step: Tensor    # (B,) int64 segments seen; 0 means "use the learned initial slots"


class SlotsMemory(VectorMemory):
    State = SlotsState

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        d = cfg.dim
        self.norm_memory = nn.LayerNorm(d)
        self.norm_input = nn.LayerNorm(d)
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.gate = nn.Linear(2 * d, d)
        self.forget_bias = nn.Parameter(torch.zeros(d))
        self.scale = math.sqrt(d)

    def begin(self, x, state, ctx, rotary):
        mem = self.current(state)
        ctx.extra["memory"] = mem
        # Slots sit at the segment's first position: a fixed relative distance to the segment.
        ctx.extra["slot_cos"], ctx.extra["slot_sin"] = rotary(ctx.pos[:, :1])
        ctx.extra["slot_valid"] = torch.ones(x.shape[0], self.cfg.num_tokens, dtype=torch.bool, device=x.device)
        return x

    def read(self, layer, block, state, ctx):
        k, v = block.project_memory(ctx.extra["memory"], ctx.extra["slot_cos"], ctx.extra["slot_sin"])
        return k, v, ctx.extra["slot_valid"]

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.cfg.heads, self.cfg.head_dim).transpose(1, 2)

    def write(self, h, state, ctx):
        mem = ctx.extra["memory"]
        b, k, d = mem.shape
        m = self.norm_memory(mem)
        q = self._heads(self.query(m))                                   # (B, H, K, Dh)
        k_self, v_self = (self._heads(z) for z in self.key_value(m).chunk(2, -1))
        k_in, v_in = (self._heads(z) for z in self.key_value(self.norm_input(h)).chunk(2, -1))
        scale = 1.0 / math.sqrt(self.cfg.head_dim)
        score_self = (q * k_self).sum(-1, keepdim=True) * scale          # (B, H, K, 1)
        score_in = torch.matmul(q, k_in.transpose(-1, -2)) * scale       # (B, H, K, T)
        score_in = score_in.masked_fill(~ctx.mask.view(b, 1, 1, -1), torch.finfo(h.dtype).min)
        p = torch.softmax(torch.cat((score_self, score_in), dim=-1), dim=-1)
        update = p[..., :1] * v_self + torch.matmul(p[..., 1:], v_in)    # (B, H, K, Dh)
        update = self.out(update.transpose(1, 2).reshape(b, k, d))
        z = torch.sigmoid(self.gate(torch.cat((mem, update), dim=-1)))
        new = z * mem + (1 - z) * update + self.forget_bias
        new = new * (self.scale / new.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        new = torch.where((ctx.n > 0).view(-1, 1, 1), new, mem)
        return h, SlotsState(memory=new, step=state.step + 1)
