"""Anomaly detection with memory of normality (MemMC-MAE / MemAE lineage, PatchCore's feature memory).

Trained on normal images (or footage) only. An image is cut into ``patch`` x ``patch`` tokens:

- **Encoder** (ViT style, timm's ``PatchEmbed``): pre-norm blocks whose self-attention also attends to
  ``memory_slots`` learned memory slots (MemMC-MAE: prototypes of normal patterns); optionally MemAE's
  addressing with hard shrinkage rewrites the last level from ``memae_items`` memory items.
- **Masked autoencoder**: training hides a random ``mask_ratio`` of the patches; the encoder sees the rest;
  the decoder's queries (one per patch) cross-attend to several encoder levels (``decoder_levels``) and
  reconstruct the pixels.
- **Scores** (all maps (B, H, W), standardised by their statistics on the normal training images, so they
  are comparable and can be summed):
  ``reconstruction``: the squared error of each patch reconstructed while hidden, under ``score_masks``
  complementary masks (every patch hidden exactly once); ``features``: the distance of each patch's feature
  to its nearest neighbour in a **memory bank of normal patch features** (PatchCore; ``bank_size`` entries, a
  fixed-capacity buffer with a validity mask). The patch features (``features_from``) are by default the
  pixels themselves (``pixels``): the image colour-balanced (``colour_balance``, grey world: each image's
  colour cast cancels) and divided by its smooth luminance (``light_sigma``: each image's gain and lighting
  gradient cancel, a stain's colour stays), one bank per patch side in ``pixel_patch``, each of the image
  average-pooled by its factor in ``pixel_pool``, in patches every ``pixel_stride`` pooled pixels (the preset:
  4x4 of the full-resolution image for thin lines and faint stains, 6x6 of the 2x-pooled image for a part's
  shape and context), the map the mean of theirs. Each bank holds a random ``bank_size`` of
  the normal patches taken at *every* offset, so a texture's phase or an object's pose need not match a
  training image's grid. A distance is in units of its nearest entry's own spread (its distance to its
  ``density_k``-th neighbour from another training image, softened by ``density_soft`` x their median: a
  local outlier factor), so normal patterns that vary a lot (edges, stripes) no longer outscore a faint
  defect on a smooth surface. ``encoder`` takes the encoder's (level ``feature_level``: 0 the patch
  embeddings, k the output of block k) on the token grid, one bank, a greedy coreset (``bank_pick``).
  Without pretrained weights, 50 normal images do not train features that beat the pixels: synthetic mean
  image AUROC 0.954 against 0.706 (``memstream bench anomaly``, 2026-11-22, both banks pooled), at about a
  fortieth of the speed (the current default: a hundredth; the search is exhaustive, see the model card);
  ``fused``: their
  sum; ``position``: the Mahalanobis distance of each patch's feature to a Gaussian of the normal features *at
  that patch's position* (PaDiM; features on their ``position_dims`` principal components, covariance
  shrunk towards its mean variance). For aligned objects (a part always in the same place) this sees what
  the bank cannot: normal content in the wrong place (a missing or misplaced part, a lead bent onto the
  board's background). For textures and objects that turn, the global bank is better. Image score: the
  map's maximum. The default is ``features``: in ``memstream bench anomaly`` it was best on textures, on
  objects that turn and on the synthetic board, which turns a few degrees (reconstruction error is high on
  normal edges too, and the sum inherits that); on the strictly aligned MVTec transistor ``position`` and
  ``features`` both give image AUROC 1.0 (``features`` gave 0.56 before its distances were put in units of
  the bank's spread); a model fitted with ``position_dims`` > 0 holds every map, so ``use_score`` (``--score``
  of ``eval anomaly``) switches. On the synthetic video ``fused`` was better (frame AUROC 0.892 vs 0.833), at a
  sixth of the speed.
- **Temporal memory** (``temporal``, video): each frame is coded as its patch embeddings pooled to
  ``temporal_grid`` x ``temporal_grid`` cells and projected on the ``temporal_dims`` principal components of
  normal cells (fitted on the training videos); the code and its change since the previous frame go through
  the shared core (``queue`` memory, causal), whose head predicts the *next change* of every cell and its
  log-energy (how much the cell moves: a hedged mean change of 0 would make a stopped belt look normal) as
  Gaussians (mean and log-variance). The temporal score is the worst cell's negative log-likelihood,
  standardised: a frame is judged against what this stream has been doing (the belt has stopped, the light
  is stuck): normal in appearance, wrong at this moment. The variance lets the model say which changes it can
  foresee from the stream's past (a blinking light's next toggle, once it has seen the period) and which it
  cannot; without memory it must hedge.

Frames: (B, T, H, W, 3) uint8 RGB at ``image_size``. Thresholds are never part of the model: the decoder
calibrates them in the stream (:mod:`memstream.pipelines.anomaly_task`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from memstream.memory import CoreConfig, MemoryCore, reset_state
from memstream.memory.config import check_known_fields, requirement
from memstream.models.registry import register_model
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn

SCORES = ("fused", "reconstruction", "features", "position")
MAPS = ("reconstruction", "features", "position")  # the maps a model gives; SCORE_MAPS: which each score sums
SCORE_MAPS = {"fused": ("reconstruction", "features"), "reconstruction": ("reconstruction",),
              "features": ("features",), "position": ("position",)}
BANK_CHUNK = 8192  # bank rows one matrix product of the search takes in a static graph (export, compile)
# Eager, the search takes at most QUERY_BLOCK patches against as many bank rows as make EAGER_BLOCK distances (8 MB)
# at a time: a block that stays in the cache and whose memory is reused. All patches at once, 16 images' distances
# to 8192 entries are a 2 GB block, which the allocator maps fresh for every chunk and the kernel zero-fills page
# by page: that took 95 % of the search's time (8.5 s of system time in 9 s), the default scored 2.8x slower.
QUERY_BLOCK, EAGER_BLOCK = 2048, 2 ** 21
POSITION_SHRINK = 0.1  # covariance + 0.1 x its mean variance: 50 images cannot fill a full covariance


class AnomalyOutput(NamedTuple):
    anomaly_map: Tensor  # (B, T, H, W) the configured score map (standardised)
    image_score: Tensor  # (B, T) spatial score: the map's maximum
    temporal: Tensor     # (B, T) standardised next-frame prediction error (0 without temporal memory)
    score: Tensor        # (B, T) frame score: image_score + temporal


@dataclass(frozen=True)
class AnomalyConfig:
    """Hyper-parameters of :class:`AnomalyModel` (see the module docstring)."""

    image_size: int = 128
    patch: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    decoder_depth: int = 2
    decoder_levels: tuple[int, ...] = (1, 3)
    memory_slots: int = 32
    addressing: str = "none"
    memae_items: int = 64
    shrink: float = 0.02
    mask_ratio: float = 0.5
    score_masks: int = 4
    feature_level: int = 0
    features_from: str = "pixels"
    pixel_pool: tuple[int, ...] = (2,)
    pixel_patch: tuple[int, ...] = (4, 6)
    pixel_stride: int = 2
    light_sigma: float = 0.125
    colour_balance: bool = True
    bank_size: int = 65536
    bank_pick: str = "random"
    bank_dims: int = 24
    density_k: int = 5
    density_soft: float = 0.5
    score: str = "features"
    blur_sigma: float = 2.0
    position_dims: int = 16
    temporal: CoreConfig | None = None
    temporal_grid: int = 8
    temporal_dims: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_levels", tuple(self.decoder_levels))
        sizes, pools = self.pixel_patch, self.pixel_pool
        object.__setattr__(self, "pixel_patch", (sizes,) if isinstance(sizes, int) else tuple(sizes))
        pools = (pools,) if isinstance(pools, int) else tuple(pools)
        if len(set(pools)) == 1:  # one factor for every bank (also after replace(pixel_patch=...))
            pools = pools[:1] * len(self.pixel_patch)
        object.__setattr__(self, "pixel_pool", pools)

        need = requirement("AnomalyConfig")

        need(self.image_size % self.patch == 0,
             f"image_size={self.image_size} must be a multiple of patch={self.patch}")
        need(self.dim % self.heads == 0, f"dim={self.dim} must divide by heads={self.heads}")
        need(all(0 <= lv < self.depth for lv in self.decoder_levels) and self.decoder_levels,
             f"decoder_levels={self.decoder_levels} must name encoder blocks 0..{self.depth - 1}")
        need(0 <= self.feature_level <= self.depth, f"feature_level={self.feature_level} must be in 0 (the patch "
             f"embeddings)..{self.depth} (the last block)")
        need(self.features_from in ("pixels", "encoder"),
             f"features_from={self.features_from!r} must be 'pixels' or 'encoder'")
        if self.features_from == "pixels":
            banks = list(zip(self.pixel_patch, self.pixel_pool, strict=False))
            need(len(self.pixel_patch) >= 1 and len(set(banks)) == len(banks) == len(self.pixel_pool),
                 f"pixel_patch={self.pixel_patch} and pixel_pool={self.pixel_pool} must name one or more banks, "
                 "each a different (patch, pool) pair (pixel_pool: one factor for all or one per patch size)")
            need(self.pixel_stride >= 1, f"pixel_stride={self.pixel_stride} must be >= 1")
            for p, q in banks:
                pooled = self.image_size // max(q, 1)
                need(q >= 1 and self.image_size % q == 0 and pooled % self.pixel_stride == 0,
                     f"pixel_pool={q} must be >= 1 and divide image_size={self.image_size} into a size that "
                     f"pixel_stride={self.pixel_stride} divides")
                need(self.pixel_stride <= p < pooled and (p - self.pixel_stride) % 2 == 0
                     and (pooled - p) % self.pixel_stride == 0,
                     f"pixel_patch={p} must be pixel_stride={self.pixel_stride} plus an even amount and tile the "
                     f"pooled size {pooled} (the patches are centred on the map's cells)")
            need(0 <= self.light_sigma <= 0.3, f"light_sigma={self.light_sigma} must be in [0, 0.3]: a fraction "
                 "of the image side (0: no lighting normalisation)")
        need(self.addressing in ("none", "memae"), f"addressing={self.addressing!r} must be 'none' or 'memae'")
        need(0.0 < self.mask_ratio < 1.0, f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        need(self.score_masks >= 2 and self.tokens % self.score_masks == 0,
             f"score_masks={self.score_masks} must be >= 2 and divide the {self.tokens} patches")
        need(self.score in SCORES, f"score={self.score!r} must be one of {', '.join(SCORES)}")
        need(self.bank_size >= 1 and self.memory_slots >= 0, "bank_size must be >= 1, memory_slots >= 0")
        need(self.bank_pick in ("random", "coreset"), f"bank_pick={self.bank_pick!r} must be 'random' or 'coreset'")
        need(self.density_k >= 0 and self.density_soft > 0, f"density_k={self.density_k} must be >= 0 (0: plain "
             f"distances) and density_soft={self.density_soft} > 0")
        smallest = min(self.patch_dim(i) for i in range(len(self.patch_sizes)))
        need(0 <= self.bank_dims <= smallest, f"bank_dims={self.bank_dims} must be in 0..{smallest} "
             "(the patch features' size; 0: the bank holds them whole)")
        need(0 <= self.position_dims <= self.feature_dim,
             f"position_dims={self.position_dims} must be in 0..{self.feature_dim} (the patch features' size)")
        need(self.score != "position" or self.position_dims > 0, "score='position' needs position_dims > 0 (a "
             "checkpoint saved before the position statistics existed has none: train it again)")
        if self.temporal is not None:
            need(self.temporal.causal, "temporal core must be causal (it predicts the next frame)")
            need(self.grid % self.temporal_grid == 0 and 1 <= self.temporal_dims <= self.dim,
                 f"temporal_grid={self.temporal_grid} must divide the {self.grid}-patch grid and temporal_dims="
                 f"{self.temporal_dims} be in 1..{self.dim}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        """One per bank: the side of its pixel patches (pooled pixels); 0: the encoder's patch embeddings."""
        return self.pixel_patch if self.features_from == "pixels" else (0,)

    @property
    def patch_pools(self) -> tuple[int, ...]:
        """One per bank: the factor its image is average-pooled by before the patches are cut (1: none)."""
        return self.pixel_pool if self.features_from == "pixels" else (1,)

    def patch_grid(self, bank: int) -> int:
        """Side of the map's grid of bank ``bank``'s patch features."""
        size, pool = self.patch_sizes[bank], self.patch_pools[bank]
        return (self.image_size // pool - size) // self.pixel_stride + 1 if size else self.grid

    def patch_margin(self, bank: int) -> int:
        """Image pixels along each border that no cell's centre of bank ``bank`` covers (pixel patches lie
        inside the image: a zero-padded border patch has few look-alikes in the bank and would be scored as
        anomalous)."""
        size, pool = self.patch_sizes[bank], self.patch_pools[bank]
        return (size - self.pixel_stride) // 2 * pool if size else 0

    def patch_dim(self, bank: int) -> int:
        size = self.patch_sizes[bank]
        return 3 * size * size if size else self.dim

    @property
    def feature_grid(self) -> int:
        """Side of the grid of the first bank's patch features (also the position Gaussians')."""
        return self.patch_grid(0)

    @property
    def feature_margin(self) -> int:
        return self.patch_margin(0)

    @property
    def feature_dim(self) -> int:
        return self.patch_dim(0)

    @property
    def temporal_width(self) -> int:
        """Size of a frame's temporal code: cells x principal components."""
        return self.temporal_grid ** 2 * self.temporal_dims

    @property
    def temporal_target(self) -> int:
        """Size of what the temporal head predicts: every cell's change and log-energy."""
        return self.temporal_grid ** 2 * (self.temporal_dims + 1)

    @property
    def segment(self) -> int:
        return self.temporal.segment if self.temporal is not None else 1

    def replace(self, **changes) -> AnomalyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_levels"] = list(self.decoder_levels)
        d["pixel_patch"] = list(self.pixel_patch)
        d["pixel_pool"] = list(self.pixel_pool)
        d["temporal"] = self.temporal.to_dict() if self.temporal is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AnomalyConfig:
        check_known_fields(cls, d)
        temporal = CoreConfig.from_dict(d["temporal"]) if d.get("temporal") else None
        # Checkpoints saved before the position statistics (or the pixel features) existed have no such buffers.
        return cls(**{"position_dims": 0, "features_from": "encoder", "bank_pick": "coreset", "bank_dims": 0,
                      "density_k": 0, "colour_balance": False, "pixel_patch": 4,
                      **d,
                      "temporal": temporal})


class _Attention(nn.Module):
    """Multi-head attention of queries over keys/values, optionally with learned memory slots appended."""

    def __init__(self, dim: int, heads: int, slots: int = 0) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.slots = nn.Parameter(torch.randn(slots, dim) * 0.02) if slots else None

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B, N, D) queries, context: (B, M, D) -> (B, N, D)."""
        b, n, d = x.shape
        if self.slots is not None:
            context = torch.cat((context, self.slots.expand(b, -1, -1)), dim=1)
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _EncoderBlock(nn.Module):
    """Pre-norm block whose self-attention also reads the memory slots (MemMC-MAE)."""

    def __init__(self, dim: int, heads: int, slots: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, slots)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm2(x))


class _DecoderBlock(nn.Module):
    """Self-attention among the patch queries, then cross-attention to the encoder levels."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm_ctx, self.norm3 = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn, self.cross = _Attention(dim, heads), _Attention(dim, heads)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross(self.norm2(x), self.norm_ctx(context))
        return x + self.mlp(self.norm3(x))


