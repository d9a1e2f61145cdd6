"""Online action localization as a runner task: video frames in, action events out while the video plays.

``ActionTask`` resamples a video source to the model's frame rate and size (the segmenter), feeds segments of
``T`` frames to :class:`memstream.models.action.ActionModel`'s step (or its exported graph), and each stream's
:class:`~memstream.pipelines.action_decoder.OnlineActionDecoder` turns the per-frame outputs into ``action``
events (class, start, end, score, emission time) and per-segment ``frames`` events. ``localize`` runs one
whole video (frames or precomputed features) through the same step, for evaluation; ``read_video`` decodes a
file the way the runtime does, for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from memstream.export.backend import to_numpy
from memstream.models import check_metadata, load_model
from memstream.models.action import BACKGROUND, ActionConfig, ActionModel
from memstream.pipelines.action_decoder import DecoderConfig, OnlineActionDecoder
from memstream.pipelines.action_overlay import draw_action_overlay
from memstream.pipelines.segmenter import Segment, read_video  # noqa: F401  (read_video: re-exported)
from torch import Tensor

MODEL_KIND = "action"
BUNDLED = "action-small"
OUTPUT_FIELDS = ("class_probs", "end_prob", "start_prob", "start_back", "start_conf")


def bundled_action_dir() -> Path:
    import memstream.models

    return Path(memstream.models.__file__).parent / "bundled" / BUNDLED


def load_action_model(directory: str | Path | None = None) -> tuple[ActionModel, dict]:
    """A checkpoint folder written by ``memstream train action`` (default: the bundled model) -> (model, config)."""
    return load_model(directory if directory is not None else bundled_action_dir(), MODEL_KIND,
                      lambda d: ActionModel(ActionConfig.from_dict(d)))


def export_metadata(model: ActionModel) -> dict:
    """What a runtime and a decoder need besides the graph: input, frame rate, segment, classes."""
    c = model.cfg
    return {"task": MODEL_KIND, "kind": "video", "rate": c.fps, "fps": c.fps, "segment_size": c.segment,
            "input": c.input, "image_size": c.image_size if c.input == "frames" else None,
            "classes": list(c.classes), "background": BACKGROUND}


def check_onnx_matches(backend, model: ActionModel, path) -> None:
    """Refuse an exported graph whose metadata disagrees with the model the decoder is built from."""
    expected = export_metadata(model)
    check_metadata(backend.metadata, {k: expected[k] for k in ("task", "fps", "segment_size", "input", "classes")},
                   path, "memstream export action")


def split_outputs(outputs, index: int) -> dict[str, np.ndarray]:
    """Row ``index`` of a step's outputs (NamedTuple of tensors or of numpy arrays) -> per-frame numpy arrays."""
    return {name: to_numpy(getattr(outputs, name))[index] for name in OUTPUT_FIELDS}


class _ActionStreamDecoder:
    """Runner decoder: frame times from the segment, emission at the segment's end."""

    def __init__(self, task: ActionTask) -> None:
        self.decoder = OnlineActionDecoder(task.classes, task.fps, task.decoder_config)

    def update(self, outputs: dict[str, np.ndarray], segment: Segment) -> list[dict]:
        n = segment.num_valid
        if segment.times is not None:
            times = np.asarray(segment.times, dtype=np.float64)
        else:
            times = segment.start + np.arange(len(segment.valid)) / segment.rate
        emitted = float(times[n - 1]) + 1.0 / segment.rate if n else segment.start
        return self.decoder.update(outputs, times, n, emitted)

    def flush(self) -> list[dict]:
        return self.decoder.flush()


