"""``tokens`` memory: K memory tokens read and written around each segment (Memory Transformer, RMT).

The blocks run over ``[read tokens ; segment ; write tokens]``; the write tokens' outputs become the
next memory. With ``update_layer`` a dedicated block (Memory Transformer's MemCtrl) computes the new
memory from the old one attending to the processed segment instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from memstream.memory.base import VectorMemory
from memstream.memory.config import CoreConfig
from memstream.memory.layers import Block
from torch import Tensor, nn


class TokensState(NamedTuple):
    memory: Tensor  # (B, K, D) memory tokens
    step: Tensor    # (B,) int64 segments seen; 0 means "use the learned initial tokens"


def _structure(k: int, t: int, write_tokens: bool, causal: bool) -> Tensor:
    """(N, N) bool: which of [read K ; segment T ; write K] each token may attend to."""
    n = k + t + (k if write_tokens else 0)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:k, :k] = True                       # read tokens: the memory only
    allowed[k:k + t, :k] = True                  # segment: memory and the segment
    seg = torch.ones(t, t, dtype=torch.bool)
    allowed[k:k + t, k:k + t] = seg.tril() if causal else seg
    if write_tokens:
        allowed[k + t:, :] = True                # write tokens: everything
    return allowed


class TokensMemory(VectorMemory):
    State = TokensState

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        k, d = cfg.num_tokens, cfg.dim
        self.read_embed = nn.Parameter(torch.zeros(d))
        self.write_embed = nn.Parameter(torch.zeros(d))
        self.updater = Block(cfg) if cfg.update_layer else None
        self.register_buffer("structure", _structure(k, cfg.segment, self.updater is None, cfg.causal),
                             persistent=False)

    def begin(self, x, state, ctx, rotary):
        k = self.cfg.num_tokens
        b = x.shape[0]
        mem = self.current(state)
        ctx.extra["memory"] = mem
        first, last = ctx.pos[:, :1], ctx.pos[:, -1:]
        # Memory tokens sit at the segment's first (read) and last (write) position: fixed relative
        # distances to the segment, whatever the stream position.
        parts = [mem + self.read_embed, x]
        pos = [first.expand(-1, k), ctx.pos]
        valid = [torch.ones(b, k, dtype=torch.bool, device=x.device), ctx.mask]
        if self.updater is None:
            parts.append(mem + self.write_embed)
            pos.append(last.expand(-1, k))
            valid.append(valid[0])
        ctx.token_pos = torch.cat(pos, dim=1)
        if self.updater is not None:  # it runs over [memory ; segment], the first K + T tokens
            ctx.extra["update_cos"], ctx.extra["update_sin"] = rotary(ctx.token_pos[:, : k + self.cfg.segment])
        n = self.structure.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        ctx.seg_mask = (torch.cat(valid, dim=1).unsqueeze(1) & self.structure) | eye
        return torch.cat(parts, dim=1)

    def write(self, h, state, ctx):
        k, t = self.cfg.num_tokens, self.cfg.segment
        old = ctx.extra["memory"]
        y = h[:, k:k + t]
        if self.updater is None:
            new = h[:, k + t:]
        else:
            # MemCtrl: the memory attends to itself and to the processed segment.
            both = torch.cat((old, y), dim=1)
            cos, sin = ctx.extra["update_cos"], ctx.extra["update_sin"]
            q, kk, v = self.updater.project(both, cos, sin)
            b = h.shape[0]
            keys_valid = torch.cat((torch.ones(b, k, dtype=torch.bool, device=h.device), ctx.mask), dim=1)
            mask = keys_valid.view(b, 1, 1, k + t).expand(-1, 1, k, -1)
            new = self.updater.finish(old, self.updater.attend(q[:, :, :k], kk, v, mask))
        # An all-padding segment leaves the memory as it was.
        new = torch.where((ctx.n > 0).view(-1, 1, 1), new, old)
        return y, TokensState(memory=new, step=state.step + 1)