class _MemAE(nn.Module):
    """MemAE addressing: softmax weights over memory items, hard shrinkage, re-normalised read."""

    def __init__(self, dim: int, items: int, shrink: float) -> None:
        super().__init__()
        self.items = nn.Parameter(torch.randn(items, dim) * 0.02)
        self.shrink = shrink

    def forward(self, z: Tensor) -> Tensor:
        w = torch.softmax(z @ self.items.t(), dim=-1)
        w = F.relu(w - self.shrink) * w / ((w - self.shrink).abs() + 1e-12)
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
        return w @ self.items


class _PatchBank(nn.Module):
    """A memory of normal patch features (PatchCore) and the search in it: ``size`` entries (a fixed-capacity
    buffer with a validity mask) on the features' ``dims`` principal components (0: whole), each with its
    neighbourhood size when ``density``. ``patch`` > 0: the bank of ``patch`` x ``patch`` pixel patches of the
    image average-pooled by ``pool``, which it cuts out itself; 0: features given whole (the encoder's patch
    embeddings)."""

    def __init__(self, feature_dim: int, size: int, dims: int, density: bool, patch: int = 0, pool: int = 1) -> None:
        super().__init__()
        self.dims, self.density, self.patch, self.pool = dims, density, patch, pool
        if patch:  # a convolution that copies each patch's pixels out: an exportable im2col
            c = 3 * patch * patch
            self.register_buffer("kernel", torch.eye(c).view(c, 3, patch, patch), persistent=False)
        # fitted on normal training data (memstream.pipelines.anomaly.fit_normality): saved with the weights
        if dims:
            self.register_buffer("center", torch.zeros(feature_dim))
            self.register_buffer("proj", torch.eye(feature_dim)[:, :dims].clone())
        self.register_buffer("entries", torch.zeros(size, dims or feature_dim))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        if density:
            self.register_buffer("scale", torch.ones(size))  # each entry's neighbourhood size

    def cut(self, image: Tensor, stride: int) -> Tensor:
        """(F, 3, H, W) normalised image -> (F, M, 3*p*p) the patches of the image pooled by ``pool``, centred on
        a grid of the given stride (in pooled pixels)."""
        if self.pool > 1:
            image = F.avg_pool2d(image, self.pool)  # also averages the sensor noise
        return F.conv2d(image, self.kernel, stride=stride).flatten(2).transpose(1, 2)

    def space(self, feats: Tensor) -> Tensor:
        """Patch features (..., D') -> the bank's space (..., ``dims``): their principal components on normal
        data. On pixel patches, 24 of 48 give the same image AUROC at half the search (the rest is mostly
        sensor noise)."""
        return (feats - self.center) @ self.proj if self.dims else feats

    def distance(self, feats: Tensor) -> Tensor:
        """Patch features (F, N, D') -> distance to the nearest entry (F, N), in units of its spread (if
        ``density``; see ``fit_bank_scale``); 0 where the bank is empty. Eager, in blocks of patches (see
        ``QUERY_BLOCK``); traced for export or compiled, all at once (the batch axis stays dynamic)."""
        queries = self.space(feats).flatten(0, 1)  # (F*N, dims)
        if torch.compiler.is_compiling():
            return self._nearest(queries, BANK_CHUNK).view(feats.shape[:2])
        rows = max(1, min(queries.shape[0], QUERY_BLOCK))
        chunk = min(BANK_CHUNK, max(1, EAGER_BLOCK // rows))
        return torch.cat([self._nearest(block, chunk) for block in queries.split(rows)]).view(feats.shape[:2])

    def _nearest(self, queries: Tensor, chunk: int) -> Tensor:
        """(M, dims) in the bank's space -> (M,) distance to the nearest entry (see ``distance``), ``chunk``
        entries at a time."""
        q2 = queries.pow(2).sum(-1)  # (M,)
        best, scale = None, None
        for lo in range(0, self.entries.shape[0], chunk):
            bank, valid = self.entries[lo:lo + chunk], self.valid[lo:lo + chunk]
            b2 = torch.where(valid, bank.pow(2).sum(-1), torch.full_like(valid, float("inf"), dtype=bank.dtype))
            d2 = torch.addmm(b2, queries, bank.t(), alpha=-2.0)  # (M, chunk) squared distance less |q|^2
            if not self.density:
                d2 = d2.amin(-1)
                best = d2 if best is None else torch.minimum(best, d2)
                continue
            d2, nearest = d2.min(-1)
            s = self.scale[lo:lo + chunk][nearest]
            closer = d2 < best if best is not None else None
            best = d2 if best is None else torch.where(closer, d2, best)
            scale = s if scale is None else torch.where(closer, s, scale)
        dist = (best + q2).clamp(min=0.0).sqrt()
        if scale is not None:  # in units of the nearest normal pattern's own spread
            dist = dist / scale
        return torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist))  # an empty bank scores 0


