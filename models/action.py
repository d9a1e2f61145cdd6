"""Online temporal action localization (MATR lineage): per-frame tokens, the memory core, MATR's heads.

One step takes a segment of ``T`` frames (or precomputed per-frame features) and returns, per frame:

- ``class_probs``: background + C classes (per-frame online detection comes for free);
- ``end_prob``: the end detector, "an action ends at this frame";
- ``start_prob``: "an action starts at this frame"; it decides what the boundary queue keeps;
- ``start_back`` / ``start_conf``: the start estimate, made by attending over the **boundary queue**
  (start candidates of past segments) and the current segment, as frames back from this frame.

Memory comes in two parts, both fixed-size and both in the state:

- the core's ``queue`` memory with MATR's selective write: a learned flag per segment decides whether
  the segment's keys/values are kept (trained to keep segments that contain action), so the context of
  a long action survives long background stretches;
- the boundary queue: per segment, the frame with the highest start score is a candidate; when its score
  says "start" it is written (its start key and stream position) into a FIFO of ``start_memory`` slots.
  The start of an action far longer than any window is then one attention read away, whatever the
  action's length; a window-only model (``memory="none"``, ``start_memory=0``) can only point inside its
  segment.

Frames: (B, T, H, W, 3) uint8 RGB at ``image_size``; a timm backbone (random init, or a user's local weights
via :func:`load_backbone_weights`) sees each frame plus its difference from the previous frame (``motion``;
the previous frame is carried in the state), one token per frame. Features: (B, T, C) float32.
Streaming segment by segment equals :meth:`ActionModel.forward_sequence` (tested).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from memstream.memory import CoreConfig, MemoryCore, reset_state
from memstream.memory.config import check_known_fields, requirement
from memstream.models.registry import register_model
from torch import Tensor, nn

BACKGROUND = "background"
# The classes of `memstream data synth-actions` (its default six), the bundled model's.
SYNTH_CLASSES: tuple[str, ...] = ("wave", "bounce", "circle", "spin", "pulse", "zigzag")
THUMOS14_CLASSES: tuple[str, ...] = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot",
    "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump", "JavelinThrow", "LongJump", "PoleVault",
    "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)
NEG = -1e4  # additive mask: finite, so a row with no candidate never turns into NaN


class ActionOutput(NamedTuple):
    class_probs: Tensor  # (B, T, 1 + C) softmax; index 0 is background
    end_prob: Tensor     # (B, T) an action ends at this frame
    start_prob: Tensor   # (B, T) an action starts at this frame
    start_back: Tensor   # (B, T) float32 frames from the estimated start to this frame (>= 0)
    start_conf: Tensor   # (B, T) attention weight of that start candidate


class ActionLogits(NamedTuple):
    """Training view of a whole sequence (see :meth:`ActionModel.forward_sequence`)."""

    class_logits: Tensor   # (B, S, 1 + C)
    end_logit: Tensor      # (B, S)
    start_logit: Tensor    # (B, S)
    pointer: Tensor        # (B, S, N + T) start-candidate log-probabilities (N = S / T boundary entries)
    candidate_pos: Tensor  # (B, S, N + T) int64 stream position of each candidate
    candidate_ok: Tensor   # (B, S, N + T) bool candidates the frame may point at
    gate_logit: Tensor     # (B, N) the core's write flag per segment (0 when the core has no gate)
    outputs: ActionOutput  # what streaming returns, frame by frame


@dataclass(frozen=True)
class ActionConfig:
    """Hyper-parameters of :class:`ActionModel`.

    Attributes:
        core: the memory core; ``core.segment`` frames per segment. MATR: ``memory="queue"``, ``write_gate``.
        classes: action class names (background is implicit, index 0 of the class output).
        input: ``frames`` (RGB frames through the backbone) or ``features`` (precomputed (T, C) per video).
        fps: frames per second the model samples (sources are resampled to it).
        image_size: frames are resized to ``image_size`` x ``image_size``.
        backbone: a timm model name (built with ``pretrained=False``: never a download).
        motion: the backbone also sees the difference to the previous frame (6 input channels).
        spatial_grid: 0 pools each frame's feature map globally (the backbone's head); k > 0 average-pools it to
            k x k cells and flattens them, so the token keeps where the motion is (up/down vs left/right).
        feature_dim: ``features`` input: channels C of the per-frame features (2048 for THUMOS14 I3D).
        start_memory: slots of the boundary queue (0: the start can only be found in the segment).
        start_dim: width of the start-attention keys.
        distance_buckets: log2 buckets of the learned distance bias of the start attention.
    """

    core: CoreConfig
    classes: tuple[str, ...]
    input: str = "frames"
    fps: float = 8.0
    image_size: int = 64
    backbone: str = "mobilenetv3_small_050"
    motion: bool = True
    spatial_grid: int = 0
    feature_dim: int = 0
    start_memory: int = 16
    start_dim: int = 64
    distance_buckets: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))

        need = requirement("ActionConfig")

        need(len(self.classes) >= 1, "classes is empty")
        need(len(set(self.classes)) == len(self.classes), f"classes has duplicates: {self.classes!r}")
        need(BACKGROUND not in self.classes, f"{BACKGROUND!r} is implicit (class index 0); remove it from classes")
        need(self.input in ("frames", "features"), f"input={self.input!r} must be 'frames' or 'features'")
        need(self.fps > 0, f"fps={self.fps} must be positive")
        if self.input == "frames":
            need(isinstance(self.image_size, int) and self.image_size >= 32,
                 f"image_size={self.image_size!r} must be an integer >= 32")
            need(timm.is_model(self.backbone), f"backbone={self.backbone!r} is not a timm model name")
        else:
            need(isinstance(self.feature_dim, int) and self.feature_dim > 0,
                 f"feature_dim={self.feature_dim!r} must be a positive integer for input='features'")
        need(isinstance(self.spatial_grid, int) and self.spatial_grid >= 0,
             f"spatial_grid={self.spatial_grid!r} must be an integer >= 0")
        need(isinstance(self.start_memory, int) and self.start_memory >= 0,
             f"start_memory={self.start_memory!r} must be an integer >= 0")
        need(self.start_dim > 0 and self.distance_buckets >= 2,
             f"start_dim={self.start_dim}, distance_buckets={self.distance_buckets} must be > 0 and >= 2")

    @property
    def segment(self) -> int:
        """Frames per step."""
        return self.core.segment

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def uses_motion(self) -> bool:
        return self.input == "frames" and self.motion

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one segment's input without the batch axis."""
        if self.input == "frames":
            return (self.segment, self.image_size, self.image_size, 3)
        return (self.segment, self.feature_dim)

    def replace(self, **changes) -> ActionConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["core"] = self.core.to_dict()
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ActionConfig:
        check_known_fields(cls, d)
        return cls(**{**d, "core": CoreConfig.from_dict(d["core"])})


