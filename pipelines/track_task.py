"""Multi-object tracking as a runner task, and whole-sequence tracking for evaluation.

``TrackTask`` feeds one frame per step to :class:`memstream.models.track.TrackModel` (or its exported graph);
each stream's decoder (:class:`memstream.pipelines.track_decoder.TrackDecoder`) assigns the frame's detections
to tracks and hands its decision back to the next step (``step_inputs``: the runner passes it as the
``assign`` input). Events: one ``tracks`` event per frame with every reported box, its id and score.

``track_sequence`` runs one MOTChallenge sequence through memstream (own detections on its images, or its
public ``det.txt`` with appearance from the images, or boxes alone when it has no images) or through the
IoU baselines, and returns MOTChallenge result rows.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import cv2
import numpy as np
import torch
from memstream.export.backend import to_numpy
from memstream.models import check_metadata, load_model
from memstream.models.track import ASSIGN_NONE, TrackConfig, TrackModel
from memstream.pipelines.mot_data import MotSequence, rows_by_frame
from memstream.pipelines.segmenter import Segment
from memstream.pipelines.track_decoder import TrackDecoder, TrackRules, load_rules
from torch import Tensor

MODEL_KIND = "track"
BUNDLED = "track-small"
OUTPUT_FIELDS = ("det_box", "det_score", "det_valid", "logp")
TRAIL = 30  # frames of trail drawn behind each id


def bundled_track_dir() -> Path:
    import memstream.models

    return Path(memstream.models.__file__).parent / "bundled" / BUNDLED


def load_track_model(directory: str | Path | None = None) -> tuple[TrackModel, dict]:
    """A checkpoint folder written by ``memstream train track`` (default: the bundled model) -> (model, config)."""
    return load_model(directory if directory is not None else bundled_track_dir(), MODEL_KIND,
                      lambda d: TrackModel(TrackConfig.from_dict(d)))


def export_metadata(model: TrackModel, public: bool = False) -> dict:
    c = model.cfg
    return {"task": MODEL_KIND, "kind": "video", "segment_size": 1, "image_size": list(c.image_size),
            "max_tracks": c.max_tracks, "max_detections": c.max_detections,
            "detections": "public" if public else "own"}


def check_onnx_matches(backend, model: TrackModel, path, public: bool = False) -> None:
    expected = export_metadata(model, public)
    check_metadata(backend.metadata, {k: expected[k] for k in ("task", "image_size", "max_tracks", "max_detections",
                                                              "detections")}, path, "memstream export track")


def split_outputs(outputs, index: int) -> dict[str, np.ndarray]:
    """Row ``index`` of a step's outputs (NamedTuple of tensors or of numpy arrays) -> numpy arrays."""
    return {name: to_numpy(getattr(outputs, name))[index] for name in OUTPUT_FIELDS}


def public_dets(rows: np.ndarray, width: int, height: int, k: int) -> np.ndarray:
    """MOTChallenge det rows of one frame -> (K, 6) normalised x1, y1, x2, y2, score, valid (best K by score)."""
    out = np.zeros((k, 6), np.float32)
    if len(rows):
        rows = rows[np.argsort(-rows[:, 6], kind="stable")][:k]
        x, y, w, h = rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]
        out[: len(rows)] = np.stack((x / width, y / height, (x + w) / width, (y + h) / height,
                                     np.clip(rows[:, 6], 0.0, 1.0), np.ones(len(rows))), axis=1)
    return out


class MemstreamTracker:
    """One stream through a backend and a :class:`TrackDecoder`: frame in, tracked boxes out.

    Args:
        backend: ``TorchBackend`` or ``OnnxBackend`` of a track model. cfg: its :class:`TrackConfig`.
        rules: decoder rules. frame_rate: the stream's frames per second. appearance: False tracks on boxes
        alone (no images; PyTorch backend only). memory: False cuts every track's memory to its last
        observation (the ablation of `memstream bench track`; PyTorch backend only).
    """

    def __init__(self, backend, cfg: TrackConfig, rules: TrackRules, frame_rate: float, *,
                 appearance: bool = True, memory: bool = True) -> None:
        self.backend, self.cfg = backend, cfg
        self.decoder = TrackDecoder(rules, cfg.max_tracks, frame_rate)
        self.state = backend.init_state(1)
        self.assign = torch.full((1, cfg.max_tracks), ASSIGN_NONE, dtype=torch.long)
        self.kwargs = {}
        if not appearance or not memory:
            if not hasattr(backend, "model"):
                raise ValueError("tracking without appearance or memory needs the PyTorch backend")
            self.kwargs = {"appearance": appearance, "memory": memory}
        self.first = True

    def update(self, frame_rgb: np.ndarray | None, dets: np.ndarray | None = None) -> list[dict]:
        """frame_rgb: (H, W, 3) uint8 at the model's size (None without appearance); dets: (K, 6) or None."""
        h, w = self.cfg.image_size
        x = torch.zeros((1, 1, h, w, 3), dtype=torch.uint8) if frame_rgb is None else \
            torch.from_numpy(np.ascontiguousarray(frame_rgb)).view(1, 1, h, w, 3)
        extra = {"assign": self.assign}
        if dets is not None:
            extra["dets"] = torch.from_numpy(dets).unsqueeze(0)
        reset = torch.tensor([self.first])
        if self.kwargs:
            with torch.inference_mode():
                out, self.state = self.backend.model.step(x, self.state, reset, None, **extra, **self.kwargs)
        else:
            out, self.state = self.backend.step(x, self.state, reset, None, **extra)
        self.first = False
        tracks, assign = self.decoder.update(*(v for v in split_outputs(out, 0).values()))
        self.assign = torch.from_numpy(assign).unsqueeze(0)
        return tracks


