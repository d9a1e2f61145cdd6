"""Anomaly detection as a runner task (cameras, videos, image folders), image scoring, export and `run`.

``AnomalyTask`` feeds segments of frames to :class:`memstream.models.anomaly.AnomalyModel`'s step (or its
exported graph). Each stream's decoder calibrates its threshold **in the stream**: the scores of the first
``calibration_s`` seconds (assumed normal; or a user's normal clip given with ``--calibrate``) set
``threshold = mean + k * std`` of that stream's frame scores; every later frame gets an ``anomaly`` event with
its score, the threshold and a verdict. The threshold never enters the exported graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from memstream.export.backend import to_numpy
from memstream.models import check_metadata, load_model
from memstream.models.anomaly import AnomalyConfig, AnomalyModel
from memstream.pipelines.segmenter import Segment
from torch import Tensor

MODEL_KIND = "anomaly"
BUNDLED = "anomaly-small"


def bundled_anomaly_dir() -> Path:
    import memstream.models

    return Path(memstream.models.__file__).parent / "bundled" / BUNDLED


def load_anomaly_model(directory: str | Path | None = None) -> tuple[AnomalyModel, dict]:
    return load_model(directory if directory is not None else bundled_anomaly_dir(), MODEL_KIND,
                      lambda d: AnomalyModel(AnomalyConfig.from_dict(d)))


def export_metadata(model: AnomalyModel) -> dict:
    c = model.cfg
    return {"task": MODEL_KIND, "kind": "video", "segment_size": c.segment, "image_size": c.image_size,
            "score": c.score, "temporal": c.temporal is not None}


def check_onnx_matches(backend, model: AnomalyModel, path) -> None:
    expected = export_metadata(model)
    check_metadata(backend.metadata, expected, path, "memstream export anomaly")


def export_anomaly(model: AnomalyModel, path: str | Path, opset: int | None = None):
    from memstream.export import DEFAULT_OPSET, export_step

    s, t = model.cfg.image_size, model.cfg.segment
    x = torch.zeros(2, t, s, s, 3, dtype=torch.uint8)
    return export_step(model.eval(), path, x, opset=opset or DEFAULT_OPSET, metadata=export_metadata(model))


def model_backend_for(model: AnomalyModel, kind: str, threads: int | None = None):
    from memstream.pipelines.launch import model_backend

    return model_backend(model, kind, export=export_anomaly, check=check_onnx_matches, threads=threads)


@torch.inference_mode()
def score_images(backend, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, 3) uint8 at the model's size -> (maps (N, S, S) float32, image scores (N,)), each image
    on its own (a fresh state: no temporal context). ``backend``: TorchBackend/OnnxBackend of a model whose
    segment is 1, or an :class:`AnomalyModel` (its spatial part, any segment)."""
    maps, scores = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))
        if isinstance(backend, AnomalyModel):
            m, s, _ = backend.eval().spatial(x)
        else:
            state = backend.init_state(len(x))
            out, _ = backend.step(x.unsqueeze(1), state, torch.ones(len(x), dtype=torch.bool))
            m, s = out.anomaly_map[:, 0], out.image_score[:, 0]
        maps.append(m.float().numpy())
        scores.append(s.float().numpy())
    return np.concatenate(maps), np.concatenate(scores)


@torch.inference_mode()
def score_video(backend, frames: np.ndarray, segment: int) -> dict[str, np.ndarray]:
    """One video's frames (F, S, S, 3) uint8 streamed segment by segment from a fresh state ->
    per-frame ``score``, ``image_score`` and ``temporal`` (F,) float32 (the last segment padded and masked)."""
    n = len(frames)
    pad = (-n) % segment
    x = np.concatenate((frames, np.zeros((pad, *frames.shape[1:]), frames.dtype))) if pad else frames
    mask = np.arange(len(x)) < n
    state = backend.init_state(1)
    out: dict[str, list] = {"score": [], "image_score": [], "temporal": []}
    for i in range(0, len(x), segment):
        o, state = backend.step(torch.from_numpy(np.ascontiguousarray(x[i:i + segment])).unsqueeze(0), state,
                                torch.tensor([i == 0]), torch.from_numpy(mask[i:i + segment]).unsqueeze(0))
        for k in out:
            out[k].append(getattr(o, k)[0].float().numpy())
    return {k: np.concatenate(v)[:n] for k, v in out.items()}


