"""``memstream bench anomaly``: with and without memory, on real and synthetic data, and speed, in one JSON object.

- **Real data** (``../shared/realdata/anomaly``: reduced MVTec AD hazelnut and transistor, 50 normal training
  images each): per category, a model is trained by the same recipe as ``memstream train anomaly`` (``--steps``
  masked-autoencoder steps) *with memory* (memory slots in the encoder, the feature bank; the preset's score)
  and *without memory* (no slots, reconstruction score only); the with-memory model is also scored by each
  score alone and by their fusion, so the figures say which works best. Image and pixel AUROC on the
  category's test images (2 good, 8 defective: coarse figures; ``_ci95``: the 95 % stratified-bootstrap
  interval of the headline image AUROC).
- **Synthetic held-out** (``memstream data synth-defects``): one with-memory model per image category, image
  AUROC per category and their mean, with the mean's 95 % interval (each category's test images resampled on
  their own): a seed's default set of 60 test images per category leaves the mean about +-0.03 uncertain, a
  larger ``--test-good``/``--test-defect`` set less.
- **Video**: the bundled (or given) video model's frame AUROC on the synthetic test videos, against the same
  model whose temporal core is retrained with ``memory="none"`` (it sees only the current 4-frame segment).
- **Speed**: frames per second of the video model's step (segments of 4 frames), PyTorch vs ONNX Runtime,
  interleaved rounds on the same frames.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHORT = {"features": "features", "reconstruction": "rec", "fused": "fused", "position": "position"}  # -> _evaluate key
GOALS = {"image_auroc_real": 0.9, "image_auroc_synthetic": 0.95}
REAL = ("hazelnut_reduced", "transistor_reduced")
# test images scored at once: bounds the maps and the autoencoder's passes in memory (before the eager bank search
# went in blocks, a whole 260-image test category at once would have held 34 GB of distances)
EVAL_BATCH = 16


def _evaluate(model, dataset) -> tuple[dict, dict]:
    """A category model on its test images -> (per score: image AUROC with its 95 % bootstrap interval, pixel
    AUROC; per score: the (labels, image scores) the intervals of a mean over categories resample)."""
    from memstream.pipelines.anomaly import load_images, raw_maps_in_batches
    from memstream.pipelines.anomaly_data import load_mask
    from memstream.pipelines.anomaly_metrics import image_auroc, image_auroc_interval, pixel_auroc

    s = model.cfg.image_size
    images = load_images([t.path for t in dataset.test], s)
    masks = np.stack([load_mask(t.mask_path, s) if t.mask_path else np.zeros((s, s), bool) for t in dataset.test])
    labels = [t.label for t in dataset.test]
    with torch.inference_mode():
        raw = raw_maps_in_batches(model.eval(), images, batch=EVAL_BATCH)
    out = {SHORT[name]: model.standardise(name, m) for name, m in raw.items()}
    if "rec" in out and "features" in out:
        out["fused"] = out["rec"] + out["features"]
    scored = {k: (np.array(labels), m.flatten(1).amax(1).numpy()) for k, m in out.items()}
    figures = {k: {"image_auroc": round(image_auroc(*scored[k]), 4),
                   "image_auroc_ci95": [round(v, 4) for v in image_auroc_interval([scored[k]])],
                   "pixel_auroc": round(pixel_auroc(masks, m.numpy()), 4)} for k, m in out.items()}
    return figures, scored


def _train(category_dir: Path, out: Path, steps: int, memory: bool, threads: int) -> object:
    from memstream.models import build
    from memstream.pipelines.anomaly import load_images, train_anomaly
    from memstream.pipelines.anomaly_data import read_mvtec

    torch.manual_seed(0)
    overrides = {"no_temporal": True} if memory else {"no_temporal": True, "memory_slots": 0, "score": "reconstruction"}
    model = build("anomaly-small", **overrides)
    dataset = read_mvtec(category_dir)
    images = load_images([t.path for t in dataset.train], model.cfg.image_size)
    train_anomaly(model, images, [], out, steps=steps, batch=8, threads=threads, log_every=max(1, steps // 4),
                  extra={"preset": "anomaly-small", "command": f"memstream bench anomaly (category {category_dir})",
                         "trained_on": f"{len(images)} normal images of {category_dir}"})
    return model, dataset


def real_and_synthetic(realdata: Path, synthetic: Path | None, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="memstream-bench-anomaly-") as work:  # the category models' folders
        return _real_and_synthetic(realdata, synthetic, steps, threads, Path(work))


def _real_and_synthetic(realdata: Path, synthetic: Path | None, steps: int, threads: int, work: Path) -> dict:
    out: dict = {}
    for name in REAL:
        folder = realdata / "anomaly" / name
        if not folder.is_dir():
            out[f"real_{name}"] = f"skipped: {folder} not found"
            continue
        short = name.removesuffix("_reduced")
        model, dataset = _train(folder, work / short, steps, memory=True, threads=threads)
        with_memory, _ = _evaluate(model, dataset)
        model0, _ = _train(folder, work / f"{short}-no-memory", steps, memory=False, threads=threads)
        without, _ = _evaluate(model0, dataset)
        headline = with_memory[SHORT[model.cfg.score]]
        out[f"image_auroc_{short}"] = headline["image_auroc"]
        out[f"image_auroc_{short}_ci95"] = headline["image_auroc_ci95"]
        out[f"pixel_auroc_{short}"] = headline["pixel_auroc"]
        out[f"image_auroc_{short}_no_memory"] = without["rec"]["image_auroc"]
        out[f"pixel_auroc_{short}_no_memory"] = without["rec"]["pixel_auroc"]
        out[f"image_auroc_{short}_features_only"] = with_memory["features"]["image_auroc"]
        out[f"pixel_auroc_{short}_features_only"] = with_memory["features"]["pixel_auroc"]
        out[f"image_auroc_{short}_reconstruction_only"] = with_memory["rec"]["image_auroc"]
        out[f"image_auroc_{short}_fused"] = with_memory["fused"]["image_auroc"]
        if "position" in with_memory:
            out[f"image_auroc_{short}_position"] = with_memory["position"]["image_auroc"]
            out[f"pixel_auroc_{short}_position"] = with_memory["position"]["pixel_auroc"]
    if synthetic is not None:
        from memstream.pipelines.anomaly_data import find_categories
        from memstream.pipelines.anomaly_metrics import image_auroc_interval

        per, scored = {}, {}
        for folder in find_categories(synthetic):
            model, dataset = _train(folder, work / f"synth-{folder.name}", steps, memory=True, threads=threads)
            per[folder.name], scored[folder.name] = _evaluate(model, dataset)
        out["synthetic"] = per
        for score in ("fused", "rec", "features", "position"):
            if all(score in v for v in per.values()):
                out[f"image_auroc_synthetic_{score}"] = round(float(np.mean([v[score]["image_auroc"]
                                                                             for v in per.values()])), 4)
        headline = SHORT[model.cfg.score]
        out["image_auroc_synthetic"] = out[f"image_auroc_synthetic_{headline}"]
        # each category resampled on its own: a goal met by a margin smaller than this interval is not settled
        out["image_auroc_synthetic_ci95"] = [round(v, 4) for v in image_auroc_interval([s[headline]
                                                                                       for s in scored.values()])]
    return out


def _event_of_frame(labels: dict) -> np.ndarray:
    """A test video's labels -> each frame's event type ('' for normal frames)."""
    kind = np.full(len(labels["frame_labels"]), "", dtype=object)
    for e in labels.get("events", []):
        kind[e["start_frame"]:e["end_frame"] + 1] = e["type"]
    return kind


def video(synthetic: Path, checkpoint: str | None, temporal_steps: int, threads: int) -> dict:
    """Frame AUROC of the video model vs the same model with its temporal core retrained without memory."""
    from memstream.export import TorchBackend
    from memstream.models.anomaly import AnomalyConfig, AnomalyModel
    from memstream.pipelines.anomaly import read_video_frames, train_anomaly
    from memstream.pipelines.anomaly_metrics import frame_auroc
    from memstream.pipelines.anomaly_task import load_anomaly_model, score_video

    model, _ = load_anomaly_model(checkpoint)
    if model.cfg.temporal is None:
        return {"video": "skipped: the model has no temporal memory"}
    labels = json.loads((synthetic / "video" / "labels.json").read_text())
    videos = labels.get("videos", labels)
    size = model.cfg.image_size
    test = {n: v for n, v in videos.items() if v.get("split") == "test"}
    train_videos = [read_video_frames(synthetic / "video" / v["file"], size) for v in videos.values()
                    if v.get("split") == "train"]
    frames = {n: read_video_frames(synthetic / "video" / v["file"], size) for n, v in test.items()}
    torch.manual_seed(0)
    cfg = model.cfg.replace(temporal=model.cfg.temporal.replace(memory="none"))
    plain = AnomalyModel(AnomalyConfig.from_dict(cfg.to_dict()))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("core.")}, strict=False)
    images = np.concatenate([v[::4] for v in train_videos])
    with tempfile.TemporaryDirectory(prefix="memstream-bench-video-") as work:
        train_anomaly(plain, images, train_videos, work, steps=0, temporal_steps=temporal_steps, batch=8,
                      threads=threads, spatial=False, log_every=max(1, temporal_steps // 4))
    out: dict = {"frame_auroc_video_by_event": {}}
    y = np.concatenate([np.asarray(test[n]["frame_labels"]) for n in frames])
    kind = np.concatenate([_event_of_frame(test[n]) for n in frames])
    for key, m in (("", model), ("_no_memory", plain)):
        backend = TorchBackend(m)
        scores = {n: score_video(backend, f, m.cfg.segment) for n, f in frames.items()}
        for part in ("score", "image_score", "temporal"):
            s = np.concatenate([scores[n][part] for n in frames])
            name = "frame_auroc_video" + ("" if part == "score" else f"_{part}") + key
            out[name] = round(frame_auroc(y, s), 4)
            if part != "image_score":  # each event type's frames against all normal frames
                out["frame_auroc_video_by_event"][part + key] = {
                    e: round(frame_auroc(kind[(kind == e) | (y == 0)] == e, s[(kind == e) | (y == 0)]), 4)
                    for e in sorted(set(kind[y == 1]))}
    out["video_test_frames"] = int(sum(len(f) for f in frames.values()))
    return out


def speed(synthetic: Path, checkpoint: str | None, rounds: int = 2, threads: int = 2) -> dict:
    from memstream.export import TorchBackend
    from memstream.pipelines.anomaly import read_video_frames
    from memstream.pipelines.anomaly_task import load_anomaly_model, model_backend_for, score_video

    torch.set_num_threads(threads)
    model, _ = load_anomaly_model(checkpoint)
    clip = sorted((synthetic / "video" / "test").glob("*.mp4"))[0]
    frames = read_video_frames(clip, model.cfg.image_size)[:96]
    backends = {"torch": TorchBackend(model), "onnx": model_backend_for(model, "onnx", threads)}
    for b in backends.values():
        score_video(b, frames[:8], model.cfg.segment)
    totals = dict.fromkeys(backends, 0.0)
    for _ in range(rounds):
        for name, b in backends.items():
            start = time.perf_counter()
            score_video(b, frames, model.cfg.segment)
            totals[name] += time.perf_counter() - start
    out = {f"fps_{k}": round(len(frames) * rounds / v, 1) for k, v in totals.items()}
    out.update(speed_frames=len(frames), image_size=model.cfg.image_size, threads=threads,
               onnx_over_torch=round(out["fps_onnx"] / out["fps_torch"], 2))
    return out


def cli_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream bench anomaly", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a memstream data synth-defects folder (synthetic categories and video)")
    p.add_argument("--checkpoint", help="the video model (default: the bundled anomaly-small)")
    p.add_argument("--realdata", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "realdata"))
    p.add_argument("--steps", type=int, default=300, help="masked-autoencoder steps per category model")
    p.add_argument("--temporal-steps", type=int, default=3000,
                   help="temporal steps of the no-memory video model (the bundled model's: 3000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", action="append", default=[], choices=("images", "video", "speed"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    synthetic = Path(args.data) if args.data else None
    result: dict = {}
    if "images" not in args.skip:
        result.update(real_and_synthetic(Path(args.realdata), synthetic, args.steps, args.threads))
    if synthetic is not None and "video" not in args.skip:
        result.update(video(synthetic, args.checkpoint, args.temporal_steps, args.threads))
    if synthetic is not None and "speed" not in args.skip:
        result.update(speed(synthetic, args.checkpoint, threads=args.threads))
    goals = {}
    for short in ("hazelnut", "transistor"):
        if f"image_auroc_{short}" in result:
            goals[f"image_auroc_{short}>=0.9"] = result[f"image_auroc_{short}"] >= GOALS["image_auroc_real"]
    if "image_auroc_synthetic" in result:
        goals["image_auroc_synthetic>=0.95"] = result["image_auroc_synthetic"] >= GOALS["image_auroc_synthetic"]
    if "frame_auroc_video" in result:
        goals["video_memory>no_memory"] = result["frame_auroc_video"] > result["frame_auroc_video_no_memory"]
    result["goals"] = goals
    print(json.dumps(result))
    return 0