class _FrameEncoder(nn.Module):
    """RGB frames (and their difference to the previous frame) -> one token per frame through a timm backbone."""

    def __init__(self, cfg: ActionConfig) -> None:
        super().__init__()
        self.motion = cfg.motion
        self.backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=0,
                                          in_chans=6 if cfg.motion else 3)
        self.grid = cfg.spatial_grid
        data = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(data.get("mean", (0.485, 0.456, 0.406))).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data.get("std", (0.229, 0.224, 0.225))).view(1, 1, 3, 1, 1),
                             persistent=False)
        if self.grid:  # the last feature map pooled to grid x grid cells: the token keeps where things are
            width = self.backbone.num_features * self.grid * self.grid
        else:  # the backbone's global pooling head (MobileNetV3: pooled, then its own 1024-wide projection)
            width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.proj = nn.Linear(width, cfg.core.dim)

    def normalise(self, frames: Tensor) -> Tensor:
        """(B, T, H, W, 3) uint8 RGB -> (B, T, 3, H, W) float, normalised as the backbone expects."""
        return (frames.permute(0, 1, 4, 2, 3).float() / 255.0 - self.mean) / self.std

    def forward(self, frames: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """frames: (B, T, H, W, 3) uint8, previous: (B, 3, H, W) the frame before (zeros at a stream's start)
        -> tokens (B, T, D), the last frame (B, 3, H, W)."""
        b, t = frames.shape[:2]
        x = self.normalise(frames)
        if self.motion:
            before = torch.cat((previous.unsqueeze(1), x[:, :-1]), dim=1)
            x = torch.cat((x, x - before), dim=2)  # (B, T, 6, H, W)
        if self.grid:
            maps = self.backbone.forward_features(x.flatten(0, 1))  # (B*T, F, h, w)
            features = F.adaptive_avg_pool2d(maps, self.grid).flatten(1)  # (B*T, F * grid^2)
        else:
            features = self.backbone(x.flatten(0, 1))  # (B*T, F)
        return self.proj(features).view(b, t, -1), x[:, -1, :3]


class _FeatureEncoder(nn.Module):
    """Precomputed per-frame features (B, T, C) -> tokens (B, T, D)."""

    def __init__(self, cfg: ActionConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.proj = nn.Linear(cfg.feature_dim, cfg.core.dim)

    def forward(self, features: Tensor, previous: Tensor | None) -> tuple[Tensor, None]:
        return self.proj(self.norm(features)), None


def distance_bucket(distance: Tensor, buckets: int) -> Tensor:
    """Frames back (int64, any shape) -> log2 bucket: 0 for <= 0, then 1, 2-3, 4-7, ... capped at buckets - 1."""
    d = distance.clamp(min=1).float()
    b = 1 + torch.floor(torch.log2(d)).long()
    return torch.where(distance <= 0, torch.zeros_like(b), b.clamp(max=buckets - 1))


class ActionModel(nn.Module):
    """Frames or features -> per-frame class scores, end and start detection, start estimates; streaming.

    Args:
        cfg: :class:`ActionConfig`.

    Streaming: ``out, state = model.step(x, state, reset, mask)`` with x: (B, T, H, W, 3) uint8 RGB frames
    (or (B, T, C) float32 features), mask: (B, T) bool valid frames (a prefix), reset: (B,) bool;
    ``out`` is an :class:`ActionOutput`. Whole videos: :meth:`forward_sequence`.
    """

    def __init__(self, cfg: ActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.core
        self.encoder = _FrameEncoder(cfg) if cfg.input == "frames" else _FeatureEncoder(cfg)
        self.core = MemoryCore(c)
        self.cls = nn.Linear(c.dim, 1 + cfg.num_classes)
        self.end = nn.Linear(c.dim, 1)
        self.start = nn.Linear(c.dim, 1)
        self.start_q = nn.Linear(c.dim, cfg.start_dim)
        self.start_k = nn.Linear(c.dim, cfg.start_dim)
        self.distance_bias = nn.Embedding(cfg.distance_buckets, 1)
        nn.init.zeros_(self.distance_bias.weight)
        self._core_fields = tuple(self.core.init_state(1)._fields)
        if "step" not in self._core_fields:
            raise ValueError(f"ActionModel: memory {c.memory!r} keeps no segment counter ('step') in its state")
        front = ("prev_frame",) if cfg.uses_motion else ()
        boundary = ("start_key", "start_pos", "start_valid") if cfg.start_memory else ()
        self._own = front + boundary
        self.State = NamedTuple(f"ActionState_{c.memory}", [(f, Tensor) for f in self._own + self._core_fields])

    # -- state ---------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        cfg = self.cfg
        spec: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if cfg.uses_motion:
            spec["prev_frame"] = ((batch, 3, cfg.image_size, cfg.image_size), torch.float32)
        if cfg.start_memory:
            m = cfg.start_memory
            spec["start_key"] = ((batch, m, cfg.start_dim), torch.float32)
            spec["start_pos"] = ((batch, m), torch.int64)
            spec["start_valid"] = ((batch, m), torch.bool)
        return {**spec, **self.core.state_spec(batch)}

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        spec = self.state_spec(batch)
        return self.State(**{k: torch.zeros(s, dtype=dt, device=device) for k, (s, dt) in spec.items()})

    # -- shared pieces -------------------------------------------------------------------------------
    def _check_input(self, x: Tensor, mask: Tensor | None, where: str, multiple: bool) -> None:
        cfg = self.cfg
        expected = cfg.input_shape()
        t = cfg.segment
        rest = tuple(x.shape[2:])
        if x.dim() != len(expected) + 1 or rest != expected[1:] or (
                x.shape[1] % t if multiple else x.shape[1] != t):
            length = f"a multiple of {t}" if multiple else str(t)
            kind = "uint8 RGB frames" if cfg.input == "frames" else "float features"
            raise ValueError(f"ActionModel.{where}: input of shape {tuple(x.shape)}; the model takes (B, {length}, "
                             f"{', '.join(map(str, expected[1:]))}) {kind}")
        if cfg.input == "frames" and x.dtype != torch.uint8:
            raise ValueError(f"ActionModel.{where}: frames must be uint8 RGB, got {x.dtype}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"ActionModel.{where}: mask of shape {tuple(mask.shape)} for input {tuple(x.shape[:2])}")

    def _distance_bias(self, distance: Tensor) -> Tensor:
        return self.distance_bias(distance_bucket(distance, self.cfg.distance_buckets)).squeeze(-1)

    def _heads(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """y: (B, S, D) -> class logits, end logit, start logit, start query, start key."""
        return (self.cls(y), self.end(y).squeeze(-1), self.start(y).squeeze(-1), self.start_q(y),
                self.start_k(y))

    def _current_scores(self, q: Tensor, k: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Candidates inside each segment. q, k: (B, N, T, E), pos: (B, N, T), mask: (B, N, T)
        -> scores (B, N, T, T), allowed (B, N, T, T): frame i <= t and valid (t itself always)."""
        t = q.shape[2]
        distance = pos.unsqueeze(-1) - pos.unsqueeze(-2)  # (B, N, T, T) query minus candidate
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + self._distance_bias(distance)
        eye = torch.eye(t, dtype=torch.bool, device=q.device)
        allowed = ((distance >= 0) & mask.unsqueeze(-2)) | eye
        return scores, allowed

    @staticmethod
    def _boundary_entry(start_logit: Tensor, k: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per segment, the frame most likely to start an action. start_logit, pos, mask: (..., T), k: (..., T, E)
        -> (its key (..., E), its position (...,), write flag (...,): its start score says "start")."""
        logit = start_logit.masked_fill(~mask, NEG)
        index = logit.argmax(-1, keepdim=True)
        key = k.gather(-2, index.unsqueeze(-1).expand(*index.shape, k.shape[-1])).squeeze(-2)
        return key, pos.gather(-1, index).squeeze(-1), logit.gather(-1, index).squeeze(-1) > 0

    @staticmethod
    def _outputs(class_logits: Tensor, end_logit: Tensor, start_logit: Tensor, scores: Tensor,
                 candidate_pos: Tensor, pos: Tensor) -> ActionOutput:
        probs = torch.softmax(scores, dim=-1)
        conf, best = probs.max(dim=-1)
        start = candidate_pos.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        return ActionOutput(torch.softmax(class_logits, dim=-1), torch.sigmoid(end_logit), torch.sigmoid(start_logit),
                            (pos - start).float(), conf)

    # -- streaming -----------------------------------------------------------------------------------
    def step(self, x: Tensor, state: NamedTuple, reset: Tensor | None = None,
             mask: Tensor | None = None) -> tuple[ActionOutput, NamedTuple]:
        """One segment for every stream. x: (B, T, H, W, 3) uint8 or (B, T, C), mask: (B, T) -> (outputs, state)."""
        cfg = self.cfg
        self._check_input(x, mask, "step", multiple=False)
        b, t = x.shape[:2]
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if reset is not None:
            state = reset_state(state, reset)
        own = dict(zip(self._own, state[: len(self._own)], strict=True))
        core_state = self.core.State(*state[len(self._own):])
        pos = core_state.step.unsqueeze(1) * t + torch.arange(t, device=x.device)  # (B, T) stream frame index
        tokens, last = self.encoder(x, own.get("prev_frame"))
        y, core_state = self.core.step(tokens, core_state, None, mask)
        class_logits, end_logit, start_logit, q, k = self._heads(y)
        scores, allowed = self._current_scores(q.unsqueeze(1), k.unsqueeze(1), pos.unsqueeze(1), mask.unsqueeze(1))
        scores = scores.squeeze(1).masked_fill(~allowed.squeeze(1), NEG)  # (B, T, T)
        candidate_pos = pos.unsqueeze(1).expand(b, t, t)
        new_own = []
        if cfg.uses_motion:
            new_own.append(last)
        if cfg.start_memory:
            keys, spos, svalid = own["start_key"], own["start_pos"], own["start_valid"]  # (B, M, E), (B, M), (B, M)
            memory = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
            memory = memory + self._distance_bias(pos.unsqueeze(-1) - spos.unsqueeze(1))  # (B, T, M)
            memory = memory.masked_fill(~svalid.unsqueeze(1), NEG)
            scores = torch.cat((memory, scores), dim=-1)
            candidate_pos = torch.cat((spos.unsqueeze(1).expand(b, t, -1), candidate_pos), dim=-1)
            key, entry_pos, write = self._boundary_entry(start_logit, k, pos, mask)
            # FIFO of the last M written entries: a gather at offset `write`, one path with or without a write.
            m = cfg.start_memory
            index = write.long().unsqueeze(1) + torch.arange(m, device=x.device)  # (B, M)
            keys = torch.cat((keys, key.unsqueeze(1)), dim=1).gather(1, index.unsqueeze(-1).expand_as(keys))
            spos = torch.cat((spos, entry_pos.unsqueeze(1)), dim=1).gather(1, index)
            svalid = torch.cat((svalid, write.unsqueeze(1)), dim=1).gather(1, index)
            new_own += [keys, spos, svalid]
        outputs = self._outputs(class_logits, end_logit, start_logit, scores, candidate_pos, pos)
        return outputs, self.State(*new_own, *core_state)

    # -- whole sequences -----------------------------------------------------------------------------
    def forward_sequence(self, x: Tensor, mask: Tensor | None = None,
                         start_index: Tensor | None = None) -> ActionLogits:
        """A whole video from the empty state, equal to streaming its segments one by one.

        Args:
            x: (B, S, H, W, 3) uint8 frames or (B, S, C) features, S a multiple of T.
            mask: (B, S) bool valid frames (padding only at the end).
            start_index: teacher forcing of the boundary queue for training, (B, N) int64: per segment the
                frame (0..T-1) written as its start candidate, -1 for no write. None: the model's own choice,
                as in streaming.
        """
        cfg = self.cfg
        self._check_input(x, mask, "forward_sequence", multiple=True)
        b, s = x.shape[:2]
        t = cfg.segment
        n = s // t
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        pos = torch.arange(s, device=x.device).expand(b, s)
        previous = torch.zeros(b, 3, cfg.image_size, cfg.image_size, device=x.device) if cfg.uses_motion else None
        tokens, _ = self.encoder(x, previous)
        y = self.core.forward_sequence(tokens, mask)
        class_logits, end_logit, start_logit, q, k = self._heads(y)
        qn, kn, pn, mn = q.view(b, n, t, -1), k.view(b, n, t, -1), pos.reshape(b, n, t), mask.view(b, n, t)
        scores, allowed = self._current_scores(qn, kn, pn, mn)
        scores, allowed = scores.reshape(b, s, t), allowed.reshape(b, s, t)
        candidate_pos = pn.unsqueeze(2).expand(b, n, t, t).reshape(b, s, t)
        if cfg.start_memory:
            if start_index is None:
                key, entry_pos, write = self._boundary_entry(start_logit.view(b, n, t), kn, pn, mn)
            else:
                index = start_index.clamp(min=0).unsqueeze(-1)  # (B, N, 1)
                key = kn.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, kn.shape[-1])).squeeze(2)
                entry_pos, write = pn.gather(2, index).squeeze(-1), start_index >= 0
            memory = q @ key.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, S, N)
            memory = memory + self._distance_bias(pos.unsqueeze(-1) - entry_pos.unsqueeze(1))
            written = write.long()
            count = written.cumsum(1)  # (B, N) entries written up to and including each segment
            segment_of = torch.arange(s, device=x.device) // t  # (S,)
            before = (count - written)[:, segment_of]  # (B, S) entries written before the frame's segment
            earlier = segment_of.view(1, s, 1) > torch.arange(n, device=x.device).view(1, 1, n)
            visible = earlier & write.unsqueeze(1) & (count.unsqueeze(1) > before.unsqueeze(2) - cfg.start_memory)
            scores = torch.cat((memory, scores), dim=-1)
            allowed = torch.cat((visible, allowed), dim=-1)
            candidate_pos = torch.cat((entry_pos.unsqueeze(1).expand(b, s, n), candidate_pos), dim=-1)
        scores = scores.masked_fill(~allowed, NEG)
        gate = torch.zeros(b, n, device=x.device)
        if cfg.core.memory == "queue" and cfg.core.write_gate:
            gate = self.core.memory.gate_logits(tokens.view(b, n, t, -1), mn)
        outputs = self._outputs(class_logits, end_logit, start_logit, scores, candidate_pos, pos)
        return ActionLogits(class_logits, end_logit, start_logit, torch.log_softmax(scores, dim=-1), candidate_pos,
                            allowed, gate, outputs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> ActionLogits:
        return self.forward_sequence(x, mask)


def load_backbone_weights(model: ActionModel, path: str | os.PathLike) -> dict:
    """A user's local backbone weights (safetensors, or a PyTorch state dict read with ``weights_only``).

    The classifier is dropped and a 3-channel stem is adapted to the 6 channels of ``motion`` input
    (timm's ``adapt_input_conv``). Returns ``{"loaded", "missing", "unexpected"}`` key counts; a file that
    matches nothing is an error.
    """
    if model.cfg.input != "frames":
        raise ValueError("load_backbone_weights: the model takes features; it has no backbone")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights {path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        weights = load_file(path)
    else:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(weights, dict) and isinstance(weights.get(key), dict):
                weights = weights[key]
    backbone = model.encoder.backbone
    own = backbone.state_dict()
    stem = backbone.pretrained_cfg.get("first_conv")
    out = {}
    for name, value in weights.items():
        name = name.removeprefix("module.")
        if name not in own:
            continue
        if stem and name == f"{stem}.weight" and value.shape[1] != own[name].shape[1]:
            value = timm.models.adapt_input_conv(own[name].shape[1], value)
        if value.shape != own[name].shape:
            raise ValueError(f"backbone weights {path}: {name} has shape {tuple(value.shape)}, the backbone "
                             f"{model.cfg.backbone!r} wants {tuple(own[name].shape)}")
        out[name] = value
    if not out:
        raise ValueError(f"backbone weights {path}: no tensor matches the backbone {model.cfg.backbone!r}")
    result = backbone.load_state_dict(out, strict=False)
    return {"loaded": len(out), "missing": len(result.missing_keys), "unexpected": len(weights) - len(out)}


# -- presets ---------------------------------------------------------------------------------------------
@register_model
def action_small(**overrides) -> ActionModel:
    """96x96 frames at 8 fps through MobileNetV3-small-0.5 (its last feature map pooled to 2x2 cells), width 128,
    3 layers, 2 s segments, a gated queue of 64 frames per layer and a 16-slot boundary queue: 1.1 M parameters
    (bundled). At 64x64 the synthetic set's "spin" (a small body turning in place) was barely visible."""
    core = CoreConfig(dim=128, heads=4, layers=3, ff_mult=2, segment=16, memory="queue", memory_length=64,
                      write_gate=True, dropout=0.1)
    return ActionModel(_config(core, {"classes": SYNTH_CLASSES, "spatial_grid": 2, "image_size": 96, **overrides}))


@register_model
def action_thumos(**overrides) -> ActionModel:
    """THUMOS14 per-frame features (I3D RGB+flow, 2048 channels at 4 fps), width 256, 4 layers, 4 s segments,
    a gated queue of 128 frames per layer (MATR's setting in spirit)."""
    core = CoreConfig(dim=256, heads=4, layers=4, ff_mult=4, segment=16, memory="queue", memory_length=128,
                      write_gate=True, dropout=0.1)
    return ActionModel(_config(core, {"input": "features", "feature_dim": 2048, "fps": 4.0, "classes": THUMOS14_CLASSES,
                                      "start_memory": 32, "start_dim": 128, **overrides}))


def _config(core: CoreConfig, overrides: dict) -> ActionConfig:
    """Split overrides between the core (its field names) and the action config."""
    core_fields = {f.name for f in dataclasses.fields(CoreConfig)}
    core = core.replace(**{k: v for k, v in overrides.items() if k in core_fields})
    return ActionConfig(core=core, **{k: v for k, v in overrides.items() if k not in core_fields})
