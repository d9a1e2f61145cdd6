"""``queue`` memory: a per-layer FIFO of past keys and values (Transformer-XL, MATR).

Keys are stored already projected and rotated at their absolute stream positions, so a step projects
only the new segment and relative distances stay right without re-encoding the memory. An optional
learned write gate keeps only salient segments (MATR keeps segments predicted to contain action).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from memstream.memory.base import MemoryType
from memstream.memory.config import CoreConfig
from memstream.memory.layers import within_segments
from torch import Tensor, nn


class QueueState(NamedTuple):
    keys: Tensor    # (B, M, L, H, Dh) projected, rotated keys per layer, oldest slot first
    values: Tensor  # (B, M, L, H, Dh)
    valid: Tensor   # (B, M) bool; filled slots are always the newest (right-aligned)
    pos: Tensor     # (B, M) int64 stream position of each slot
    step: Tensor    # (B,) int64 segments seen


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """x: (..., T, D), mask: (..., T) bool -> (..., D) mean over valid tokens (0 where none)."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(-2) / w.sum(-2).clamp(min=1.0)


class QueueMemory(MemoryType):
    State = QueueState

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        self.lengths = cfg.layer_memory_lengths
        self.capacity = max(self.lengths)
        self.gate = nn.Linear(cfg.dim, 1) if cfg.write_gate else None

    def state_spec(self, batch: int):
        c = self.cfg
        # Slot-major: one slot's keys of every layer are contiguous, so the write moves whole rows.
        kv = (batch, self.capacity, c.layers, c.heads, c.head_dim)
        return {"keys": (kv, torch.float32), "values": (kv, torch.float32),
                "valid": ((batch, self.capacity), torch.bool), "pos": ((batch, self.capacity), torch.int64),
                "step": ((batch,), torch.int64)}

    def gate_logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """Write-gate logit per segment from the segment's input tokens.

        x: (..., T, D), mask: (..., T) -> (...,); a segment is written when its logit is > 0. Train it
        with an auxiliary target (for actions: does the segment contain action).
        """
        if self.gate is None:
            return torch.ones(x.shape[:-2], dtype=x.dtype, device=x.device)
        return self.gate(masked_mean(x, mask)).squeeze(-1)

    def begin(self, x, state, ctx, rotary):
        if self.gate is not None:
            ctx.extra["keep"] = self.gate_logits(x, ctx.mask) > 0  # from the segment's input tokens
        if ctx.eager_inference:
            # [memory ; segment] of every layer in one buffer per step: each layer writes its segment's keys into
            # it and attends over a view, and the new queue is read out of it, so no layer concatenates and the
            # write does not merge memory and segment again (a third of the step's copies at batch 8).
            b, t = ctx.mask.shape
            m = self.capacity
            buffers = []
            for old in (state.keys, state.values):
                buf = old.new_empty((b, m + t) + old.shape[2:])
                buf.narrow(1, 0, m).copy_(old)
                buffers.append(buf)
            ctx.extra["buffers"] = buffers
            # Every layer's views of them, made here with a few calls per buffer rather than a narrow, a select and
            # a transpose per layer and tensor: where the layer's segment keys go, L x (B, T, H, Dh), and what it
            # attends over, head-major, L x (B, H, M_l + T, Dh), by where the layer's memory starts.
            ctx.extra["targets"] = [buf.narrow(1, m, t).unbind(2) for buf in buffers]
            ctx.extra["views"] = {
                start: ([buf.narrow(1, start, m + t - start).permute(2, 0, 3, 1, 4).unbind(0) for buf in buffers]
                        + [state.valid.narrow(1, start, m - start) if start < m else None])
                for start in {m - length for length in self.lengths}}
        else:
            ctx.extra["keys"], ctx.extra["values"] = [], []
        return x

    def context(self, layer, block, k_rot, v, state, ctx):
        m = self.lengths[layer]
        start = self.capacity - m
        if "buffers" in ctx.extra:
            key_targets, value_targets = ctx.extra["targets"]
            key_targets[layer].copy_(k_rot)
            value_targets[layer].copy_(v)
            keys, values, valid = ctx.extra["views"][start]
            return keys[layer], values[layer], valid
        ctx.extra["keys"].append(k_rot)  # for write
        ctx.extra["values"].append(v)
        if m == 0:
            return k_rot.transpose(1, 2), v.transpose(1, 2), None
        # Memory and segment are both token-major: one concatenation, then one transpose to head-major.
        keys = torch.cat((state.keys[:, start:, layer], k_rot), dim=1).transpose(1, 2)
        values = torch.cat((state.values[:, start:, layer], v), dim=1).transpose(1, 2)
        return keys, values, state.valid[:, start:]

    def context_flat(self, layer, block, k_rot, v, state, ctx):
        if "buffers" in ctx.extra:  # eager inference: through the buffers' views
            return super().context_flat(layer, block, k_rot, v, state, ctx)
        # The entries are token-major already: with the heads flattened once per step for every layer, the segment's
        # keys join them in one concatenation.
        ctx.extra["keys"].append(k_rot)  # for write, (B, T, H * Dh)
        ctx.extra["values"].append(v)
        m = self.lengths[layer]
        if m == 0:
            return k_rot, v, None
        if "flat" not in ctx.extra:
            ctx.extra["flat"] = (state.keys.flatten(3), state.values.flatten(3))  # (B, M, L, H * Dh)
        keys, values = ctx.extra["flat"]
        start = self.capacity - m
        return (torch.cat((keys[:, start:, layer], k_rot), dim=1), torch.cat((values[:, start:, layer], v), dim=1),
                state.valid[:, start:])

    def write(self, h, state, ctx):
        # New queue = the last M entries of [memory ; the first n_write segment tokens]: rows taken at
        # offset n_write, one code path for full, padded and gated-out segments.
        b, t = ctx.mask.shape
        m = self.capacity
        buffers = ctx.extra.get("buffers")
        shift = None  # how many tokens every stream writes, where that is one number known without a device sync
        if buffers is not None and self.gate is None and ctx.full:
            shift = t
        else:
            n_write = ctx.n if self.gate is None else torch.where(ctx.extra["keep"], ctx.n, torch.zeros_like(ctx.n))
            if buffers is not None and n_write.device.type == "cpu" and bool((n_write == n_write[0]).all()):
                shift = int(n_write[0])
        if shift is not None:
            # Eager inference, every stream writing as many tokens (full segments, the steady state): the rows
            # are one slice, so the new queue is a view of the step's own [memory ; segment] buffer, no copy. The
            # state then holds the buffer, T slots more than its M; the next step copies it into a new one.

            def take(merged: Tensor) -> Tensor:
                """merged: (B, M + T, ...) -> (B, M, ...), a view"""
                return merged.narrow(1, shift, m)
        else:
            # The rows of every stream are picked from the flattened batch by one index_select on a 2-D view, a
            # row copy (the 5-D index_select was 2x slower at batch 1, the per-element gather over
            # (B, L, H, M, Dh) it replaced 3x (batch 1) to 6x (batch 8)).
            rows = m + t
            index = (torch.arange(b, device=h.device) * rows + n_write).unsqueeze(1) + torch.arange(m, device=h.device)
            index = index.flatten()  # (B * M,) into the flattened (B * (M + T)) rows

            def take(merged: Tensor) -> Tensor:
                """merged: (B, M + T, ...) contiguous -> (B, M, ...)"""
                return merged.view(b * rows, -1).index_select(0, index).view((b, m) + merged.shape[2:])

        def push(old: Tensor, new: Tensor) -> Tensor:
            """old: (B, M, ...), new: (B, T, ...) -> (B, M, ...)"""
            return take(torch.cat((old, new), dim=1))

        if buffers is not None:
            keys, values = (take(buf) for buf in buffers)
        else:
            def stacked(rows: list[Tensor], old: Tensor) -> Tensor:
                """L x (B, T, H, Dh), or L x (B, T, H * Dh) from context_flat -> (B, T, L, H, Dh)"""
                new = torch.stack(rows, dim=2)
                return new if new.dim() == old.dim() else new.unflatten(-1, old.shape[3:])

            keys = push(state.keys, stacked(ctx.extra["keys"], state.keys))
            values = push(state.values, stacked(ctx.extra["values"], state.values))
        new = QueueState(keys=keys, values=values, valid=push(state.valid, ctx.mask), pos=push(state.pos, ctx.pos),
                         step=state.step + 1)
        return h, new

    def sequence_masks(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """Attention masks of the parallel (whole-sequence) form, one per layer.

        x: (B, S, D) with S = N * T, mask: (B, S) -> list of (B, 1, S, S) bool. A query in segment s sees
        the valid tokens of its own segment and the last M_l written tokens of segments before s.
        """
        b, s, _ = x.shape
        t = self.cfg.segment
        n = s // t
        seg_id = torch.arange(s, device=x.device) // t
        keep = self.gate_logits(x.view(b, n, t, -1), mask.view(b, n, t)) > 0  # (B, N)
        written = mask & keep.repeat_interleave(t, dim=1)  # (B, S)
        count = written.long().cumsum(1)  # written tokens up to and including each index
        before = torch.cat((torch.zeros(b, 1, dtype=torch.long, device=x.device), count[:, t - 1::t][:, :-1]), 1)
        before_q = before[:, seg_id]  # (B, S): tokens written before the query's segment
        earlier = seg_id.view(1, s, 1) > seg_id.view(1, 1, s)
        inside = within_segments(mask, t, self.cfg.causal)
        masks = []
        for m in self.lengths:
            recent = count.unsqueeze(1) > (before_q.unsqueeze(2) - m)  # (B, S, S)
            visible = earlier & written.unsqueeze(1) & recent
            masks.append((visible | inside).unsqueeze(1))
        return masks