def make_backend(checkpoint: str | Path | None, backend: str, public: bool, threads: int | None = None):
    """-> (backend, model) for ``--backend torch|onnx`` (onnx: exported to a temporary file on first use)."""
    from memstream.pipelines.launch import model_backend
    from memstream.pipelines.track import export_track

    model, _ = load_track_model(checkpoint)
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend={backend!r} must be 'torch' or 'onnx'")
    return model_backend(model, backend, export=lambda m, p: export_track(m, p, public=public),
                         check=lambda b, m, p: check_onnx_matches(b, m, p, public), threads=threads), model


def track_sequence(seq: MotSequence, tracker: str = "memstream", checkpoint: str | Path | None = None,
                   backend: str = "torch", rules: TrackRules | str | Path | None = None, public: bool | None = None,
                   memory: bool = True, threads: int | None = None, prepared=None) -> np.ndarray:
    """Track one sequence -> MOTChallenge result rows ``frame, id, x, y, w, h, score, -1, -1, -1`` (pixels).

    ``tracker``: ``memstream``, ``iou`` (SORT settings), ``bytetrack`` (the in-project ByteTrack-style
    baseline) or ``bytetrack-peer`` (Roboflow's ByteTrack). ``public``: use ``det.txt`` (default: when the
    sequence has no images, or for the IoU trackers always). ``prepared``: a ``(backend, model)`` pair to reuse.
    """
    n = seq.info.length
    if tracker in ("iou", "sort", "bytetrack", "bytetrack-peer"):
        from memstream.pipelines.iou_tracker import run_sequence, run_sequence_supervision

        if seq.det is None:
            raise ValueError(f"sequence {seq.info.name}: the {tracker} tracker needs public detections (det/det.txt)")
        if tracker == "bytetrack-peer":
            return run_sequence_supervision(seq.det, n, seq.info.frame_rate)
        return run_sequence(seq.det, n, "sort" if tracker in ("iou", "sort") else "bytetrack")
    if tracker != "memstream":
        raise ValueError(f"tracker={tracker!r}; choose memstream, iou, bytetrack or bytetrack-peer")
    images = (seq.path / seq.info.im_dir).is_dir()
    public = (not images) if public is None else public
    if public and seq.det is None:
        raise ValueError(f"sequence {seq.info.name}: public-detection tracking needs det/det.txt")
    if not images and (not seq.info.width or not seq.info.height):
        raise ValueError(f"sequence {seq.info.name}: no images and no imWidth/imHeight in seqinfo.ini: cannot "
                         "normalise its boxes")
    be, model = prepared or make_backend(checkpoint, backend, public, threads)
    cfg = model.cfg
    rules = rules if isinstance(rules, TrackRules) else load_rules(rules, own_detections=not public)
    mot = MemstreamTracker(be, cfg, rules, seq.info.frame_rate, appearance=images, memory=memory)
    dets_by_frame = rows_by_frame(seq.det) if public else {}
    h, w = cfg.image_size
    rows = []
    frames = seq.frames() if images else ((f, None) for f in range(1, n + 1))
    for f, image in frames:
        width, height = (image.shape[1], image.shape[0]) if image is not None else (seq.info.width, seq.info.height)
        rgb = None if image is None else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
        dets = public_dets(dets_by_frame.get(f, np.zeros((0, 10))), width, height, cfg.max_detections) \
            if public else None
        for t in mot.update(rgb, dets):
            x1, y1, x2, y2 = np.asarray(t["box"]) * (width, height, width, height)
            rows.append((f, t["id"], x1, y1, x2 - x1, y2 - y1, t["score"], -1, -1, -1))
    return np.asarray(rows, np.float64).reshape(-1, 10)


