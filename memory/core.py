"""The memory core: pre-norm transformer blocks over ``[memory ; segment]`` with an explicit state.

Streaming: ``y, state = core.step(x, state, reset, mask)`` processes one fixed-size segment.
Training: ``core.forward_sequence(x, mask)`` processes whole sequences; for ``queue`` (and ``none``) it is
a single masked pass (the parallel form), for the recurrent types a loop over ``step``. Both give the
same numbers as streaming segment by segment.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

import torch
import torch.nn.functional as F
from memstream.memory.base import MemoryType, StepContext
from memstream.memory.config import CoreConfig
from memstream.memory.knn import KnnMemory
from memstream.memory.layers import (
    Block,
    Rotary,
    additive,
    attention_mask,
    block_finish,
    block_finish_tokens,
    block_qkv,
    block_qkv_flat,
    rotate_full,
    segment_mask,
    within_segments,
)
from memstream.memory.ntm import NtmMemory
from memstream.memory.queue import QueueMemory
from memstream.memory.slots import SlotsMemory
from memstream.memory.tokens import TokensMemory
from torch import Tensor, nn

# Set while :func:`memstream.export.export_step` traces a step at opset >= 23: the layers then write rotary positions
# and attention as ONNX's own RotaryEmbedding and 3-D Attention ops (``torch.onnx.ops``), token-major throughout, so
# the graph has no transposes around attention and no rotate-half of split and concatenated halves (core-small with
# the queue: 229 nodes -> 178, an ONNX Runtime step 4-13% faster).
ONNX_STANDARD_OPS: ContextVar[bool] = ContextVar("memstream_onnx_standard_ops", default=False)


class NoneState(NamedTuple):
    step: Tensor  # (B,) int64 segments seen


class _NoMemory(MemoryType):
    """No memory: every segment on its own (the baseline every memory type must beat)."""

    State = NoneState

    def state_spec(self, batch: int):
        return {"step": ((batch,), torch.int64)}

    def begin(self, x, state, ctx, rotary):
        return x

    def write(self, h, state, ctx):
        return h, NoneState(step=state.step + 1)

    def sequence_masks(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        return [within_segments(mask, self.cfg.segment, self.cfg.causal).unsqueeze(1)] * self.cfg.layers


MEMORY_CLASSES: dict[str, type[MemoryType]] = {
    "queue": QueueMemory, "tokens": TokensMemory, "slots": SlotsMemory, "knn": KnnMemory, "ntm": NtmMemory,
    "none": _NoMemory,
}


def reset_state(state: NamedTuple, reset: Tensor) -> NamedTuple:
    """Zero the state of the streams where reset: (B,) bool is set; the all-zero state is the empty memory."""
    out = []
    for t in state:
        r = reset.view((-1,) + (1,) * (t.dim() - 1))
        # Bool fields use logic ops: ONNX Runtime's CPU Where has no bool kernel. `where`, not an out-of-place
        # masked_fill (a copy, then a fill): one pass, which counts for the knn memory's 256 MiB buffers.
        out.append(t & ~r if t.dtype == torch.bool else torch.where(r, 0, t))
    return type(state)(*out)


class MemoryCore(nn.Module):
    """Memory-augmented transformer core shared by every task.

    Args:
        cfg: :class:`CoreConfig`; the memory type is ``cfg.memory``.

    Shapes: ``x`` (B, T, D) segment tokens with T = ``cfg.segment``; ``mask`` (B, T) bool, True for valid
    tokens, a prefix (the segmenter pads only the end); ``reset`` (B,) bool. The state is a NamedTuple of
    batch-first tensors of fixed shape (``core.state_spec(B)``), whatever the stream's length.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.memory = MEMORY_CLASSES[cfg.memory](cfg)
        self.State = self.memory.State
        # Most memories leave attention as it is: the step then skips the call, one per layer.
        self.memory_changes_attention = type(self.memory).after_attention is not MemoryType.after_attention

    # -- state ---------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Field name -> (shape, dtype) of the state for ``batch`` streams."""
        return self.memory.state_spec(batch)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        """The empty state for ``batch`` streams (all zeros)."""
        return self.memory.init_state(batch, device)

    # -- streaming -----------------------------------------------------------------------------------
    def step(self, x: Tensor, state: NamedTuple, reset: Tensor | None = None,
             mask: Tensor | None = None) -> tuple[Tensor, NamedTuple]:
        """One segment for every stream of the batch.

        Args:
            x: (B, T, D) segment tokens.
            state: the state returned by the previous step (or ``init_state``).
            reset: (B,) bool; those streams start anew (their state is cleared first).
            mask: (B, T) bool valid tokens, a prefix; None means all valid.

        Returns:
            y: (B, T, D) outputs (padded positions hold finite values to be ignored), and the new state.
        """
        b, t, _ = x.shape
        # Eager inference (autograd off, not traced by torch.compile or an export) may take shortcuts a graph
        # cannot: skip the reset when no stream resets (a CPU tensor: no device sync), write into buffers, leave
        # out an attention mask that masks nothing.
        eager = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
            full = eager
        else:
            full = eager and mask.device.type == "cpu" and bool(mask.all())
        cleared = reset is not None and not (eager and reset.device.type == "cpu" and not bool(reset.any()))
        if cleared:
            state = reset_state(state, reset)
        pos = state.step.unsqueeze(1) * t + torch.arange(t, device=x.device)
        # The reset made every state tensor anew; with autograd off nothing else holds them (autograd may save
        # them for backward), so the memory may write into them in place.
        own = cleared and not torch.is_grad_enabled()
        ctx = StepContext(mask=mask, pos=pos, own_state=own, eager_inference=eager, full=full)
        h = self.memory.begin(x, state, ctx, self.rotary)
        n_tokens = h.shape[1]
        # The blocks run token-major, (B, N, H, Dh): the projection's own layout, the one SDPA's CPU kernel
        # reads and writes, and the queue's slot-major rows, so no layer copies a transposed tensor.
        cos, sin = self.rotary.token_tables(ctx.pos if ctx.token_pos is None else ctx.token_pos)  # (B, N, 1, 1, Dh)
        masks: dict[int, Tensor | None] = {}  # attention masks by memory length, shared by the layers
        memory, heads, head_dim = self.memory, self.cfg.heads, self.cfg.head_dim
        # Dynamo cannot trace a ContextVar: under torch.compile (or a strict export) the layers keep the eager form.
        if not torch.compiler.is_dynamo_compiling() and ONNX_STANDARD_OPS.get() and not self.memory_changes_attention:
            h = self._export_layers(h, state, ctx)
        else:
            # Each layer runs the block's math (block_qkv, block_finish) on its kept tensors, not through the block's
            # methods: at batch 1 every Python call between the small ops shows in the step time (three method calls
            # and a second tensors() lookup per layer cost ~2% of a core-small step).
            for layer, block in enumerate(self.blocks):
                w = block.tensors()
                qkv = block_qkv(w, h, heads, head_dim)  # (B, N, 3, H, Dh)
                q_rot, k_rot = rotate_full(qkv.narrow(2, 0, 2), cos, sin).unbind(2)  # q and k rotated in one go
                q, k, v = qkv.unbind(2)
                keys, values, mvalid = memory.context(layer, block, k_rot, v, state, ctx)  # (B, H, M + N, Dh)
                length = keys.shape[2] - n_tokens
                if length not in masks:
                    masks[length] = self._attention_mask(mvalid, ctx, h.dtype)
                attn = F.scaled_dot_product_attention(q_rot.transpose(1, 2), keys, values, attn_mask=masks[length])
                if self.memory_changes_attention:
                    attn = memory.after_attention(layer, q, k, k_rot, v, attn, state, ctx)
                h = block_finish(w, h, attn, block.current_dropout)
        y, state = memory.write(h, state, ctx)
        norm = self.norm  # functionally: a module call costs as much as the norm itself here
        return F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps), state

    def _export_layers(self, h: Tensor, state: NamedTuple, ctx: StepContext) -> Tensor:
        """The layers of :meth:`step` as an ONNX export at opset >= 23 traces them (see ``ONNX_STANDARD_OPS``): the
        same math as the eager loop, through ``torch.onnx.ops``. h: (B, N, D) -> (B, N, D)."""
        _, n, d = h.shape
        memory, heads = self.memory, self.cfg.heads
        cos, sin = self.rotary.half_tables(ctx.pos if ctx.token_pos is None else ctx.token_pos)  # (B, N, Dh/2)
        masks: dict[int, Tensor | None] = {}
        for layer, block in enumerate(self.blocks):
            w = block.tensors()
            qkv = block_qkv_flat(w, h)  # (B, N, 3D): [q | k | v]
            # q and k rotated together: ONNX's op rotates each head of a (B, N, heads * Dh) input alike.
            qk = torch.onnx.ops.rotary_embedding(qkv[..., :2 * d], cos, sin, num_heads=2 * heads)
            keys, values, mvalid = memory.context_flat(layer, block, qk[..., d:], qkv[..., 2 * d:], state, ctx)
            length = keys.shape[1] - n
            if length not in masks:
                masks[length] = self._attention_mask(mvalid, ctx, h.dtype)
            attn = torch.onnx.ops.attention(qk[..., :d], keys, values, masks[length], q_num_heads=heads,
                                            kv_num_heads=heads)[0]  # (B, N, D)
            h = block_finish_tokens(w, h, attn, block.current_dropout)
        return h

    def _attention_mask(self, memory_valid: Tensor | None, ctx: StepContext, dtype: torch.dtype) -> Tensor | None:
        """Additive mask (B, 1, N, M + N) over ``[memory ; tokens]`` keys; None in eager inference when every key
        is visible (a full memory, a full segment, not causal), so SDPA adds none."""
        if ctx.seg_mask is None and ctx.full and not self.cfg.causal and (
                memory_valid is None or (memory_valid.device.type == "cpu" and bool(memory_valid.all()))):
            return None
        seg_mask = segment_mask(ctx.mask, self.cfg.causal) if ctx.seg_mask is None else ctx.seg_mask
        seen = attention_mask(memory_valid, seg_mask)
        if ctx.seg_mask is not None and ctx.eager_inference and seen.device.type == "cpu" and bool(seen.all()):
            return None  # a memory's own token structure that happens to hide nothing
        return additive(seen, dtype)

    # -- whole sequences -----------------------------------------------------------------------------
    def forward_sequence(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """A whole sequence from the empty state.

        x: (B, S, D) with S a multiple of T, mask: (B, S) bool (valid tokens; padding only at the end)
        -> y: (B, S, D), equal to streaming the S / T segments one by one.
        """
        b, s, _ = x.shape
        t = self.cfg.segment
        if s % t:
            raise ValueError(f"forward_sequence: length {s} is not a multiple of the segment size {t}")
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        if hasattr(self.memory, "sequence_masks"):
            return self._parallel(x, mask)
        state = self.init_state(b, x.device)
        ys = []
        for i in range(0, s, t):
            y, state = self.step(x[:, i:i + t], state, None, mask[:, i:i + t])
            ys.append(y)
        return torch.cat(ys, dim=1)

    def _parallel(self, x: Tensor, mask: Tensor) -> Tensor:
        b, s, _ = x.shape
        cos, sin = self.rotary(torch.arange(s, device=x.device).expand(b, -1))
        masks = self.memory.sequence_masks(x, mask)
        h = x
        for block, attn_mask in zip(self.blocks, masks, strict=True):
            q, k, v = block.qkv_heads(h)
            q, k = block.rotate_heads(q, cos, sin), block.rotate_heads(k, cos, sin)
            h = block.finish(h, block.attend(q, k, v, attn_mask))
        return self.norm(h)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_sequence(x, mask)
