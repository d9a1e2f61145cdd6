"""Streaming speech recognition: log-mel features, convolutional subsampling x4, the memory core, a CTC head.

The whole front-end runs inside ``step`` so one exported graph takes raw 16 kHz samples to CTC log-probs.
Every part that looks across a segment boundary carries what it needs in the state, so streaming segment
by segment gives the same numbers as :meth:`AsrModel.forward_sequence` over the whole recording:

- features: frame ``j`` of the stream covers samples ``[160 j - 240, 160 j + 160)`` (25 ms window, 10 ms
  hop, looking only backwards); the state keeps the last 240 samples (``audio_tail``).
- subsampling: two 3x3 convolutions of stride 2 over (time, mel); output ``t`` of each sees inputs
  ``2t - 1 .. 2t + 1``, so each keeps one frame of its input from the previous segment (``feat_tail``,
  ``conv_tail``).
- the core: any memory type (``cfg.core.memory``), state fields as that type defines them.

A stream starts from zeros: silence before the first sample, a zero (mean) feature frame before the first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from memstream.memory import CoreConfig, MemoryCore, reset_state
from memstream.memory.config import check_known_fields, requirement
from memstream.models.registry import register_model
from torch import Tensor, nn

BLANK = "<b>"
CHARS: tuple[str, ...] = (BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxyz")  # index 0 is the CTC blank
SUBSAMPLING = 4


class AsrOutput(NamedTuple):
    log_probs: Tensor  # (B, T, V) CTC log-probabilities per output frame (40 ms)


@dataclass(frozen=True)
class AsrConfig:
    """Hyper-parameters of :class:`AsrModel`.

    Attributes:
        core: the memory core; ``core.segment`` output frames (of 40 ms) per segment.
        vocab: output symbols, index 0 the CTC blank.
        sample_rate: input samples per second.
        n_mels, win, hop, n_fft, f_min, f_max: log-mel features (80 bins, 25 ms / 10 ms at 16 kHz).
        channels: convolution channels of the subsampling.
        full_context: a baseline that attends over the whole recording at once (no memory, no streaming):
            only :meth:`AsrModel.forward_sequence`; needs ``core.memory == "none"``.
    """

    core: CoreConfig
    vocab: tuple[str, ...] = CHARS
    sample_rate: int = 16000
    n_mels: int = 80
    win: int = 400
    hop: int = 160
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float = 7600.0
    channels: int = 32
    full_context: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab", tuple(self.vocab))

        need = requirement("AsrConfig")

        need(len(self.vocab) >= 2 and self.vocab[0] == BLANK,
             f"vocab must start with the blank {BLANK!r} and hold at least one symbol, got {self.vocab[:3]!r}")
        need(len(set(self.vocab)) == len(self.vocab), "vocab has duplicate symbols")
        for name in ("sample_rate", "n_mels", "win", "hop", "n_fft", "channels"):
            need(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be positive")
        need(self.hop <= self.win <= self.n_fft, f"need hop <= win <= n_fft, got {self.hop}, {self.win}, {self.n_fft}")
        need(0 <= self.f_min < self.f_max <= self.sample_rate / 2,
             f"f_min={self.f_min}, f_max={self.f_max} must satisfy 0 <= f_min < f_max <= sample_rate / 2")
        need(self.mel_after_subsampling > 0, f"n_mels={self.n_mels} is too few for two stride-2 convolutions")
        need(not self.full_context or self.core.memory == "none",
             f"full_context needs core.memory='none', got {self.core.memory!r}")

    @property
    def segment_samples(self) -> int:
        """Input samples per step (640 ms for a 16-frame segment at 16 kHz)."""
        return self.core.segment * SUBSAMPLING * self.hop

    @property
    def segment(self) -> int:
        """The step's input length (samples), as every task config names it."""
        return self.segment_samples

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame (40 ms)."""
        return SUBSAMPLING * self.hop / self.sample_rate

    @property
    def mel_after_subsampling(self) -> int:
        return ((self.n_mels - 3) // 2 + 1 - 3) // 2 + 1

    def replace(self, **changes) -> AsrConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["core"] = self.core.to_dict()
        d["vocab"] = list(self.vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AsrConfig:
        check_known_fields(cls, d)
        return cls(**{**d, "core": CoreConfig.from_dict(d["core"])})


class _LogMel(nn.Module):
    """Frames of ``win`` samples -> normalised log-mel features.

    The DFT is a matmul with a windowed basis (one MatMul in ONNX, the same on every runtime); the mel
    filters are torchaudio's. ``mean``/``std`` are the training corpus' statistics, saved with the weights.
    """

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__()
        bins = cfg.n_fft // 2 + 1
        n = torch.arange(cfg.win, dtype=torch.float64).unsqueeze(1)
        angle = 2.0 * math.pi * n * torch.arange(bins, dtype=torch.float64) / cfg.n_fft
        window = torch.hann_window(cfg.win, periodic=True, dtype=torch.float64).unsqueeze(1)
        self.register_buffer("basis", (torch.cat((angle.cos(), -angle.sin()), 1) * window).float(), persistent=False)
        mel = torchaudio.functional.melscale_fbanks(bins, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate,
                                                    norm=None, mel_scale="htk")
        self.register_buffer("mel", mel, persistent=False)  # (bins, n_mels)
        self.register_buffer("mean", torch.zeros(cfg.n_mels))
        self.register_buffer("std", torch.ones(cfg.n_mels))

    def raw(self, frames: Tensor) -> Tensor:
        """frames: (B, F, win) -> (B, F, n_mels) log-mel power, before normalisation."""
        re, im = (frames @ self.basis).chunk(2, dim=-1)
        return torch.log((re * re + im * im) @ self.mel + 1e-6)

    def forward(self, frames: Tensor) -> Tensor:
        return (self.raw(frames) - self.mean) / self.std


class _Subsampling(nn.Module):
    """Two 3x3 stride-2 convolutions over (time, mel) and a projection to the core width: x4 in time."""

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.conv1 = nn.Conv2d(1, c, 3, stride=2)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2)
        self.out = nn.Linear(c * cfg.mel_after_subsampling, cfg.core.dim)

    def first(self, feats: Tensor) -> Tensor:
        """feats: (B, 1 + F, M), one earlier frame first -> (B, C, F/2, M1)."""
        return F.relu(self.conv1(feats.unsqueeze(1)))

    def second(self, h: Tensor) -> Tensor:
        """h: (B, C, 1 + F/2, M1), one earlier frame first -> (B, F/4, D)."""
        h = F.relu(self.conv2(h))
        return self.out(h.permute(0, 2, 1, 3).flatten(2))


class AsrModel(nn.Module):
    """Raw audio -> CTC log-probabilities over characters, streaming with an explicit state.

    Args:
        cfg: :class:`AsrConfig`.

    Streaming: ``out, state = model.step(x, state, reset, mask)`` with x: (B, S) float32 samples in [-1, 1],
    S = ``cfg.segment_samples``; mask: (B, S) bool valid samples (a prefix); reset: (B,) bool;
    ``out.log_probs``: (B, T, V), T = ``cfg.core.segment``. An output frame is valid when its first sample is.
    Whole recordings: ``model.forward_sequence(audio, lengths)``.
    """

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = _LogMel(cfg)
        self.subsample = _Subsampling(cfg)
        self.core = MemoryCore(cfg.core)
        self.head = nn.Linear(cfg.core.dim, len(cfg.vocab))
        core_fields = tuple(self.core.init_state(1)._fields)
        self._front = ("audio_tail", "feat_tail", "conv_tail")
        self.State = NamedTuple(f"AsrState_{cfg.core.memory}", [(f, Tensor) for f in self._front + core_fields])

    # -- state ---------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        c = self.cfg
        m1 = (c.n_mels - 3) // 2 + 1
        front = {"audio_tail": ((batch, c.win - c.hop), torch.float32),
                 "feat_tail": ((batch, 1, c.n_mels), torch.float32),
                 "conv_tail": ((batch, c.channels, 1, m1), torch.float32)}
        return {**front, **self.core.state_spec(batch)}

    def init_state(self, batch: int, device: torch.device | str | None = None) -> NamedTuple:
        spec = self.state_spec(batch)
        return self.State(**{k: torch.zeros(s, dtype=dt, device=device) for k, (s, dt) in spec.items()})

    # -- streaming -----------------------------------------------------------------------------------
    def step(self, x: Tensor, state: NamedTuple, reset: Tensor | None = None,
             mask: Tensor | None = None) -> tuple[AsrOutput, NamedTuple]:
        """One segment of samples for every stream. x: (B, S), mask: (B, S) -> (log_probs (B, T, V), state)."""
        c = self.cfg
        b, s = x.shape
        if s != c.segment_samples:
            raise ValueError(f"AsrModel.step: a segment of {s} samples; the model takes {c.segment_samples} "
                             f"({c.segment_samples / c.sample_rate:g} s at {c.sample_rate} Hz)")
        if mask is not None and tuple(mask.shape) != (b, s):
            raise ValueError(f"AsrModel.step: mask of shape {tuple(mask.shape)} for input {(b, s)}")
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        if reset is not None:
            state = reset_state(state, reset)
        front, core_state = state[:3], self.core.State(*state[3:])
        audio = torch.cat((front[0], x), dim=1)                         # (B, win - hop + S)
        frames = audio.unfold(1, c.win, c.hop)                          # (B, S / hop, win)
        feats = self.features(frames)                                   # (B, F, M)
        h1 = self.subsample.first(torch.cat((front[1], feats), dim=1))  # (B, C, F/2, M1)
        tokens = self.subsample.second(torch.cat((front[2], h1), dim=2))  # (B, T, D)
        token_mask = mask.view(b, c.core.segment, -1)[..., 0]
        y, core_state = self.core.step(tokens, core_state, None, token_mask)
        new = self.State(audio[:, -(c.win - c.hop):], feats[:, -1:], h1[:, :, -1:], *core_state)
        return AsrOutput(torch.log_softmax(self.head(y), dim=-1)), new

    # -- whole recordings ----------------------------------------------------------------------------
    def pad(self, audio: Tensor) -> Tensor:
        """(B, N) -> (B, N') zero-padded to a whole number of segments."""
        extra = -audio.shape[1] % self.cfg.segment_samples
        return F.pad(audio, (0, extra)) if extra else audio

    def frames(self, audio: Tensor) -> Tensor:
        """audio: (B, N) from the stream's start -> analysis frames (B, N // hop, win), each ending at its hop."""
        c = self.cfg
        return F.pad(audio, (c.win - c.hop, 0)).unfold(1, c.win, c.hop)

    def features_sequence(self, audio: Tensor) -> Tensor:
        """audio: (B, N), N a multiple of the segment -> normalised log-mel (B, N / hop, n_mels)."""
        return self.features(self.frames(audio))

    def encode(self, feats: Tensor, token_mask: Tensor) -> Tensor:
        """feats: (B, F, n_mels) from :meth:`features_sequence` (maybe augmented), token_mask: (B, F/4)
        -> log-probs (B, F/4, V), equal to streaming the segments one by one."""
        h1 = self.subsample.first(F.pad(feats, (0, 0, 1, 0)))
        tokens = self.subsample.second(F.pad(h1, (0, 0, 1, 0)))
        if self.cfg.full_context:
            y = _full_attention(self.core, tokens, token_mask)
        else:
            y = self.core.forward_sequence(tokens, token_mask)
        return torch.log_softmax(self.head(y), dim=-1)

    def token_mask(self, lengths: Tensor, frames: int) -> Tensor:
        """lengths: (B,) valid samples -> (B, frames) bool valid output frames (first sample valid)."""
        tokens = (lengths + SUBSAMPLING * self.cfg.hop - 1) // (SUBSAMPLING * self.cfg.hop)
        return torch.arange(frames, device=lengths.device) < tokens.unsqueeze(1)

    def forward_sequence(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """audio: (B, N) samples, lengths: (B,) valid samples -> (log_probs (B, T', V), valid frames (B, T'))."""
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        audio = self.pad(audio)
        feats = self.features_sequence(audio)
        mask = self.token_mask(lengths, feats.shape[1] // SUBSAMPLING)
        return self.encode(feats, mask), mask

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.forward_sequence(audio, lengths)


def _full_attention(core: MemoryCore, x: Tensor, mask: Tensor) -> Tensor:
    """The core's blocks over the whole sequence at once: every valid token sees every valid token.

    x: (B, S, D), mask: (B, S) -> (B, S, D). Without padding no mask is passed, so SDPA takes its
    memory-efficient kernel and a whole recording fits.
    """
    b, s, _ = x.shape
    cos, sin = core.rotary(torch.arange(s, device=x.device).expand(b, -1))
    attn_mask = None if bool(mask.all()) else (mask.unsqueeze(1) | torch.eye(s, dtype=torch.bool,
                                                                             device=x.device)).unsqueeze(1)
    h = x
    for block in core.blocks:
        q, k, v = block.qkv_heads(h)
        q, k = block.rotate_heads(q, cos, sin), block.rotate_heads(k, cos, sin)
        h = block.finish(h, block.attend(q, k, v, attn_mask))
    return core.norm(h)


# -- presets ---------------------------------------------------------------------------------------------
@register_model
def asr_small(**overrides) -> AsrModel:
    """Width 128, 5 layers, 640 ms segments, a queue of 2 segments per layer: ~1 M parameters (bundled)."""
    core = CoreConfig(dim=128, heads=4, layers=5, ff_mult=4, segment=16, memory="queue", memory_length=32,
                      num_tokens=16, dropout=0.1)
    return AsrModel(_config(core, overrides))


@register_model
def asr_base(**overrides) -> AsrModel:
    """Width 256, 12 layers, 64 memory tokens per layer: ~10 M parameters, for users with a GPU."""
    core = CoreConfig(dim=256, heads=4, layers=12, ff_mult=4, segment=16, memory="queue", memory_length=64,
                      num_tokens=32, dropout=0.1)
    return AsrModel(_config(core, {"channels": 64, **overrides}))


def _config(core: CoreConfig, overrides: dict) -> AsrConfig:
    """Split overrides between the core (its field names) and the ASR config."""
    core_fields = {f.name for f in dataclasses.fields(CoreConfig)}
    core = core.replace(**{k: v for k, v in overrides.items() if k in core_fields})
    return AsrConfig(core=core, **{k: v for k, v in overrides.items() if k not in core_fields})