class _AnomalyStreamDecoder:
    """Per-stream threshold calibration and one ``anomaly`` event per frame."""

    def __init__(self, task: AnomalyTask) -> None:
        self.task = task
        self.calibration: list[float] = list(task.normal_scores)
        self.threshold: float | None = task.threshold
        self.last_map: np.ndarray | None = None
        if self.threshold is None and len(self.calibration) >= task.min_calibration:
            self._set_threshold()

    def _set_threshold(self) -> None:
        s = np.asarray(self.calibration)
        self.threshold = float(s.mean() + self.task.k_std * max(s.std(), 1e-3))

    def update(self, outputs: dict[str, np.ndarray], segment: Segment) -> list[dict]:
        events = []
        n = segment.num_valid
        times = segment.times if segment.times is not None else segment.start + np.arange(len(segment.valid)) / \
            segment.rate
        for i in range(n):
            score = float(outputs["score"][i])
            event = {"type": "anomaly", "time": round(float(times[i]), 3), "score": round(score, 4),
                     "image_score": round(float(outputs["image_score"][i]), 4),
                     "temporal": round(float(outputs["temporal"][i]), 4)}
            if self.threshold is None:
                self.calibration.append(score)
                event["calibrating"] = True
                if len(self.calibration) >= self.task.min_calibration and float(times[i]) >= self.task.calibration_s:
                    self._set_threshold()
            else:
                event["threshold"] = round(self.threshold, 4)
                event["anomalous"] = score > self.threshold
            events.append(event)
        self.last_map = outputs["anomaly_map"][:n]
        return events

    def flush(self) -> list[dict]:
        return []


class AnomalyTask:
    """Anomaly detection for :class:`memstream.pipelines.runner.StreamRunner` (see the module docstring).

    Args:
        model: an :class:`AnomalyModel`; default: loaded from ``checkpoint`` or the bundled one.
        calibration_s: seconds at a stream's start whose scores set its threshold.
        k_std: threshold = mean + k_std * std of the calibration scores.
        threshold: a fixed threshold instead (no calibration). normal_scores: scores of a user's normal clip.
    """

    name = MODEL_KIND
    kind = "video"

    def __init__(self, model: AnomalyModel | None = None, *, checkpoint: str | Path | None = None,
                 calibration_s: float = 5.0, k_std: float = 4.0, threshold: float | None = None,
                 normal_scores: list[float] | None = None, overlay_width: int = 384, fps: float | None = None) -> None:
        if model is None:
            model, _ = load_anomaly_model(checkpoint)
        self.model = model.eval()
        self.segment_size = model.cfg.segment
        self.frame_size = (model.cfg.image_size, model.cfg.image_size)
        self.rate = fps or 8.0
        self.sample_fps = fps
        self.calibration_s, self.k_std, self.threshold = calibration_s, k_std, threshold
        self.normal_scores = list(normal_scores or [])
        self.min_calibration = 8
        self.overlay_width = overlay_width
        self._decoders: dict[str, _AnomalyStreamDecoder] = {}

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        return (torch.from_numpy(np.stack([s.data for s in segments])),
                torch.from_numpy(np.stack([s.valid for s in segments])))

    def split(self, outputs, index: int) -> dict[str, np.ndarray]:
        return {name: to_numpy(getattr(outputs, name))[index] for name in outputs._fields}

    def new_decoder(self, stream_id: str) -> _AnomalyStreamDecoder:
        decoder = _AnomalyStreamDecoder(self)
        self._decoders[stream_id] = decoder
        return decoder

    def end_stream(self, stream_id: str) -> None:
        """The runner is done with the stream: what the overlay kept for it goes."""
        self._decoders.pop(stream_id, None)

    def export_metadata(self) -> dict:
        return export_metadata(self.model)

    def check_backend(self, backend, path) -> None:
        check_onnx_matches(backend, self.model, path)

    def draw(self, frame: np.ndarray, events: list[dict], index: int = 0, stream: str = "") -> np.ndarray:
        """The frame with its heat map blended in, the score and verdict on top, enlarged to overlay_width."""
        decoder = self._decoders.get(stream)
        scale = self.overlay_width / frame.shape[1]
        size = (self.overlay_width, int(round(frame.shape[0] * scale)))
        out = cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST)
        mine = [e for e in events if e.get("type") == "anomaly"]
        if decoder is not None and decoder.last_map is not None and index < len(decoder.last_map):
            heat = np.clip(decoder.last_map[index] / 8.0, 0.0, 1.0)  # standardised map: 8 sd = full red
            colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            out = cv2.addWeighted(out, 0.6, cv2.resize(colour, size), 0.4, 0)
        if index < len(mine):
            e = mine[index]
            verdict = "calibrating" if e.get("calibrating") else ("ANOMALY" if e.get("anomalous") else "normal")
            colour = (255, 60, 60) if e.get("anomalous") else (255, 255, 255)
            text = f"{e['score']:.1f} {verdict}" + (f" (thr {e['threshold']:.1f})" if "threshold" in e else "")
            cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        return out