class ActionTask:
    """Online action localization for :class:`memstream.pipelines.runner.StreamRunner`.

    Args:
        model: an :class:`ActionModel` taking frames; default: loaded from ``checkpoint`` or the bundled one.
        decoder: event rules (:class:`DecoderConfig`).
        overlay_width: width the overlay video is drawn at (the model's frames are small).

    ``encode``: B segments -> x (B, T, H, W, 3) uint8, mask (B, T); ``split``: row -> per-frame numpy arrays.
    """

    name = MODEL_KIND
    kind = "video"

    def __init__(self, model: ActionModel | None = None, *, checkpoint: str | Path | None = None,
                 decoder: DecoderConfig | None = None, overlay_width: int = 384) -> None:
        if model is None:
            model, _ = load_action_model(checkpoint)
        if model.cfg.input != "frames":
            raise ValueError("ActionTask: this model takes precomputed features, not video; evaluate it with "
                             "`memstream eval action --features DIR`")
        self.model = model.eval()
        cfg = model.cfg
        self.fps = self.rate = self.sample_fps = cfg.fps
        self.segment_size = cfg.segment
        self.frame_size = (cfg.image_size, cfg.image_size)
        self.classes = list(cfg.classes)
        self.decoder_config = decoder or DecoderConfig()
        self.overlay_width = overlay_width
        self._timelines: dict[str, list[dict]] = {}

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.stack([s.data for s in segments]))
        mask = torch.from_numpy(np.stack([s.valid for s in segments]))
        return x, mask

    def split(self, outputs, index: int) -> dict[str, np.ndarray]:
        return split_outputs(outputs, index)

    def new_decoder(self, stream_id: str) -> _ActionStreamDecoder:
        return _ActionStreamDecoder(self)

    def end_stream(self, stream_id: str) -> None:
        """The runner is done with the stream: what the overlay kept for it goes."""
        self._timelines.pop(stream_id, None)

    def export_metadata(self) -> dict:
        return export_metadata(self.model)

    def check_backend(self, backend, path) -> None:
        check_onnx_matches(backend, self.model, path)

    def draw(self, frame: np.ndarray, events: list[dict], index: int = 0, stream: str = "") -> np.ndarray:
        """The frame enlarged to ``overlay_width``, the frame's class and score on top, a strip of the stream's
        emitted events (their first-ranked class, the last 60 s) at the bottom."""
        timeline = self._timelines.setdefault(stream, [])
        if index == 0:
            timeline.extend(e for e in events if e.get("type") == "action" and e.get("rank", 1) == 1)
            del timeline[:-200]
        frames = next((e for e in events if e.get("type") == "frames"), None)
        return draw_action_overlay(frame, frames, index, timeline, self.classes, self.fps, self.overlay_width)


@torch.inference_mode()
def localize(backend, x: np.ndarray, model_cfg: ActionConfig, decoder: DecoderConfig | None = None,
             times: np.ndarray | None = None) -> dict:
    """One whole video through ``backend.step`` segment by segment, as a live stream would run.

    x: (N, H, W, 3) uint8 frames or (N, C) features at the model's rate; times: (N,) frame times (default
    i / fps). Returns ``{"events": action events, "class_probs": (N, 1 + C), "segments": n}``.
    """
    t, fps = model_cfg.segment, model_cfg.fps
    n = len(x)
    if times is None:
        times = np.arange(n) / fps
    padded_n = -(-n // t) * t
    data = np.zeros((padded_n, *x.shape[1:]), dtype=x.dtype)
    data[:n] = x
    valid = np.arange(padded_n) < n
    frame_times = np.concatenate([times, times[-1] + (np.arange(padded_n - n) + 1) / fps]) if n else np.zeros(0)
    state = backend.init_state(1)
    reset = torch.zeros(1, dtype=torch.bool)
    dec = OnlineActionDecoder(list(model_cfg.classes), fps, decoder)
    events, probs = [], []
    for i in range(0, padded_n, t):
        xb = torch.from_numpy(np.ascontiguousarray(data[i:i + t]))[None]
        mb = torch.from_numpy(valid[i:i + t])[None]
        outputs, state = backend.step(xb, state, reset, mb)
        out = split_outputs(outputs, 0)
        k = int(valid[i:i + t].sum())
        probs.append(out["class_probs"][:k])
        emitted = float(frame_times[i + k - 1]) + 1.0 / fps
        events += [e for e in dec.update(out, frame_times[i:i + t], k, emitted) if e["type"] == "action"]
    events += [e for e in dec.flush() if e["type"] == "action"]
    empty = np.zeros((0, 1 + len(model_cfg.classes)), np.float32)
    return {"events": events, "class_probs": np.concatenate(probs) if probs else empty, "segments": padded_n // t}