# checkpoints saved before the banks were modules held one bank in these buffers
_OLD_BANK_KEYS = {"bank_center": "center", "bank_proj": "proj", "bank": "entries", "bank_valid": "valid",
                  "bank_scale": "scale"}


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x ** 2) / (2 * sigma * sigma))
    return (g / g.sum()).view(1, 1, -1)


def _rename_old_bank_keys(module, state_dict, prefix, *_) -> None:
    for old, new in _OLD_BANK_KEYS.items():
        if prefix + old in state_dict:
            state_dict[f"{prefix}banks.0.{new}"] = state_dict.pop(prefix + old)


class AnomalyModel(nn.Module):
    """Frames -> anomaly maps and scores, streaming. See the module docstring.

    Streaming: ``out, state = model.step(x, state, reset, mask)`` with x: (B, T, H, W, 3) uint8 RGB,
    T = ``cfg.segment``; ``out`` is an :class:`AnomalyOutput`. Images: :meth:`score_images`.
    """

    def __init__(self, cfg: AnomalyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.dim, cfg.tokens
        self.embed = PatchEmbed(cfg.image_size, cfg.patch, 3, d)
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.blocks = nn.ModuleList(_EncoderBlock(d, cfg.heads, cfg.memory_slots) for _ in range(cfg.depth))
        self.memae = _MemAE(d, cfg.memae_items, cfg.shrink) if cfg.addressing == "memae" else None
        self.level_norm = nn.LayerNorm(d)
        self.query = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.decoder = nn.ModuleList(_DecoderBlock(d, cfg.heads) for _ in range(cfg.decoder_depth))
        self.head = nn.Linear(d, cfg.patch * cfg.patch * 3)
        # complementary scoring masks: a fixed permutation of the patches in score_masks groups
        groups = torch.randperm(n, generator=torch.Generator().manual_seed(0)).view(cfg.score_masks, -1)
        self.register_buffer("groups", groups, persistent=False)
        visible = torch.stack([torch.cat([groups[j] for j in range(cfg.score_masks) if j != k]).sort().values
                               for k in range(cfg.score_masks)])  # (K, N - N/K): fixed shapes, exportable
        self.register_buffer("visible", visible, persistent=False)
        self.register_buffer("blur", _gaussian_kernel(cfg.blur_sigma), persistent=False)
        fd, fn = cfg.feature_dim, cfg.feature_grid ** 2
        if cfg.features_from == "pixels":
            sigma = cfg.light_sigma * cfg.image_size
            self.register_buffer("light_blur", _gaussian_kernel(sigma) if cfg.light_sigma else
                                 torch.ones(1, 1, 1), persistent=False)
        self.banks = nn.ModuleList(_PatchBank(cfg.patch_dim(i), cfg.bank_size, cfg.bank_dims, cfg.density_k > 0, p, q)
                                   for i, (p, q) in enumerate(zip(cfg.patch_sizes, cfg.patch_pools, strict=True)))
        self.register_load_state_dict_pre_hook(_rename_old_bank_keys)
        # fitted on normal training data (memstream.pipelines.anomaly.fit_normality): saved with the weights
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))  # rec, feature, temporal mu/sd
        if cfg.position_dims:  # the per-position Gaussians (score "position")
            k = cfg.position_dims
            self.register_buffer("position_center", torch.zeros(fd))
            self.register_buffer("position_proj", torch.eye(fd)[:, :k].clone())  # principal components (D, k)
            self.register_buffer("position_mean", torch.zeros(fn, k))
            self.register_buffer("position_precision", torch.eye(k).repeat(fn, 1, 1))  # (N, k, k)
            self.register_buffer("position_stats", torch.tensor([0.0, 1.0]))
        if cfg.temporal is not None:
            t = cfg.temporal
            width = cfg.temporal_width
            # principal components of normal cells (fit_temporal_code), saved with the weights
            self.register_buffer("cell_mean", torch.zeros(d))
            self.register_buffer("cell_proj", torch.eye(d)[:, : cfg.temporal_dims].clone())
            target = cfg.temporal_target
            # variance floors: changes below ~0.05 and energy ratios below ~1.5x are codec noise, not events
            cells = cfg.temporal_grid ** 2
            self.register_buffer("log_var_floor", torch.cat((torch.full((cells * cfg.temporal_dims,), -6.0),
                                                             torch.full((cells,), -2.0))), persistent=False)
            self.frame_in = nn.Sequential(nn.LayerNorm(width + target), nn.Linear(width + target, t.dim))
            self.core = MemoryCore(t)
            self.predict = nn.Linear(t.dim, 2 * target)  # mean and log-variance of the next change and energy
            self._core_fields = tuple(self.core.init_state(1)._fields)
            fields = ("prev_pred", "prev_code", "prev_ok", *self._core_fields)
        else:
            self.core = None
            fields = ("frames_seen",)
        self.State = NamedTuple("AnomalyState", [(f, Tensor) for f in fields])

    def use_score(self, score: str) -> AnomalyModel:
        """Give ``score`` (one of ``SCORES``) from now on: every map is fitted by ``fit_normality``. Returns self."""
        self.cfg = self.cfg.replace(score=score)
        return self

    # -- state ---------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        cfg = self.cfg
        if self.core is None:
            return {"frames_seen": ((batch,), torch.int64)}
        width = cfg.temporal_width
        return {"prev_pred": ((batch, 2 * cfg.temporal_target), torch.float32),
                "prev_code": ((batch, width), torch.float32), "prev_ok": ((batch,), torch.bool),
                **self.core.state_spec(batch)}

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        spec = self.state_spec(batch)
        return self.State(**{k: torch.zeros(s, dtype=dt, device=device) for k, (s, dt) in spec.items()})

    # -- the masked autoencoder ----------------------------------------------------------------------
    def tokens(self, frames: Tensor) -> Tensor:
        """(F, H, W, 3) uint8 -> (F, N, D) patch tokens with positions."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.embed(x) + self.pos

    def patches(self, frames: Tensor) -> Tensor:
        """(F, H, W, 3) uint8 -> (F, N, p*p*3) pixel targets in [-0.5, 0.5]."""
        p, g = self.cfg.patch, self.cfg.grid
        x = frames.float() / 255.0 - 0.5
        return x.view(-1, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(x.shape[0], g * g, p * p * 3)

    def encode(self, tokens: Tensor) -> list[Tensor]:
        """(F, M, D) visible tokens -> the output of every encoder block."""
        levels = []
        x = tokens
        for block in self.blocks:
            x = block(x)
            levels.append(x)
        if self.memae is not None:
            levels[-1] = self.memae(levels[-1])
        return levels

    def reconstruct(self, tokens: Tensor, visible: Tensor) -> Tensor:
        """tokens (F, N, D), visible (F, M) int64 patch indices -> reconstructed patches (F, N, p*p*3)."""
        seen = tokens.gather(1, visible.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        levels = self.encode(seen)
        context = self.level_norm(torch.cat([levels[i] for i in self.cfg.decoder_levels], dim=1))
        q = self.query.expand(tokens.shape[0], -1, -1) + self.pos
        for block in self.decoder:
            q = block(q, context)
        return self.head(q)

    def grid_features(self, frames: Tensor, tokens: Tensor | None = None) -> list[Tensor]:
        """(F, H, W, 3) uint8, whole image visible -> per bank, (F, N_i, D_i) its patch features on the map's
        grid: N_i = ``patch_grid``**2 cells, D_i = ``patch_dim``."""
        if self.cfg.features_from == "pixels":
            image = self.pixel_image(frames)
            return [bank.cut(image, self.cfg.pixel_stride) for bank in self.banks]
        x = self.tokens(frames) if tokens is None else tokens
        for block in self.blocks[: self.cfg.feature_level]:
            x = block(x)
        return [x]

    def features(self, frames: Tensor, tokens: Tensor | None = None, image: Tensor | None = None) -> Tensor:
        """(F, H, W, 3) uint8 -> (F, N', D') the first bank's patch features on the map's grid (the position
        Gaussians'): N' = ``feature_grid``**2 cells, D' = ``feature_dim``. ``image``: ``pixel_image(frames)``
        when the caller has it already."""
        if self.cfg.features_from == "pixels":
            image = self.pixel_image(frames) if image is None else image
            return self.banks[0].cut(image, self.cfg.pixel_stride)
        return self.grid_features(frames, tokens)[0]

    def bank_features(self, frames: Tensor, image: Tensor | None = None) -> list[Tensor]:
        """(F, H, W, 3) uint8 normal images -> per bank, (F, M_i, D_i) its candidates. Pixel patches are taken
        at every offset (stride 1), so the bank holds each normal pattern at every phase against the map's
        grid: a texture's or a turned object's patch need not fall on the grid as it did in training.
        ``image``: ``pixel_image(frames)`` when the caller has it already."""
        if self.cfg.features_from == "pixels":
            image = self.pixel_image(frames) if image is None else image
            return [bank.cut(image, 1) for bank in self.banks]
        return self.grid_features(frames)

    def pixel_image(self, frames: Tensor) -> Tensor:
        """(F, H, W, 3) uint8 -> (F, 3, H, W) the colour-balanced, lighting-normalised image: what each bank
        pools (by its ``pixel_pool``) and cuts its pixel patches from. The features carry no learned weights:
        fifty normal images cannot train a backbone that beats the pixels themselves (in ``memstream bench
        anomaly``, the encoder's patch embeddings gave synthetic image AUROC 0.71 against these 0.9+)."""
        cfg = self.cfg
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        if cfg.colour_balance:
            # Grey world: each image's colour cast (the product's and the background's colour jitter, the
            # light's colour) cancels; a local stain barely moves an image's mean.
            x = x * (x.mean((1, 2, 3), keepdim=True) / x.mean((2, 3), keepdim=True).clamp(min=1e-3))
        if cfg.light_sigma:
            # Each image has its own gain and a gradient (MVTec's and any camera's lighting drift): divide by
            # the smooth luminance, which keeps a stain's colour but not the light on it.
            x = x / self._smooth(x.mean(1), self.light_blur).unsqueeze(1).clamp(min=1e-3)
        return x

    # -- maps ----------------------------------------------------------------------------------------
    def _smooth(self, m: Tensor, kernel: Tensor | None = None) -> Tensor:
        """(F, H, W) -> Gaussian-blurred (separable, reflect padding) by ``kernel`` (default: the maps' blur)."""
        k = self.blur if kernel is None else kernel
        r = k.shape[-1] // 2
        f, h, w = m.shape
        x = F.conv1d(F.pad(m.reshape(f * h, 1, w), (r, r), mode="reflect"), k).view(f, h, w)
        x = F.conv1d(F.pad(x.transpose(1, 2).reshape(f * w, 1, h), (r, r), mode="reflect"), k)
        return x.view(f, w, h).transpose(1, 2)

    def _upsample(self, grid_map: Tensor, margin: int = 0) -> Tensor:
        """(F, N) per cell of a square grid that tiles the image less ``margin`` pixels at each border ->
        (F, H, W), the border repeating the nearest cell."""
        g, s = math.isqrt(grid_map.shape[1]), self.cfg.image_size - 2 * margin
        x = F.interpolate(grid_map.view(-1, 1, g, g), size=(s, s), mode="bilinear", align_corners=False)
        return F.pad(x, (margin,) * 4, mode="replicate")[:, 0] if margin else x[:, 0]

    def reconstruction_map(self, frames: Tensor, tokens: Tensor) -> Tensor:
        """Squared error per pixel, each patch reconstructed while hidden (``score_masks`` passes) -> (F, H, W)."""
        cfg = self.cfg
        p, g = cfg.patch, cfg.grid
        target = self.patches(frames)
        f, n = target.shape[:2]
        error = torch.zeros(f, n, p * p, device=frames.device)
        for k in range(cfg.score_masks):
            hidden = self.groups[k]
            rec = self.reconstruct(tokens, self.visible[k].expand(f, -1))
            e = (rec[:, hidden] - target[:, hidden]).pow(2).view(f, -1, p * p, 3).mean(-1)  # (F, N/K, p*p)
            error = error.index_copy(1, hidden, e)
        return error.view(f, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(f, g * p, g * p)

    def feature_map(self, grids: list[Tensor]) -> Tensor:
        """Per bank, patch features (F, N_i, D_i) (``grid_features``) -> the mean over the banks of the
        nearest-neighbour distance to each, upsampled (F, H, W). Two patch sizes see different things: the
        small one thin lines and faint stains, the larger one a part's shape and context (a missing corner, a
        component gone); both on the pooled image, each alone gave synthetic mean image AUROC 0.944 / 0.942,
        their mean 0.954 (the 4x4 bank on the full-resolution image: see the model card)."""
        maps = [self._upsample(bank.distance(g), self.cfg.patch_margin(i))
                for i, (bank, g) in enumerate(zip(self.banks, grids, strict=True))]
        return torch.stack(maps).mean(0)

    def position_map(self, feats: Tensor) -> Tensor:
        """Patch features (F, N, D) -> Mahalanobis distance to the normal Gaussian of each position (F, H, W)."""
        x = (feats - self.position_center) @ self.position_proj - self.position_mean  # (F, N, k)
        quad = ((x.unsqueeze(-2) @ self.position_precision).squeeze(-2) * x).sum(-1)  # (F, N)
        return self._upsample(quad.clamp(min=0.0).sqrt(), self.cfg.feature_margin)

    def standardise(self, name: str, raw: Tensor) -> Tensor:
        """An unstandardised map of ``MAPS`` -> in units of its spread on held-out normal images."""
        s = self.position_stats if name == "position" else self.stats[{"reconstruction": 0, "features": 2}[name]:]
        return (raw - s[0]) / s[1]

    def spatial(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(F, H, W, 3) uint8 -> (standardised map (F, H, W), image score (F,), patch embeddings (F, N, D))."""
        maps, tokens = self.raw_maps(frames, SCORE_MAPS[self.cfg.score])
        parts = [self.standardise(name, m) for name, m in maps.items()]
        anomaly_map = parts[0]
        for part in parts[1:]:
            anomaly_map = anomaly_map + part
        return anomaly_map, anomaly_map.flatten(1).amax(1), tokens

    def raw_maps(self, frames: Tensor, which: tuple[str, ...] = MAPS) -> tuple[dict[str, Tensor], Tensor]:
        """Unstandardised smoothed maps (F, H, W) named in ``which`` (of ``MAPS``) and the patch embeddings
        (F, N, D), which also serve the temporal code."""
        tokens = self.tokens(frames)
        maps = {}
        if "reconstruction" in which:
            maps["reconstruction"] = self._smooth(self.reconstruction_map(frames, tokens))
        if "features" in which or "position" in which:
            grids = self.grid_features(frames, tokens)
            if "features" in which:
                maps["features"] = self._smooth(self.feature_map(grids))
            if "position" in which and self.cfg.position_dims:
                maps["position"] = self._smooth(self.position_map(grids[0]))
        return maps, tokens

    # -- temporal memory -----------------------------------------------------------------------------
    def cells(self, tokens: Tensor) -> Tensor:
        """Patch embeddings (F, N, D) -> mean of each temporal cell (F, G*G, D)."""
        cfg = self.cfg
        grid = tokens.transpose(1, 2).reshape(-1, cfg.dim, cfg.grid, cfg.grid)
        return F.adaptive_avg_pool2d(grid, cfg.temporal_grid).flatten(2).transpose(1, 2)

    def frame_code(self, tokens: Tensor) -> Tensor:
        """Patch embeddings (F, N, D) -> the frame's temporal code (F, G*G*P): cells on the principal components."""
        return ((self.cells(tokens) - self.cell_mean) @ self.cell_proj).flatten(1)

    def change_target(self, change: Tensor) -> Tensor:
        """Code changes (..., W) -> (..., W + G*G): the changes and every cell's log-energy."""
        cells = change.unflatten(-1, (self.cfg.temporal_grid ** 2, self.cfg.temporal_dims))
        return torch.cat((change, torch.log(cells.pow(2).mean(-1) + 1e-5)), dim=-1)

    def temporal_nll(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (..., 2V) means and log-variances, target (..., V) from :meth:`change_target` -> per-cell
        Gaussian NLL (..., G*G): the mean over the cell's change components plus its log-energy term."""
        cells, dims = self.cfg.temporal_grid ** 2, self.cfg.temporal_dims
        mean, log_var = pred.chunk(2, dim=-1)
        log_var = torch.maximum(log_var, self.log_var_floor).clamp(max=8.0)
        nll = 0.5 * ((target - mean).pow(2) * torch.exp(-log_var) + log_var)
        return nll[..., : cells * dims].unflatten(-1, (cells, dims)).mean(-1) + nll[..., cells * dims:]

    def temporal_pass(self, codes: Tensor, mask: Tensor, prev_pred: Tensor, prev_code: Tensor, prev_ok: Tensor,
                      core_state: NamedTuple | None) -> tuple[Tensor, Tensor, Tensor, NamedTuple | None]:
        """codes (B, T, W) of valid frames (mask (B, T)) after a stream's (prev_pred (B, 2V), prev_code (B, W),
        prev_ok (B,)) -> (per-cell NLL of each frame's change (B, T, G*G), ok (B, T): the frame had a valid
        predecessor, predictions (B, T, 2V), core state); ``core_state=None``: whole clips (forward_sequence).
        V = ``cfg.temporal_target``."""
        before_ok = torch.cat((prev_ok.unsqueeze(1), mask[:, :-1]), dim=1)
        ok = before_ok & mask
        before = torch.cat((prev_code.unsqueeze(1), codes[:, :-1]), dim=1)
        change = self.change_target(torch.where(ok.unsqueeze(-1), codes - before, torch.zeros_like(codes)))
        x = self.frame_in(torch.cat((codes, change), dim=-1))
        if core_state is None:
            y = self.core.forward_sequence(x, mask)
        else:
            y, core_state = self.core.step(x, core_state, None, mask)
        pred = self.predict(y)  # the NEXT frame's change and energy, (B, T, 2V)
        pred_before = torch.cat((prev_pred.unsqueeze(1), pred[:, :-1]), dim=1)
        return self.temporal_nll(pred_before, change), ok, pred, core_state

    # -- streaming -----------------------------------------------------------------------------------
    def _check(self, x: Tensor, where: str) -> None:
        s, t = self.cfg.image_size, self.cfg.segment
        if x.dim() != 5 or tuple(x.shape[1:]) != (t, s, s, 3) or x.dtype != torch.uint8:
            raise ValueError(f"AnomalyModel.{where}: frames of shape {tuple(x.shape)} {x.dtype}; the model takes "
                             f"(B, {t}, {s}, {s}, 3) uint8 RGB")

    def step(self, x: Tensor, state: NamedTuple, reset: Tensor | None = None,
             mask: Tensor | None = None) -> tuple[AnomalyOutput, NamedTuple]:
        """One segment of T frames for every stream -> (:class:`AnomalyOutput`, state)."""
        self._check(x, "step")
        b, t = x.shape[:2]
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if reset is not None:
            state = reset_state(state, reset)
        amap, image_score, tokens = self.spatial(x.flatten(0, 1))
        amap, image_score = amap.unflatten(0, (b, t)), image_score.view(b, t)
        if self.core is None:
            temporal = torch.zeros_like(image_score)
            new_state = self.State(state.frames_seen + mask.sum(1))
        else:
            s = self.stats
            codes = self.frame_code(tokens).view(b, t, -1)
            core_state = self.core.State(*state[3:])
            nll, ok, pred, core_state = self.temporal_pass(codes, mask, state.prev_pred, state.prev_code,
                                                           state.prev_ok, core_state)
            temporal = torch.where(ok, (nll.amax(-1) - s[4]) / s[5], torch.zeros_like(image_score))
            last = mask.long().sum(1).clamp(min=1) - 1
            keep = mask.any(1)
            rows = torch.arange(b, device=x.device)
            prev_pred = torch.where(keep.unsqueeze(-1), pred[rows, last], state.prev_pred)
            prev_code = torch.where(keep.unsqueeze(-1), codes[rows, last], state.prev_code)
            prev_ok = state.prev_ok | keep
            new_state = self.State(prev_pred, prev_code, prev_ok, *core_state)
        score = image_score + temporal
        return AnomalyOutput(amap, image_score, temporal, score), new_state

    def video_codes(self, x: Tensor) -> Tensor:
        """Frames (B, S, H, W, 3) uint8 -> temporal codes (B, S, W); no gradients (the spatial part is trained
        first, as a masked autoencoder, and frozen)."""
        with torch.no_grad():
            return self.frame_code(self.tokens(x.flatten(0, 1))).view(x.shape[0], x.shape[1], -1)

    def forward_codes(self, codes: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole clips of temporal codes (B, S, W) -> (per-cell NLL of each frame's change (B, S, G*G),
        ok (B, S)): the temporal training objective, equal to streaming from a fresh state."""
        if self.core is None:
            raise ValueError("AnomalyModel.forward_codes: the model has no temporal memory (temporal=None)")
        b, s, w = codes.shape
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=codes.device)
        nll, ok, _, _ = self.temporal_pass(codes, mask, codes.new_zeros(b, 2 * self.cfg.temporal_target),
                                           codes.new_zeros(b, w),
                                           torch.zeros(b, dtype=torch.bool, device=codes.device), None)
        return nll, ok

    def forward_sequence(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole clips x (B, S, H, W, 3) -> (raw temporal scores (B, S): the worst cell's NLL, ok (B, S))."""
        if self.core is None:
            raise ValueError("AnomalyModel.forward_sequence: the model has no temporal memory (temporal=None)")
        nll, ok = self.forward_codes(self.video_codes(x), mask)
        return nll.amax(-1), ok


# -- presets ----------------------------------------------------------------------------------------------
@register_model
def anomaly_small(**overrides) -> AnomalyModel:
    """128x128 images in 8x8 patches, width 128, 4 encoder blocks with 32 memory slots each, a 2-block decoder
    reading encoder levels 1 and 3; two 65,536-entry banks of normal pixel-patch features of the
    colour-balanced, lighting-normalised image (4x4 patches of the full-resolution image on a 63x63 grid, 6x6
    of the 2x-pooled one on a 30x30 grid, each kept as 24 principal components), distances in units of the
    nearest entry's spread (k = 5); for video, frames coded as 8x8 cells x 8 principal components and a causal
    width-128 core with a queue of 64 frames (segments of 4). Given ``pixel_patch`` without ``pixel_pool``,
    every bank pools by the config's default, 2."""
    if "pixel_patch" not in overrides:
        overrides.setdefault("pixel_pool", (1, 2))
    temporal = CoreConfig(dim=128, heads=4, layers=2, ff_mult=2, segment=4, memory="queue", memory_length=64,
                          causal=True, dropout=0.0)
    core_fields = {f.name for f in dataclasses.fields(CoreConfig)}
    if overrides.pop("no_temporal", False):
        temporal = None
    elif temporal is not None:
        temporal = temporal.replace(**{k.removeprefix("temporal_"): v for k, v in overrides.items()
                                       if k.startswith("temporal_") and k.removeprefix("temporal_") in core_fields})
    overrides = {k: v for k, v in overrides.items()
                 if not (k.startswith("temporal_") and k.removeprefix("temporal_") in core_fields)}
    return AnomalyModel(AnomalyConfig(temporal=temporal, **overrides))
