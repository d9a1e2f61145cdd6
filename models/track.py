"""Multi-object tracking with long-term track memory (MeMOTR lineage) on the shared memory core.

One step takes one frame and returns this frame's detections and, for each detection, the log-probability
that it continues each track or starts a new one. Assignment (Hungarian, scipy), birth, miss tolerance and
death are decided outside the graph by :class:`memstream.pipelines.track_decoder.TrackDecoder`, which
passes its decision for frame ``t-1`` in as ``assign`` with frame ``t``: the step first writes the matched
detections into their tracks' memory, then scores frame ``t``. So the exported step stays pure and
fixed-shape (``max_tracks`` slots with a validity mask, ``max_detections`` detections with a mask).

Per track slot (all in the state):

- **the core's queue memory**: each track is one stream of the shared core (batch axis = B x N); one
  token per observation (the matched detection's token) is written, nothing while the track is unseen, so
  the last ``memory_length`` observations survive any gap. The core's output is the track's query.
- **long memory** (MeMOTR): an exponential moving average of the track's appearance embedding, rate
  ``long_memory_rate`` (0.01), updated only from detections with score >= ``long_memory_conf``;
  **short memory**: the latest embedding; last box, velocity and frames since the last observation.

Association: track tokens (query, long and short memory, predicted box, gap) attend to the detection
tokens; a pair scorer on (track token x detection token, box geometry) gives a logit per pair, a
"new object" logit per detection, and a softmax over [tracks ; new] per detection.

Detections: ``detections="own"``: a CenterNet-style head (heatmap, size, offset at stride 4) on a timm
backbone (random init: never a download), top ``max_detections`` peaks; ``"public"``: boxes given per
frame (MOTChallenge ``det.txt``), each with an appearance embedding pooled from the same feature map.
Without images (``appearance=False``, e.g. MOT15 boxes only) a learned "no appearance" embedding is used:
training drops appearance now and then so the model also tracks on boxes alone.

Boxes are normalised to the image: ``(x1, y1, x2, y2)`` in [0, 1]. Frames: (B, 1, H, W, 3) uint8 RGB
at ``image_size``; the runtime resizes. :meth:`TrackModel.forward_sequence` runs the same per-frame step
over a clip after one batched backbone pass (training), so streaming equals sequence by construction (tested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from memstream.memory import CoreConfig, MemoryCore, reset_state
from memstream.memory.config import check_known_fields, requirement
from memstream.models.registry import register_model
from torch import Tensor, nn

NEG = -1e4  # additive mask: finite, so a row with no candidate never turns into NaN
ASSIGN_NONE, ASSIGN_REMOVE = -1, -2  # assign values besides a detection index


class TrackOutput(NamedTuple):
    det_box: Tensor    # (B, K, 4) x1, y1, x2, y2 normalised to the image
    det_score: Tensor  # (B, K) detection confidence
    det_valid: Tensor  # (B, K) bool
    logp: Tensor       # (B, K, N + 1) log P(detection continues track slot i | new object at index N)
    track_box: Tensor  # (B, N, 4) each slot's predicted box for this frame (x1, y1, x2, y2)


@dataclass(frozen=True)
class TrackConfig:
    """Hyper-parameters of :class:`TrackModel`.

    Attributes:
        core: the shared core; ``segment`` must be 1 (one observation per step and track).
        image_size: (H, W) the frames are resized to.
        backbone: timm model with ``features_only`` support; strides 4, 8 and 16 are fused.
        neck_dim: channels of the fused stride-4 feature map.
        embed_dim: width E of appearance embeddings (long and short memory).
        max_tracks: track slots N per stream (the exported state's fixed size).
        max_detections: detections K per frame (own: top-K peaks; public: padded/truncated to K).
        detections: ``own`` (the heatmap head) or ``public`` (boxes given per frame).
        long_memory_rate: MeMOTR's lambda for the long memory's moving average.
        long_memory_conf: detections below this score do not update the long memory.
        motion_horizon: the predicted box extrapolates the velocity at most this many frames.
        min_score: own detections below this heatmap score are invalid.
    """

    core: CoreConfig
    image_size: tuple[int, int] = (192, 256)
    backbone: str = "mobilenetv3_small_100"
    neck_dim: int = 48
    embed_dim: int = 64
    max_tracks: int = 32
    max_detections: int = 32
    detections: str = "own"
    long_memory_rate: float = 0.01
    long_memory_conf: float = 0.5
    motion_horizon: int = 10
    min_score: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))

        need = requirement("TrackConfig")

        need(self.core.segment == 1, f"core.segment={self.core.segment} must be 1 (one observation per step)")
        need(len(self.image_size) == 2 and all(isinstance(v, int) and v >= 32 and v % 16 == 0
                                                for v in self.image_size),
             f"image_size={self.image_size!r} must be (H, W), multiples of 16, >= 32")
        need(timm.is_model(self.backbone), f"backbone={self.backbone!r} is not a timm model name")
        need(self.detections in ("own", "public"), f"detections={self.detections!r} must be 'own' or 'public'")
        need(self.max_tracks >= 1 and self.max_detections >= 1,
             f"max_tracks={self.max_tracks}, max_detections={self.max_detections} must be >= 1")
        need(0.0 < self.long_memory_rate <= 1.0, f"long_memory_rate={self.long_memory_rate} must be in (0, 1]")
        need(self.neck_dim > 0 and self.embed_dim > 0, "neck_dim and embed_dim must be positive")
        need(self.motion_horizon >= 1, f"motion_horizon={self.motion_horizon} must be >= 1")

    @property
    def segment(self) -> int:
        """Frames per step: one."""
        return 1

    def replace(self, **changes) -> TrackConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["core"] = self.core.to_dict()
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrackConfig:
        check_known_fields(cls, d)
        return cls(**{**d, "core": CoreConfig.from_dict(d["core"])})


# -- boxes ------------------------------------------------------------------------------------------------
def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    return torch.stack(((b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]), dim=-1)


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    half = b[..., 2:] / 2
    return torch.cat((b[..., :2] - half, b[..., :2] + half), dim=-1)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """a: (..., N, 4), b: (..., K, 4) x1y1x2y2 -> (..., N, K) IoU."""
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda t: (t[..., 2] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def box_features(b: Tensor) -> Tensor:
    """(..., 4) cx, cy, w, h -> (..., 6) with log sizes (scale-free inputs for the token MLPs)."""
    wh = b[..., 2:].clamp(min=1e-4)
    return torch.cat((b, wh.log() / 4), dim=-1)


# -- blocks -----------------------------------------------------------------------------------------------
class _Detector(nn.Module):
    """timm backbone (strides 4, 8, 16 fused to stride 4) -> CenterNet heads; RoI embeddings of any boxes."""

    GRID = ((-0.25, -0.35), (0.25, -0.35), (-0.25, -0.1), (0.25, -0.1), (-0.25, 0.15), (0.25, 0.15),
            (-0.25, 0.38), (0.25, 0.38))  # sample points in box units (x, y): tall objects get 4 rows

    def __init__(self, cfg: TrackConfig) -> None:
        super().__init__()
        self.backbone = timm.create_model(cfg.backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3))
        if list(self.backbone.feature_info.reduction()) != [4, 8, 16]:
            raise ValueError(f"TrackConfig: backbone={cfg.backbone!r} does not give strides 4, 8, 16 at "
                             f"out_indices (1, 2, 3): {self.backbone.feature_info.reduction()}")
        data = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(data.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
                             persistent=False)
        c = cfg.neck_dim
        self.lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in self.backbone.feature_info.channels())
        self.smooth = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.heat = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1))
        self.size = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, 4, 1))
        nn.init.constant_(self.heat[-1].bias, -2.19)  # CenterNet's prior: sigmoid = 0.1
        nn.init.zeros_(self.size[-1].weight)
        nn.init.constant_(self.size[-1].bias, 0.0)
        self.register_buffer("grid", torch.tensor(self.GRID), persistent=False)
        self.embed = nn.Sequential(nn.Linear(c * len(self.GRID), 128), nn.ReLU(inplace=True),
                                   nn.Linear(128, cfg.embed_dim), nn.LayerNorm(cfg.embed_dim))

    def features(self, frames: Tensor) -> Tensor:
        """(F, H, W, 3) uint8 RGB -> (F, C, H/4, W/4) fused feature map."""
        x = (frames.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        f4, f8, f16 = (lat(f) for lat, f in zip(self.lateral, self.backbone(x), strict=True))
        f8 = f8 + F.interpolate(f16, size=f8.shape[-2:], mode="nearest")
        return self.smooth(f4 + F.interpolate(f8, size=f4.shape[-2:], mode="nearest"))

    def heads(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        """-> heat logits (F, 1, h, w), size/offset (F, 4, h, w): log w, log h (image fractions), dx, dy logits."""
        return self.heat(fmap), self.size(fmap)

    def decode(self, heat: Tensor, size: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k heatmap peaks -> boxes (F, k, 4) cxcywh normalised, scores (F, k)."""
        n, _, h, w = heat.shape
        prob = torch.sigmoid(heat)
        peaks = prob * (F.max_pool2d(prob, 3, stride=1, padding=1) == prob).float()
        scores, index = peaks.flatten(1).topk(k, dim=1)  # (F, k)
        ys, xs = (index // w).float(), (index % w).float()
        s = size.flatten(2).gather(2, index.unsqueeze(1).expand(n, 4, k))  # (F, 4, k)
        cx = (xs + torch.sigmoid(s[:, 2])) / w
        cy = (ys + torch.sigmoid(s[:, 3])) / h
        bw, bh = s[:, 0].clamp(-6, 1).exp() * 0.1, s[:, 1].clamp(-6, 1).exp() * 0.1
        return torch.stack((cx, cy, bw, bh), dim=-1), scores

    def embeddings(self, fmap: Tensor, boxes: Tensor) -> Tensor:
        """fmap (F, C, h, w), boxes (F, K, 4) cxcywh normalised -> (F, K, E) appearance embeddings."""
        pts = boxes[..., None, :2] + boxes[..., None, 2:] * self.grid  # (F, K, G, 2) in [0, 1]
        sampled = F.grid_sample(fmap, pts * 2 - 1, mode="bilinear", padding_mode="border", align_corners=False)
        return self.embed(sampled.permute(0, 2, 3, 1).flatten(2))  # (F, C, K, G) -> (F, K, G * C)


class _Associator(nn.Module):
    """Track tokens attend to detection tokens; pair scorer + new-object logit -> (B, K, N + 1) log-probs."""

    def __init__(self, cfg: TrackConfig) -> None:
        super().__init__()
        d, e = cfg.core.dim, cfg.embed_dim
        self.track_in = nn.Sequential(nn.Linear(d + 2 * e + 6 + 1, d), nn.GELU(), nn.Linear(d, d))
        self.heads = cfg.core.heads
        self.norm_t, self.norm_d = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.pair = nn.Sequential(nn.Linear(d + 6, d), nn.GELU(), nn.Linear(d, 1))
        self.new = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def _read(self, t: Tensor, det: Tensor, det_valid: Tensor) -> Tensor:
        """Tracks read the detections (who is around). t: (B, N, d), det: (B, K, d) -> (B, N, d)."""
        b, n, d = t.shape
        k = det.shape[1]
        h = self.heads
        q = self.q(self.norm_t(t)).view(b, n, h, d // h).transpose(1, 2)
        key, value = self.kv(self.norm_d(det)).view(b, k, 2, h, d // h).permute(2, 0, 3, 1, 4)
        any_det = det_valid.any(1)  # a frame without detections reads nothing (zeroed below, never NaN)
        allowed = (det_valid | ~any_det.unsqueeze(1)).view(b, 1, 1, k).expand(b, 1, n, k)
        ctx = F.scaled_dot_product_attention(q, key, value, attn_mask=allowed)
        return self.o(ctx.transpose(1, 2).reshape(b, n, d)) * any_det.view(b, 1, 1)

    def forward(self, track: Tensor, track_valid: Tensor, pred: Tensor, gap: Tensor, det: Tensor, det_box: Tensor,
                det_valid: Tensor) -> Tensor:
        """track (B, N, d+2E) query/long/short, pred (B, N, 4) cxcywh, gap (B, N) frames since last seen,
        det (B, K, d) tokens, det_box (B, K, 4) cxcywh -> logp (B, K, N + 1)."""
        elapsed = torch.log1p(gap + 1).unsqueeze(-1) / 4
        t = self.track_in(torch.cat((track, box_features(pred), elapsed), dim=-1))  # (B, N, d)
        t = t + self._read(t, det, det_valid)
        iou = pairwise_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(det_box))  # (B, N, K)
        ps, ds = pred.unsqueeze(2), det_box.unsqueeze(1)  # (B, N, 1, 4), (B, 1, K, 4)
        scale = ps[..., 2:].clamp(min=1e-3)
        geometry = torch.cat((iou.unsqueeze(-1), ((ds[..., :2] - ps[..., :2]) / scale).clamp(-8, 8) / 4,
                              (ds[..., 2:].clamp(min=1e-4) / scale).log().clamp(-4, 4),
                              elapsed.unsqueeze(2).expand(-1, -1, det.shape[1], -1)), dim=-1)  # (B, N, K, 6)
        pair = self.pair(torch.cat((t.unsqueeze(2) * det.unsqueeze(1), geometry), dim=-1)).squeeze(-1)
        pair = pair.masked_fill(~track_valid.unsqueeze(-1), NEG).transpose(1, 2)  # (B, K, N)
        logits = torch.cat((pair, self.new(det)), dim=-1)
        return torch.log_softmax(logits, dim=-1)


class TrackModel(nn.Module):
    """Frames (+ optional public detections) -> detections and their association log-probs; streaming.

    Args:
        cfg: :class:`TrackConfig`.

    Streaming: ``out, state = model.step(x, state, reset, mask, assign=..., dets=...)`` with x: (B, 1, H, W, 3)
    uint8 RGB, assign: (B, N) int64 (the decoder's decision for the previous frame's detections: detection
    index, -1 unmatched, -2 remove the track), dets: (B, K, 6) x1, y1, x2, y2, score, valid (``public`` only).
    ``out`` is a :class:`TrackOutput`.
    """

    OWN = ("track_box", "track_vel", "track_long", "track_short", "track_query", "track_gap", "track_valid",
           "prev_token", "prev_emb", "prev_box", "prev_score", "prev_valid")

    def __init__(self, cfg: TrackConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.core.dim, cfg.embed_dim
        self.detector = _Detector(cfg)
        self.no_appearance = nn.Parameter(torch.zeros(e))
        self.det_token = nn.Sequential(nn.Linear(e + 6 + 1, d), nn.GELU(), nn.Linear(d, d))
        self.core = MemoryCore(cfg.core)
        self.associate = _Associator(cfg)
        self._core_fields = tuple(self.core.init_state(1)._fields)
        self.State = NamedTuple("TrackState", [(f, Tensor) for f in self.OWN + tuple(f"core_{f}"
                                                                                    for f in self._core_fields)])

    # -- state ---------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        cfg = self.cfg
        n, k, d, e = cfg.max_tracks, cfg.max_detections, cfg.core.dim, cfg.embed_dim
        f32 = torch.float32
        spec = {"track_box": ((batch, n, 4), f32), "track_vel": ((batch, n, 4), f32),
                "track_long": ((batch, n, e), f32), "track_short": ((batch, n, e), f32),
                "track_query": ((batch, n, d), f32), "track_gap": ((batch, n), f32),
                "track_valid": ((batch, n), torch.bool), "prev_token": ((batch, k, d), f32),
                "prev_emb": ((batch, k, e), f32), "prev_box": ((batch, k, 4), f32), "prev_score": ((batch, k), f32),
                "prev_valid": ((batch, k), torch.bool)}
        for name, (shape, dtype) in self.core.state_spec(batch * n).items():
            spec[f"core_{name}"] = ((batch, n, *shape[1:]), dtype)
        return spec

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        spec = self.state_spec(batch)
        return self.State(**{k: torch.zeros(s, dtype=dt, device=device) for k, (s, dt) in spec.items()})

    # -- pieces --------------------------------------------------------------------------------------
    def _check_frames(self, x: Tensor, where: str) -> None:
        h, w = self.cfg.image_size
        if x.dim() != 5 or tuple(x.shape[2:]) != (h, w, 3) or x.dtype != torch.uint8:
            raise ValueError(f"TrackModel.{where}: frames of shape {tuple(x.shape)} {x.dtype}; the model takes "
                             f"(B, T, {h}, {w}, 3) uint8 RGB")

    def _detections(self, fmap: Tensor | None, dets: Tensor | None, heads: tuple[Tensor, Tensor] | None,
                    drop: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> boxes (F, K, 4) cxcywh, scores (F, K), valid (F, K), embeddings (F, K, E)."""
        cfg = self.cfg
        if dets is not None:
            boxes, scores, valid = xyxy_to_cxcywh(dets[..., :4]), dets[..., 4], dets[..., 5] > 0.5
        else:
            if heads is None:
                raise ValueError("TrackModel: own detections need frames (appearance=True) or give dets")
            boxes, scores = self.detector.decode(*heads, cfg.max_detections)
            valid = scores >= cfg.min_score
        if fmap is None:
            emb = self.no_appearance.expand(boxes.shape[0], boxes.shape[1], -1)
        else:
            emb = self.detector.embeddings(fmap, boxes)
            if drop is not None:  # training: some clips on boxes alone
                emb = torch.where(drop.view(-1, 1, 1), self.no_appearance.expand_as(emb), emb)
        return boxes, scores, valid, emb

    def _tokens(self, emb: Tensor, boxes: Tensor, scores: Tensor) -> Tensor:
        return self.det_token(torch.cat((emb, box_features(boxes), scores.unsqueeze(-1)), dim=-1))

    def _update(self, st: dict, assign: Tensor, memory: bool = True) -> dict:
        """Write the previous frame's matched detections into their tracks (box, velocity, memories, core).
        ``memory=False`` (an ablation at inference): each track keeps only its last observation."""
        cfg = self.cfg
        b, n = assign.shape
        removed = assign == ASSIGN_REMOVE
        index = assign.clamp(min=0)
        prev_ok = st["prev_valid"].gather(1, index)
        matched = (assign >= 0) & prev_ok
        born = matched & ~st["track_valid"]

        def pick(t: Tensor) -> Tensor:  # (B, K, ...) -> (B, N, ...) the assigned detection's entry
            shape = (b, n) + t.shape[2:]
            return t.gather(1, index.view(b, n, *([1] * (t.dim() - 2))).expand(shape))

        obs_token, obs_emb, obs_box, obs_score = (pick(st[f]) for f in ("prev_token", "prev_emb", "prev_box",
                                                                         "prev_score"))
        m, bn, rm = matched.unsqueeze(-1), born.unsqueeze(-1), removed.unsqueeze(-1)
        gap = st["track_gap"]
        velocity = (obs_box - st["track_box"]) / (gap + 1).unsqueeze(-1)
        vel = torch.where(bn, 0.0, torch.where(m, 0.5 * st["track_vel"] + 0.5 * velocity, st["track_vel"]))
        rate = cfg.long_memory_rate
        confident = m & (obs_score >= cfg.long_memory_conf).unsqueeze(-1)
        moved = (1 - rate) * st["track_long"] + rate * obs_emb
        long = torch.where(bn if memory else m, obs_emb, torch.where(confident, moved, st["track_long"]))
        valid = (st["track_valid"] | born) & ~removed
        out = dict(st)
        out["track_box"] = torch.where(m, obs_box, st["track_box"]).masked_fill(rm, 0.0)
        out["track_vel"] = vel.masked_fill(rm, 0.0)
        out["track_long"] = long.masked_fill(rm, 0.0)
        out["track_short"] = torch.where(m, obs_emb, st["track_short"]).masked_fill(rm, 0.0)
        out["track_gap"] = torch.where(matched | ~valid, 0.0, gap + 1)
        out["track_valid"] = valid
        # The core: one stream per track slot; only matched slots take a step (unseen tracks keep their memory).
        core_state = self.core.State(*(st[f"core_{f}"].flatten(0, 1) for f in self._core_fields))
        core_state = reset_state(core_state, (born | removed | (matched if not memory else removed)).flatten())
        y, stepped = self.core.step(obs_token.flatten(0, 1).unsqueeze(1), core_state)
        flat = matched.flatten()
        for f, old, new in zip(self._core_fields, core_state, stepped, strict=True):
            sel = flat.view(-1, *([1] * (old.dim() - 1)))
            # Bool fields use logic ops: ONNX Runtime's CPU Where has no bool kernel.
            keep = (new & sel) | (old & ~sel) if old.dtype == torch.bool else torch.where(sel, new, old)
            out[f"core_{f}"] = keep.view(b, n, *keep.shape[1:])
        query = torch.where(m, y.view(b, n, -1), st["track_query"]).masked_fill(rm, 0.0)
        out["track_query"] = query
        return out

    def _frame(self, st: dict, fmap: Tensor | None, heads, dets: Tensor | None, valid_frame: Tensor,
               assign: Tensor, drop: Tensor | None = None, memory: bool = True) -> tuple[TrackOutput, dict]:
        """One frame for every stream: apply ``assign``, detect, associate. fmap: (B, C, h, w) or None."""
        cfg = self.cfg
        st = self._update(st, assign, memory)
        boxes, scores, valid, emb = self._detections(fmap, dets, heads, drop)
        valid = valid & valid_frame.unsqueeze(-1)
        tokens = self._tokens(emb, boxes, scores)
        horizon = (st["track_gap"] + 1).clamp(max=cfg.motion_horizon).unsqueeze(-1)
        pred = st["track_box"] + st["track_vel"] * horizon
        pred = torch.cat((pred[..., :2].clamp(-0.25, 1.25), pred[..., 2:].clamp(min=1e-3)), dim=-1)
        track = torch.cat((st["track_query"], st["track_long"], st["track_short"]), dim=-1)
        logp = self.associate(track, st["track_valid"], pred, st["track_gap"], tokens, boxes, valid)
        st = {**st, "prev_token": tokens, "prev_emb": emb, "prev_box": boxes, "prev_score": scores,
              "prev_valid": valid}
        out = TrackOutput(cxcywh_to_xyxy(boxes), scores, valid, logp, cxcywh_to_xyxy(pred))
        return out, st

    # -- streaming -----------------------------------------------------------------------------------
    def step(self, x: Tensor, state: NamedTuple, reset: Tensor | None = None, mask: Tensor | None = None,
             assign: Tensor | None = None, dets: Tensor | None = None, appearance: bool = True,
             memory: bool = True) -> tuple[TrackOutput, NamedTuple]:
        """One frame for every stream. x: (B, 1, H, W, 3) uint8; see the class docstring for the rest."""
        out, state = self.forward_sequence(x, None if assign is None else assign.unsqueeze(1),
                                           None if dets is None else dets.unsqueeze(1), mask, state, reset,
                                           appearance, memory=memory)
        return TrackOutput(*(t.squeeze(1) for t in out)), state

    def forward_sequence(self, x: Tensor, assign: Tensor | None = None, dets: Tensor | None = None,
                         mask: Tensor | None = None, state: NamedTuple | None = None, reset: Tensor | None = None,
                         appearance: bool = True, fmaps: Tensor | None = None,
                         drop_appearance: Tensor | None = None, memory: bool = True) -> tuple[TrackOutput, NamedTuple]:
        """A clip: one batched backbone pass, then the per-frame step. Teacher forcing = giving ``assign``.

        Args:
            x: (B, S, H, W, 3) uint8 frames (with ``appearance=False`` only the shape's (B, S) is used).
            assign: (B, S, N) int64, entry t is the decision for frame t-1's detections (-1: none).
            dets: (B, S, K, 6) public detections, or None for own detections.
            mask: (B, S) bool valid frames. state/reset: continue from a state (default: empty).
            fmaps: (B, S, C, h, w) feature maps already computed from x (training shares one backbone pass).
            drop_appearance: (B,) bool clips tracked on boxes alone (training).
            memory: False cuts each track's memory to its last observation (inference ablation).
        Returns outputs with a time axis ((B, S, K, 4), ...) and the state after the last frame.
        """
        cfg = self.cfg
        b, s = x.shape[:2]
        n, k = cfg.max_tracks, cfg.max_detections
        if appearance:
            self._check_frames(x, "forward_sequence")
        if dets is None and cfg.detections == "public":
            raise ValueError("TrackModel: detections='public' needs dets (B, T, K, 6) per frame")
        if dets is not None and tuple(dets.shape) != (b, s, k, 6):
            raise ValueError(f"TrackModel: dets of shape {tuple(dets.shape)}; expected ({b}, {s}, {k}, 6): "
                             "x1, y1, x2, y2, score, valid per detection, padded to max_detections")
        if state is None:
            state = self.init_state(b, x.device)
        if reset is not None:
            state = reset_state(state, reset)
        if assign is None:
            assign = torch.full((b, s, n), ASSIGN_NONE, dtype=torch.long, device=x.device)
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        heads = None
        if appearance and fmaps is None:
            fmaps = self.detector.features(x.flatten(0, 1)).unflatten(0, (b, s))  # (B, S, C, h, w)
        if fmaps is not None and dets is None:
            heads = tuple(h.unflatten(0, (b, s)) for h in self.detector.heads(fmaps.flatten(0, 1)))
        if not appearance:
            fmaps = None
        st = state._asdict()
        outs = []
        for i in range(s):
            out, st = self._frame(st, None if fmaps is None else fmaps[:, i],
                                  None if heads is None else (heads[0][:, i], heads[1][:, i]),
                                  None if dets is None else dets[:, i], mask[:, i], assign[:, i], drop_appearance,
                                  memory)
            outs.append(out)
        stacked = TrackOutput(*(torch.stack(t, dim=1) for t in zip(*outs, strict=True)))
        return stacked, self.State(**st)


# -- presets ----------------------------------------------------------------------------------------------
def _config(core: CoreConfig, overrides: dict) -> TrackConfig:
    core_fields = {f.name for f in dataclasses.fields(CoreConfig)}
    core = core.replace(**{k: v for k, v in overrides.items() if k in core_fields})
    return TrackConfig(core=core, **{k: v for k, v in overrides.items() if k not in core_fields})


@register_model
def track_small(**overrides) -> TrackModel:
    """192x256 frames through MobileNetV3-small (strides 4-16 fused, CenterNet heads, 64-d RoI embeddings);
    each of 32 track slots is a stream of a width-64, 2-layer core with a queue of its last 16 observations
    (bundled)."""
    core = CoreConfig(dim=64, heads=4, layers=2, ff_mult=2, segment=1, memory="queue", memory_length=16,
                      dropout=0.0)
    return TrackModel(_config(core, overrides))
