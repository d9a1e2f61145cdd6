"""The interface every memory type implements, and the per-step context the core hands to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from memstream.memory.config import CoreConfig
from memstream.memory.layers import Block
from torch import Tensor, nn


@dataclass
class StepContext:
    """What one step knows besides the state; memory types add their own entries.

    Attributes:
        mask: (B, T) bool, valid segment tokens (a prefix: padding only at the end).
        pos: (B, T) int64 stream positions of the segment's tokens.
        token_pos: (B, N) int64 stream positions of the N tokens the blocks run over, set by a memory whose
            tokens are not just the segment's; None means ``pos``.
        seg_mask: (B, N, N) bool attention among those tokens; None (the default) means the plain
            ``segment_mask(mask, causal)``, which the core builds only when a step needs a mask at all.
        own_state: the state's tensors were made by this step (a ``reset`` was applied: every field is the
            reset's new tensor) and autograd is off, so ``write`` may update them in place instead of copying
            them; never the caller's tensors, which the step must not change.
        eager_inference: autograd is off and no torch.compile or export traces the step, so a memory may take
            eager-only shortcuts (e.g. write into buffers the step allocated) with the same results.
        full: eager inference and every segment token of every stream is valid (known without a device sync);
            False when unknown.
    """

    mask: Tensor
    pos: Tensor
    own_state: bool = False
    eager_inference: bool = False
    full: bool = False
    token_pos: Tensor | None = None
    seg_mask: Tensor | None = None
    extra: dict = field(default_factory=dict)
    _n: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def n(self) -> Tensor:
        """(B,) int64 number of valid tokens; counted when first asked for (a full step in eager inference that never
        asks saves the op). Not functools.cached_property: its lock (Python 3.11) stops torch.compile."""
        if self._n is None:
            self._n = self.mask.sum(1)
        return self._n


class MemoryType(nn.Module):
    """A memory type: the fixed-size state it keeps and how the core reads and writes it.

    Every state is a NamedTuple of batch-first tensors whose all-zero value is the empty memory
    (learned initial contents are substituted inside the step), so a runtime can build a fresh state
    from shapes and dtypes alone.
    """

    State: type[NamedTuple]

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Field name -> (shape, dtype) of the state for ``batch`` streams."""
        raise NotImplementedError

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        spec = self.state_spec(batch)
        return self.State(**{k: torch.zeros(shape, dtype=dt, device=device) for k, (shape, dt) in spec.items()})

    def begin(self, x: Tensor, state: NamedTuple, ctx: StepContext, rotary: nn.Module) -> Tensor:
        """Prepare the step: fill ``ctx`` (the tokens' positions and attention among them where they are not
        the segment's own) and return the tokens the blocks run over, (B, N, D) with N >= T."""
        raise NotImplementedError

    def read(self, layer: int, block: Block, state: NamedTuple, ctx: StepContext):
        """Memory keys/values for ``layer``: (k, v): (B, H, M, Dh) and valid: (B, M), or None.

        Within one step, ``valid`` must depend only on M: the core shares attention masks between
        layers with the same memory length.
        """
        return None

    def context(self, layer: int, block: Block, k_rot: Tensor, v: Tensor, state: NamedTuple,
                ctx: StepContext) -> tuple[Tensor, Tensor, Tensor | None]:
        """What ``layer`` attends over: keys and values head-major, ``[memory ; the N tokens]``, (B, H, M + N, Dh)
        each, and the memory's valid (B, M) bool (None: no memory). ``k_rot``/``v``: (B, N, H, Dh) of the tokens.

        The default concatenates :meth:`read` with the tokens' own; a memory that keeps its entries in that form
        may hand out views of buffers instead.
        """
        k_heads, v_heads = k_rot.transpose(1, 2), v.transpose(1, 2)
        memory = self.read(layer, block, state, ctx)
        if memory is None:
            return k_heads, v_heads, None
        mk, mv, mvalid = memory
        return torch.cat((mk, k_heads), dim=2), torch.cat((mv, v_heads), dim=2), mvalid

    def context_flat(self, layer: int, block: Block, k_rot: Tensor, v: Tensor, state: NamedTuple,
                     ctx: StepContext) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`context` token-major with the heads side by side, as ONNX's 3-D Attention op takes it: ``k_rot``,
        ``v``: (B, N, H * Dh) -> keys, values: (B, M + N, H * Dh) and the memory's valid. Only an ONNX export at
        opset >= 23 calls it. The default goes through :meth:`context`; a memory that keeps its entries
        token-major overrides it and concatenates without a transpose."""
        heads, head_dim = self.cfg.heads, self.cfg.head_dim
        keys, values, valid = self.context(layer, block, k_rot.unflatten(-1, (heads, head_dim)),
                                           v.unflatten(-1, (heads, head_dim)), state, ctx)
        return keys.transpose(1, 2).flatten(2), values.transpose(1, 2).flatten(2), valid

    def after_attention(self, layer: int, q: Tensor, k: Tensor, k_rot: Tensor, v: Tensor, attn: Tensor,
                        state: NamedTuple, ctx: StepContext) -> Tensor:
        """Sees the layer's unrotated q/k, rotated k and v token-major (B, N, H, Dh); may change attn (B, H, N, Dh)."""
        return attn

    def write(self, h: Tensor, state: NamedTuple, ctx: StepContext) -> tuple[Tensor, NamedTuple]:
        """h: (B, N, D) final hidden tokens -> (segment output (B, T, D), new state)."""
        raise NotImplementedError


class VectorMemory(MemoryType):
    """A memory of K learned-initialised vectors, state ``memory: (B, K, D)`` + ``step: (B,)`` (tokens, slots)."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__(cfg)
        self.initial = nn.Parameter(torch.randn(cfg.num_tokens, cfg.dim) * 0.02)

    def state_spec(self, batch: int):
        return {"memory": ((batch, self.cfg.num_tokens, self.cfg.dim), torch.float32),
                "step": ((batch,), torch.int64)}

    def current(self, state: NamedTuple) -> Tensor:
        """(B, K, D) memory, with the learned initial vectors for streams at step 0 (fresh or reset)."""
        fresh = (state.step == 0).view(-1, 1, 1)
        return torch.where(fresh, self.initial.unsqueeze(0), state.memory)