class _TrackStreamDecoder:
    """Runner decoder: one ``tracks`` event per frame; keeps its ``assign`` for the next step and trails."""

    def __init__(self, task: TrackTask) -> None:
        self.decoder = TrackDecoder(task.rules, task.model.cfg.max_tracks, task.frame_rate)
        self.assign = np.full(task.model.cfg.max_tracks, ASSIGN_NONE, np.int64)
        self.trails: dict[int, deque] = {}
        self.frame = 0
        self.size: tuple[int, int] | None = None  # source (width, height), once it is open

    def source_opened(self, info) -> None:
        if info.size:
            self.size = (int(info.size[1]), int(info.size[0]))
        if info.rate and info.rate > 0:
            self.decoder.max_lost = max(1, int(round(self.decoder.rules.max_lost_s * info.rate)))

    def update(self, outputs: dict[str, np.ndarray], segment: Segment) -> list[dict]:
        if not segment.num_valid:
            return []
        tracks, self.assign = self.decoder.update(*outputs.values())
        time = float(segment.times[0]) if segment.times is not None else segment.start
        self.frame += 1
        for t in tracks:
            x1, y1, x2, y2 = t["box"]
            self.trails.setdefault(t["id"], deque(maxlen=TRAIL)).append(((x1 + x2) / 2, y2))
        if len(self.trails) > len(self.decoder.slots):  # ids the decoder has let go never come back
            live = {track.id for track in self.decoder.slots.values()}
            self.trails = {i: trail for i, trail in self.trails.items() if i in live}
        w, h = self.size or (1, 1)
        scale = np.array([w, h, w, h], np.float64)
        return [{"type": "tracks", "frame": self.frame, "time": time, "size": list(self.size) if self.size else None,
                 "tracks": [{"id": t["id"], "box": [round(v, 5) for v in t["box"]],
                             "box_px": [round(float(v), 1) for v in np.asarray(t["box"]) * scale] if self.size
                             else None, "score": round(t["score"], 4)} for t in tracks]}]

    def flush(self) -> list[dict]:
        return []


def _colour(track_id: int) -> tuple[int, int, int]:
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[2]), int(bgr[1]), int(bgr[0])  # RGB frames


class TrackTask:
    """Multi-object tracking for :class:`memstream.pipelines.runner.StreamRunner`.

    Args:
        model: a :class:`TrackModel`; default: loaded from ``checkpoint`` or the bundled one.
        rules: decoder rules (YAML path, dict or :class:`TrackRules`). frame_rate: assumed stream rate for
        ``max_lost_s`` (sources report theirs; this is the fallback). overlay_width: overlay video width.
    """

    name = MODEL_KIND
    kind = "video"

    def __init__(self, model: TrackModel | None = None, *, checkpoint: str | Path | None = None,
                 rules: TrackRules | str | Path | dict | None = None, frame_rate: float = 25.0,
                 overlay_width: int = 640) -> None:
        if model is None:
            model, _ = load_track_model(checkpoint)
        self.model = model.eval()
        self.rules = rules if isinstance(rules, TrackRules) else load_rules(rules, own_detections=True)
        self.segment_size = 1
        self.frame_size = tuple(model.cfg.image_size)
        self.rate = self.frame_rate = frame_rate
        self.sample_fps = None
        self.overlay_width = overlay_width
        self._decoders: dict[str, _TrackStreamDecoder] = {}

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.stack([s.data for s in segments]))
        mask = torch.from_numpy(np.stack([s.valid for s in segments]))
        return x, mask

    def step_inputs(self, decoders: list[_TrackStreamDecoder]) -> dict[str, Tensor]:
        return {"assign": torch.from_numpy(np.stack([d.assign for d in decoders]))}

    def split(self, outputs, index: int) -> dict[str, np.ndarray]:
        return split_outputs(outputs, index)

    def new_decoder(self, stream_id: str) -> _TrackStreamDecoder:
        decoder = _TrackStreamDecoder(self)
        self._decoders[stream_id] = decoder
        return decoder

    def end_stream(self, stream_id: str) -> None:
        """The runner is done with the stream: what the overlay kept for it goes."""
        self._decoders.pop(stream_id, None)

    def export_metadata(self) -> dict:
        return export_metadata(self.model)

    def export_inputs(self, batch: int) -> dict[str, Tensor]:
        return {"assign": torch.full((batch, self.model.cfg.max_tracks), ASSIGN_NONE, dtype=torch.long)}

    def check_backend(self, backend, path) -> None:
        check_onnx_matches(backend, self.model, path)

    def draw(self, frame: np.ndarray, events: list[dict], index: int = 0, stream: str = "") -> np.ndarray:
        """Boxes with ids and trails (the last ``TRAIL`` frames) on the frame, enlarged to ``overlay_width``."""
        scale = self.overlay_width / frame.shape[1]
        frame = cv2.resize(frame, (self.overlay_width, int(round(frame.shape[0] * scale))))
        h, w = frame.shape[:2]
        decoder = self._decoders.get(stream)
        tracks = next((e["tracks"] for e in events if e.get("type") == "tracks"), [])
        for t in tracks:
            colour = _colour(t["id"])
            x1, y1, x2, y2 = (int(round(v * s)) for v, s in zip(t["box"], (w, h, w, h), strict=True))
            cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(frame, str(t["id"]), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2)
            trail = decoder.trails.get(t["id"], ()) if decoder else ()
            points = np.array([(px * w, py * h) for px, py in trail], np.int32)
            if len(points) > 1:
                cv2.polylines(frame, [points], False, colour, 2)
        return frame