def cli_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream export anomaly", description=(
        "Export the anomaly model's step to ONNX: frames (B, T, S, S, 3) uint8 + state -> anomaly map, image "
        "score, temporal score, frame score + state. Thresholds stay outside the graph."))
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled anomaly-small)")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int)
    args = p.parse_args(argv)
    model, _ = load_anomaly_model(args.checkpoint)
    export_anomaly(model, args.out, args.opset)
    print(json.dumps({"out": args.out, **export_metadata(model)}))
    return 0


RUN_EXAMPLES = """\
examples:
  memstream run anomaly                                   # the bundled model on the bundled sample video
  memstream run anomaly --source line.mp4 --out runs/line --overlay runs/line/heat.mp4
  memstream run anomaly --source 0 --calibration 10 --view   # a camera: the first 10 s set the threshold
  memstream run anomaly --source parts/ --threshold 6.0   # an image folder with a fixed threshold
"""


def cli_run(argv: list[str]) -> int:
    from memstream.pipelines.launch import add_run_arguments, run_from_args, specs_from_args

    p = argparse.ArgumentParser(prog="memstream run anomaly", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RUN_EXAMPLES, description=(
                                    "Anomaly score and heat map per frame, as JSON Lines while the stream runs; "
                                    "the threshold is calibrated on the stream's first seconds (or --calibrate)."))
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled anomaly-small)")
    p.add_argument("--calibration", type=float, default=5.0, help="seconds at a stream's start that set the "
                                                                  "threshold (assumed normal)")
    p.add_argument("--k-std", type=float, default=4.0, help="threshold = mean + k * std of the calibration scores")
    p.add_argument("--threshold", type=float, help="a fixed threshold instead of calibration")
    p.add_argument("--calibrate", help="a normal clip whose scores set the threshold before the stream starts")
    p.add_argument("--fps", type=float, help="sample the source at this rate (default: every frame)")
    args = p.parse_args(argv)
    if not args.source and not args.streams:
        args.source = [str(bundled_anomaly_dir() / "sample.mp4")]
    normal = None
    task = AnomalyTask(checkpoint=args.checkpoint, calibration_s=args.calibration, k_std=args.k_std,
                       threshold=args.threshold, fps=args.fps)
    if args.calibrate:
        from memstream.pipelines.launch import stream

        normal = [e["score"] for r in stream(AnomalyTask(task.model, calibration_s=0, threshold=0.0), args.calibrate)
                  for e in r.events if e.get("type") == "anomaly"]
        if not normal:
            raise ValueError(f"--calibrate {args.calibrate}: no frames scored")
        task.normal_scores = normal
        print(f"calibrated on {len(normal)} frames of {args.calibrate}", file=sys.stderr)
    return run_from_args(task, specs_from_args(args), args)
