"""``memstream run core``: the bare memory core on a live source, before any task model exists.

It proves the runtime end to end and measures a deployment (latency, real-time factor, drops, how many
streams one process carries) with the real core, its state and its backend. The front-end is fixed and
deterministic, no training involved:

- audio (mono, ``rate`` Hz): each segment holds ``T * hop`` samples (``T`` = the core's segment tokens,
  ``hop`` = 160 at 16 kHz: 10 ms); token ``t`` is the log-magnitude ``log(1e-5 + |rfft(frame_t)|)`` of its
  ``hop`` samples (``hop // 2 + 1`` bins), times a fixed projection (``hop // 2 + 1``, D) drawn from ``seed``.
- video: each segment holds ``T`` frames resized to ``frame_size`` by the segmenter; token ``t`` is frame
  ``t`` in gray (ITU-R 601 weights), average-pooled to a ``grid``, scaled to [-0.5, 0.5], flattened and
  projected the same way.

Padding (the stream's last, partial segment) is masked: an audio token is valid when its first sample is.
The decoder emits one event per segment,
``{"type": "segment", "index", "time", "end", "valid_fraction", "output_norm"}`` (``output_norm``: L2 norm of
the mean of the valid output tokens, a segment-embedding magnitude that moves with the content; each
token's own norm is ~sqrt(D) after the core's final LayerNorm), and ``{"type": "end", "segments"}`` when
the stream ends.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from memstream.export.backend import to_numpy
from memstream.memory import MEMORY_TYPES, MemoryCore
from memstream.pipelines.segmenter import Segment
from torch import Tensor

GRAY = (0.299, 0.587, 0.114)


class _CoreDecoder:
    def __init__(self, task: CoreProbeTask) -> None:
        self.task = task
        self.segments = 0
        self.end = 0.0

    def update(self, outputs: np.ndarray, segment: Segment) -> list[dict]:
        n = segment.num_valid
        tokens = math.ceil(n / self.task.hop) if self.task.kind == "audio" else n
        norm = 0.0
        if tokens:  # the ufunc itself: ndarray.mean's Python wrapper costs more than the arithmetic
            total = np.add.reduce(outputs[:tokens], axis=0, dtype=np.float64)
            norm = math.sqrt(total @ total) / tokens  # |sum| / n: one numpy call fewer than |sum / n|
        if segment.times is not None and n:  # video: last frame's time + one frame
            end = float(segment.times[n - 1]) + 1.0 / segment.rate
        else:
            end = segment.start + segment.duration
        self.segments += 1
        self.end = end
        return [{"type": "segment", "index": segment.index, "time": segment.start, "end": end,
                 "valid_fraction": n / len(segment.valid), "output_norm": norm}]

    def flush(self) -> list[dict]:
        return [{"type": "end", "time": self.end, "segments": self.segments}]


class CoreProbeTask:
    """The memory core behind a fixed front-end (see the module docstring); a runner :class:`Task`.

    Args:
        kind: ``audio`` or ``video``.
        core: a :class:`MemoryCore`; else built from ``checkpoint`` (folder) or ``preset``.
        rate: audio sample rate the core runs at. hop: audio samples per token.
        fps: nominal video frame rate. frame_size: (height, width) frames are resized to. grid: pooled
            (rows, cols) per frame.
        seed: seed of the front-end projection.

    ``encode``: list of B segments -> x (B, T, D) float32, mask (B, T) bool; ``split``: (B, T, D) -> (T, D) numpy.
    """

    name = "core"

    def __init__(self, kind: str = "audio", core: MemoryCore | None = None, *, preset: str = "core-tiny",
                 checkpoint: str | None = None, memory: str | None = None, rate: int = 16000, hop: int = 160,
                 fps: float = 30.0, frame_size: tuple[int, int] = (120, 160), grid: tuple[int, int] = (12, 16),
                 seed: int = 0) -> None:
        if kind not in ("audio", "video"):
            raise ValueError(f"CoreProbeTask: kind={kind!r} must be 'audio' or 'video'")
        for label, value in (("rate", rate), ("hop", hop), ("fps", fps), ("frame_size", min(frame_size)),
                             ("grid", min(grid))):
            if value <= 0:
                raise ValueError(f"CoreProbeTask: {label} must be positive, got {value}")
        if core is None:
            core = load_core(preset, checkpoint, memory)
        self.model = core.eval()
        self.kind = kind
        self.tokens, self.dim = core.cfg.segment, core.cfg.dim
        self.hop = hop
        if kind == "audio":
            self.rate, self.segment_size, self.frame_size = rate, self.tokens * hop, None
            features = hop // 2 + 1
        else:
            self.rate, self.segment_size, self.frame_size = fps, self.tokens, tuple(frame_size)
            features = grid[0] * grid[1]
        self.grid = tuple(grid)
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(features, self.dim, generator=generator) / math.sqrt(features)

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        b, t = len(segments), self.tokens
        if self.kind == "audio":  # numpy: a few times cheaper than torch at these sizes
            frames = np.stack([s.data for s in segments]).astype(np.float32, copy=False).reshape(b, t, self.hop)
            # numpy >= 2 transforms float32 in single precision: no cast, and the sum and log run in place
            spectrum = np.abs(np.fft.rfft(frames, axis=-1)).astype(np.float32, copy=False)
            spectrum += np.float32(1e-5)
            features = torch.from_numpy(np.log(spectrum, out=spectrum))  # (B, T, hop // 2 + 1)
            if all(s.num_valid == len(s.valid) for s in segments):  # every segment full: no mask to gather
                mask = torch.ones(b, t, dtype=torch.bool)
            else:
                mask = torch.from_numpy(np.stack([s.valid[::self.hop] for s in segments]))  # a token's first sample
        else:
            frames = torch.from_numpy(np.stack([s.data for s in segments])).float()  # (B, T, H, W, 3)
            gray = frames @ torch.tensor(GRAY)  # (B, T, H, W)
            pooled = F.adaptive_avg_pool2d(gray.flatten(0, 1).unsqueeze(1), self.grid)  # (B*T, 1, gh, gw)
            features = (pooled / 255.0 - 0.5).view(b, t, -1)
            mask = torch.from_numpy(np.stack([s.valid for s in segments]))
        return features @ self.projection, mask

    def split(self, outputs: np.ndarray | Tensor, index: int) -> np.ndarray:
        return to_numpy(outputs)[index]

    def new_decoder(self, stream_id: str) -> _CoreDecoder:
        return _CoreDecoder(self)

    def draw(self, frame: np.ndarray, events: list[dict]) -> np.ndarray:
        """Overlay hook: the segment's index and output norm in the top-left corner."""
        import cv2

        for ev in events:
            if ev.get("type") == "segment":
                text = f"{ev.get('stream', '')} seg {ev['index']} |y| {ev['output_norm']:.2f}"
                cv2.putText(frame, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        return frame


def load_core(preset: str = "core-tiny", checkpoint: str | None = None, memory: str | None = None) -> MemoryCore:
    from memstream.pipelines.core_tools import _core_from_args

    return _core_from_args(argparse.Namespace(checkpoint=checkpoint, config=None, preset=preset, memory=memory))


EXAMPLES = """\
examples:
  memstream run core --source talk.wav --out runs/probe           # events.jsonl + summary.json
  memstream run core --source clip.mp4 --backend onnx --overlay runs/overlay.mp4 --out runs/clip
  memstream run core --source 0 --source rtsp://cam/2 --mode latest --view   # two live cameras, batched
  memstream run core --streams cameras.streams --max-streams 16 --out runs/cams   # one source per line
  memstream run core --source rtsp://cam/3 --retry-open --reconnect-attempts 60    # wait for a booting camera
  arecord -f S16_LE -r 16000 -c 1 | memstream run core --source - --rate 16000 --channels 1 --format s16le

Ctrl-C or SIGTERM: the step in flight finishes, every sink is flushed, the summary is written, exit 0.
"""


def cli_run(argv: list[str]) -> int:
    from memstream.models import list_models
    from memstream.pipelines.launch import add_run_arguments, guess_kind, run_from_args, specs_from_args

    p = argparse.ArgumentParser(
        prog="memstream run core", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Run the bare memory core (fixed front-end, see memstream.pipelines.core_task) on live or "
                    "recorded streams: one event per segment, latency and real-time factor in the summary.")
    add_run_arguments(p)
    p.add_argument("--preset", default="core-tiny", choices=[m for m in list_models() if m.startswith("core-")],
                   help="core preset (default core-tiny)")
    p.add_argument("--checkpoint", help="core checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--memory", choices=MEMORY_TYPES, help="memory type, overriding the preset")
    p.add_argument("--hop", type=int, default=160, help="audio samples per token at 16 kHz (default 160)")
    args = p.parse_args(argv)
    specs = specs_from_args(args)
    kind = args.kind or guess_kind(specs[0]) or "video"  # unknown: the video decoder says what is wrong
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such folder")
    task = CoreProbeTask(kind, preset=args.preset, checkpoint=args.checkpoint, memory=args.memory, hop=args.hop)
    return run_from_args(task, specs, args)
