"""Building blocks of the core: rotary positions from stream positions, pre-norm attention blocks.

Shapes: ``B`` batch, ``T`` segment tokens, ``M`` memory entries, ``H`` heads, ``Dh`` head width.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from memstream.memory.config import CoreConfig
from torch import Tensor, nn

_TWO_PI = 2.0 * math.pi
_DIGIT_BITS = 10  # positions are split into base-1024 digits, see Rotary


def _wrap(angle: Tensor) -> Tensor:
    """Angle modulo 2*pi, written with Floor so every runtime (TensorRT included) has it."""
    return angle - _TWO_PI * torch.floor(angle / _TWO_PI)


class Rotary(nn.Module):
    """Rotary position embedding evaluated at absolute stream positions.

    A stream can run for days: position 10^7 times a float32 frequency loses the angle to rounding.
    The position is split into three base-1024 digits and each digit multiplies a frequency already
    reduced modulo 2*pi in float64, so every product stays below 1024 * 2*pi and the angle keeps
    ~1e-3 rad accuracy up to 2^30 tokens without float64 in the graph.
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        digits = torch.stack([torch.remainder(inv_freq * (2.0 ** (_DIGIT_BITS * i)), _TWO_PI) for i in range(3)])
        self.register_buffer("digit_freq", digits.float(), persistent=False)  # (3, Dh/2)
        unit = [1, 1 << _DIGIT_BITS, 1 << (2 * _DIGIT_BITS)]
        self.register_buffer("digit_unit", torch.tensor(unit, dtype=torch.int64), persistent=False)
        # The top digit is not reduced: it stays exact however long the stream.
        self.register_buffer("digit_base", torch.tensor([1 << _DIGIT_BITS] * 2 + [1 << 62], dtype=torch.int64),
                             persistent=False)
        half = head_dim // 2
        self.register_buffer("sign", torch.tensor([-1.0] * half + [1.0] * half), persistent=False)

    def angle(self, pos: Tensor) -> Tensor:
        """pos: (B, N) int64 stream positions -> rotation angles (B, N, Dh/2), each in [0, 3 * 2*pi)."""
        digits = (pos.unsqueeze(-1) // self.digit_unit) % self.digit_base  # (B, N, 3)
        return _wrap(digits.unsqueeze(-1).float() * self.digit_freq).sum(-2)

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos: (B, N) int64 stream positions -> cos, sin: (B, 1, N, Dh/2)."""
        angle = self.angle(pos).unsqueeze(1)
        return torch.cos(angle), torch.sin(angle)

    def half_tables(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos: (B, N) int64 -> cos, sin: (B, N, Dh/2), the caches of ONNX's RotaryEmbedding op (no position ids)."""
        angle = self.angle(pos)
        return torch.cos(angle), torch.sin(angle)

    def token_tables(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos: (B, N) int64 -> the full-width tables of :func:`rotate_full` for token-major heads, cos_full and
        sin_signed: (B, N, 1, 1, Dh); the same numbers as :func:`rotation_tables` of :meth:`forward`, in fewer
        calls (the core's step makes them once per step)."""
        b, n = pos.shape
        angle = self.angle(pos)
        angle = torch.cat((angle, angle), dim=-1).view(b, n, 1, 1, -1)
        return torch.cos(angle), torch.sin(angle) * self.sign


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, N, Dh) rotated by cos/sin: (B, 1, N, Dh/2); any layout whose cos/sin broadcast, e.g.
    token-major x: (B, N, S, H, Dh) with cos/sin: (B, N, 1, 1, Dh/2)."""
    return rotate_full(x, *rotation_tables(cos, sin))


def rotation_tables(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Half-width cos/sin (..., Dh/2) -> the full-width tables of :func:`rotate_full`: [cos, cos], [-sin, sin]."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate_full(x: Tensor, cos_full: Tensor, sin_signed: Tensor) -> Tensor:
    """:func:`rotate` with the tables of :func:`rotation_tables` made beforehand (the core step makes them once
    for all its layers): x1*cos + x2*(-sin), x2*cos + x1*sin, each rounded as x1*cos - x2*sin would be."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos_full + torch.cat((x2, x1), dim=-1) * sin_signed


def segment_mask(valid: Tensor, causal: bool) -> Tensor:
    """Which segment keys each segment query sees.

    valid: (B, T) bool -> (B, T, T) bool. A query always sees itself, so no row is empty (an empty row
    turns softmax into NaN) and padded queries stay finite; their outputs are never used.
    """
    t = valid.shape[1]
    eye = torch.eye(t, dtype=torch.bool, device=valid.device)
    seen = valid.unsqueeze(1).expand(-1, t, -1)
    if causal:
        seen = seen & torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
    return seen | eye


def additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool attention mask -> additive float mask (0 where seen, the dtype's minimum elsewhere).

    Built once per step and shared by the layers: a bool mask is converted inside every attention call.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def within_segments(mask: Tensor, segment: int, causal: bool) -> Tensor:
    """The whole-sequence form of :func:`segment_mask`: each token sees the valid tokens of its own segment.

    mask: (B, S) bool -> (B, S, S) bool, the diagonal always set.
    """
    s = mask.shape[1]
    seg_id = torch.arange(s, device=mask.device) // segment
    inside = (seg_id.view(s, 1) == seg_id.view(1, s)) & mask.unsqueeze(1)
    if causal:
        inside = inside & torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()
    return inside | torch.eye(s, dtype=torch.bool, device=mask.device)


def attention_mask(memory_valid: Tensor | None, seg_mask: Tensor) -> Tensor:
    """Mask over ``[memory ; segment]`` keys, expanded to (B, 1, T, M + T).

    memory_valid: (B, M) bool or None; seg_mask: (B, T, T). ONNX Runtime's Attention op rejects masks
    that broadcast over the query axis, hence the explicit expansion.
    """
    if memory_valid is None:
        return seg_mask.unsqueeze(1)
    t = seg_mask.shape[1]
    mem = memory_valid.unsqueeze(1).expand(-1, t, -1)
    return torch.cat((mem, seg_mask), dim=-1).unsqueeze(1)


class BlockTensors(NamedTuple):
    """What a :class:`Block` computes with, as :meth:`Block.tensors` keeps it (the Parameter objects themselves)."""

    norm1_shape: tuple[int, ...]
    norm1_weight: Tensor | None
    norm1_bias: Tensor | None
    norm1_eps: float
    qkv_weight: Tensor
    qkv_bias: Tensor | None
    out_weight: Tensor
    out_bias: Tensor | None
    norm2_shape: tuple[int, ...]
    norm2_weight: Tensor | None
    norm2_bias: Tensor | None
    norm2_eps: float
    up_weight: Tensor
    up_bias: Tensor | None
    down_weight: Tensor
    down_bias: Tensor | None


# (submodule path, attribute) of each BlockTensors field, in order.
_BLOCK_TENSORS = (
    (("norm1",), "normalized_shape"), (("norm1",), "weight"), (("norm1",), "bias"), (("norm1",), "eps"),
    (("qkv",), "weight"), (("qkv",), "bias"), (("out",), "weight"), (("out",), "bias"),
    (("norm2",), "normalized_shape"), (("norm2",), "weight"), (("norm2",), "bias"), (("norm2",), "eps"),
    (("ff", "0"), "weight"), (("ff", "0"), "bias"), (("ff", "2"), "weight"), (("ff", "2"), "bias"),
)


def block_qkv(w: BlockTensors, h: Tensor, heads: int, head_dim: int) -> Tensor:
    """A block's first half on its tensors ``w``: h: (B, N, D) -> unrotated q, k, v token-major (B, N, 3, H, Dh), a
    view of one projection."""
    b, n, _ = h.shape
    return block_qkv_flat(w, h).view(b, n, 3, heads, head_dim)


def block_qkv_flat(w: BlockTensors, h: Tensor) -> Tensor:
    """:func:`block_qkv` as the projection gives it: h: (B, N, D) -> [q | k | v] (B, N, 3 * H * Dh)."""
    x = F.layer_norm(h, w.norm1_shape, w.norm1_weight, w.norm1_bias, w.norm1_eps)
    return F.linear(x, w.qkv_weight, w.qkv_bias)


def block_finish(w: BlockTensors, h: Tensor, attn: Tensor, dropout: float) -> Tensor:
    """A block's second half on its tensors ``w``: h: (B, T, D) residual stream, attn: (B, H, T, Dh) -> (B, T, D);
    ``dropout`` 0 for none (eval)."""
    b, _, t, _ = attn.shape
    return block_finish_tokens(w, h, attn.transpose(1, 2).reshape(b, t, -1), dropout)


def block_finish_tokens(w: BlockTensors, h: Tensor, attn: Tensor, dropout: float) -> Tensor:
    """:func:`block_finish` with the attention output token-major, attn: (B, T, H * Dh)."""
    a = F.linear(attn, w.out_weight, w.out_bias)
    h = h + (F.dropout(a, dropout, True) if dropout else a)
    f = F.layer_norm(h, w.norm2_shape, w.norm2_weight, w.norm2_bias, w.norm2_eps)
    f = F.linear(F.gelu(F.linear(f, w.up_weight, w.up_bias)), w.down_weight, w.down_bias)
    return h + (F.dropout(f, dropout, True) if dropout else f)


class Block(nn.Module):
    """Pre-norm transformer block whose attention runs over ``[memory ; segment]``.

    The block is split into ``project`` (queries, keys, values of the segment), ``project_memory``
    (keys and values of memory vectors) and ``finish`` (output projection, residual, feed-forward) so
    that each memory type can put its own context between them.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.dropout = cfg.dropout

    def tensors(self) -> BlockTensors:
        """The block's parameters and norm settings, looked up through the module tree once and then kept.

        The step runs the block functionally on them: at segment sizes of a few tokens, a module call, and even an
        nn.Module attribute lookup (fifteen per layer), costs about what a small op does (keeping them made a
        core-small step at batch 1 2-3% faster). Kept are the Parameter objects themselves, so in-place updates
        (optimizer steps, ``load_state_dict``, ``.to()``) show through; every call checks each kept entry against the
        registry it came from (a dict lookup each), so a replaced parameter, submodule or norm setting is picked up
        at once.
        """
        if torch.compiler.is_compiling():  # graph capture guards on module attributes itself: plain lookups
            return BlockTensors(*(getattr(self.get_submodule(".".join(path)), name) for path, name in _BLOCK_TENSORS))
        kept = self.__dict__.get("_kept_tensors")
        if kept is not None:
            registries, names, values, tensors = kept
            if all(map(operator.is_, map(dict.get, registries, names), values)):  # C-level loop: ~1 µs
                return tensors
        checks, values = {}, []  # (registry id, name) -> (registry, name, value): each lookup checked once
        for path, name in _BLOCK_TENSORS:
            module = self
            for part in path:
                registry, module = module._modules, module._modules[part]
                checks[id(registry), part] = (registry, part, module)
            registry = module._parameters if name in module._parameters else module.__dict__
            checks[id(registry), name] = (registry, name, registry[name])
            values.append(registry[name])
        tensors = BlockTensors(*values)
        registries, names, kept_values = zip(*checks.values())
        self.__dict__["_kept_tensors"] = (registries, names, kept_values, tensors)  # plain: not state, not a module
        return tensors

    def __getstate__(self) -> dict:
        # Not the kept tensors: unpickling (and deepcopy) rebuild a module's __dict__ from this state, so kept
        # references to the old registries would no longer see changes to the new module.
        state = self.__dict__.copy()
        state.pop("_kept_tensors", None)
        return state

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, H, N, Dh)."""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def qkv_heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, N, D) -> unrotated q, k, v: (B, H, N, Dh)."""
        return self.qkv_tokens(h).permute(2, 0, 3, 1, 4).unbind(0)

    def qkv_tokens(self, h: Tensor) -> Tensor:
        """h: (B, N, D) -> unrotated q, k, v token-major: (B, N, 3, H, Dh), a view of one projection."""
        return block_qkv(self.tensors(), h, self.heads, self.head_dim)

    @staticmethod
    def rotate_heads(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return rotate(x, cos, sin)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, N, D) -> q, k, v: (B, H, N, Dh); q and k rotated at the tokens' positions."""
        q, k, v = self.qkv_heads(h)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def project_memory(self, m: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """m: (B, K, D) memory vectors -> k, v: (B, H, K, Dh), k rotated by cos/sin: (B, 1, 1|K, Dh/2)."""
        d = m.shape[-1]
        w = self.tensors()
        x = F.layer_norm(m, w.norm1_shape, w.norm1_weight, w.norm1_bias, w.norm1_eps)
        kv = F.linear(x, w.qkv_weight[d:], w.qkv_bias[d:])
        k, v = kv.chunk(2, dim=-1)
        return rotate(self.split_heads(k), cos, sin), self.split_heads(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """q: (B, H, T, Dh), k/v: (B, H, M + T, Dh), mask: (B, 1, T, M + T) -> (B, H, T, Dh)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def finish(self, h: Tensor, attn: Tensor) -> Tensor:
        """h: (B, T, D) residual stream, attn: (B, H, T, Dh) -> (B, T, D)."""
        return block_finish(self.tensors(), h, attn, self.current_dropout)

    @property
    def current_dropout(self) -> float:
        """The dropout probability in the block's current mode: 0 in eval."""
        return self.dropout if self.training else 0.0
