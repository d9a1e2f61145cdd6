"""``knn`` memory: a ring buffer of past (key, value) pairs read by top-k retrieval (Memorizing Transformers).

One block (``knn_layer``) attends locally within the segment as usual and, per head, retrieves the
``knn_topk`` best-matching entries of the ring buffer; a learned per-head gate mixes the two. The
segment's keys and values of that block are then written at the ring cursor (FIFO eviction). Keys are
stored unrotated: retrieval is by content, whatever the distance. Capacity changes shapes only, never
the code path (tested up to 262,144 entries). At large capacity the pure step's new buffers dominate on the CPU;
``benchmarks/knn_capacity.py`` measures it and the README gives the glibc setting that halves it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from memstream.memory.base import MemoryType
from memstream.memory.config import CoreConfig
from torch import Tensor, nn


class KnnState(NamedTuple):
    keys: Tensor    # (B, H, C, Dh) unrotated keys of the knn block
    values: Tensor  # (B, H, C, Dh)
    valid: Tensor   # (B, C) bool
    pos: Tensor     # (B, C) int64 stream position of each entry
    cursor: Tensor  # (B,) int64 next ring index to write
    step: Tensor    # (B,) int64 segments seen


class KnnMemory(MemoryType):
    State = KnnState

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        self.layer = cfg.knn_layer_index
        self.topk = cfg.knn_topk
        self.capacity = cfg.knn_capacity
        self.gate_bias = nn.Parameter(torch.zeros(cfg.heads))

    def state_spec(self, batch: int):
        c = self.cfg
        kv = (batch, c.heads, c.knn_capacity, c.head_dim)
        return {"keys": (kv, torch.float32), "values": (kv, torch.float32),
                "valid": ((batch, c.knn_capacity), torch.bool), "pos": ((batch, c.knn_capacity), torch.int64),
                "cursor": ((batch,), torch.int64), "step": ((batch,), torch.int64)}

    def begin(self, x, state, ctx, rotary):
        return x

    def retrieve(self, q: Tensor, state: KnnState) -> tuple[Tensor, Tensor]:
        """q: (B, H, T, Dh) -> (attention over the top-k entries (B, H, T, Dh), any entry valid (B, 1, 1, 1))."""
        b, h, t, dh = q.shape
        # Scale the queries, not the scores, and mask the scores in place: at large capacity each (B, H, T, C)
        # temporary is tens of MiB (64 MiB for core-small at 262,144 entries), so make only one.
        scores = torch.matmul(q * (1.0 / math.sqrt(dh)), state.keys.transpose(-1, -2))  # (B, H, T, C)
        valid = state.valid.view(b, 1, 1, -1)
        scores.masked_fill_(~valid, torch.finfo(q.dtype).min)  # a fresh temporary, not state
        top, index = torch.topk(scores, self.topk, dim=-1)                    # (B, H, T, k)
        top_valid = torch.gather(valid.expand(-1, h, t, -1), 3, index)
        p = torch.softmax(top.masked_fill(~top_valid, torch.finfo(q.dtype).min), dim=-1)
        flat = index.reshape(b, h, t * self.topk, 1).expand(-1, -1, -1, dh)
        values = torch.gather(state.values, 2, flat).view(b, h, t, self.topk, dh)
        out = (p.unsqueeze(-1) * values).sum(-2)
        return out, state.valid.any(dim=1).view(b, 1, 1, 1)

    def after_attention(self, layer, q, k, k_rot, v, attn, state, ctx):
        if layer != self.layer:
            return attn
        ctx.extra["keys"], ctx.extra["values"] = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, Dh)
        memory, any_valid = self.retrieve(q.transpose(1, 2), state)
        g = torch.sigmoid(self.gate_bias).view(1, -1, 1, 1)
        return torch.where(any_valid, g * memory + (1 - g) * attn, attn)

    def write(self, h, state, ctx):
        b, t = ctx.mask.shape
        dh = self.cfg.head_dim
        index = (state.cursor.unsqueeze(1) + torch.arange(t, device=h.device)) % self.capacity  # (B, T)
        write = ctx.mask  # valid tokens are a prefix, so they land on consecutive ring slots
        kv_index = index.view(b, 1, t, 1).expand(-1, self.cfg.heads, -1, dh)
        w = write.view(b, 1, t, 1)
        # Padded tokens rewrite what their slot already holds, so the scatter never loses an entry.
        keys = torch.where(w, ctx.extra["keys"], torch.gather(state.keys, 2, kv_index))
        values = torch.where(w, ctx.extra["values"], torch.gather(state.values, 2, kv_index))
        valid = write | torch.gather(state.valid, 1, index)
        pos = torch.where(write, ctx.pos, torch.gather(state.pos, 1, index))
        # The reset's fresh buffers are written into instead of copying 2 x capacity entries; never the caller's.
        scatter = Tensor.scatter_ if ctx.own_state else Tensor.scatter
        new = KnnState(keys=scatter(state.keys, 2, kv_index, keys), values=scatter(state.values, 2, kv_index, values),
                       valid=state.valid.scatter(1, index, valid), pos=state.pos.scatter(1, index, pos),
                       cursor=(state.cursor + ctx.n) % self.capacity, step=state.step + 1)
        return h, new
