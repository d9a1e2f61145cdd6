"""``memstream eval anomaly``: image AUROC, pixel AUROC and AUPRO of an anomaly model on MVTec AD layout data,
and frame AUROC on annotated test videos.

Images (``--data``: a category folder or a folder of categories, :mod:`memstream.pipelines.anomaly_data`): every
test image is scored on its own (:func:`memstream.pipelines.anomaly_task.score_images`) at the model's image size;
masks are resized to that size (nearest neighbour). Per category: image AUROC over all test images, pixel AUROC
and AUPRO@0.3 over the images with a mask plus the good images (all-normal masks); ``mean`` over categories as
:func:`memstream.pipelines.anomaly_metrics.summarise` takes it. Image AUROC comes with its 95 % interval, a
stratified bootstrap of the test images (:func:`memstream.pipelines.anomaly_metrics.image_auroc_interval`; for
``mean``, each category resampled on its own): on a category of 20 good and 40 defect images scoring 0.85-0.95,
it is 0.13-0.19 wide. One checkpoint serves every category
(``--checkpoint``, default the bundled one), or ``--checkpoint-per-category DIR`` loads ``DIR/<category>/``.

Video (``--video``, or on its own when ``--data`` holds ``video/labels.json`` and no categories): each test video
of a synth-defects labels file is streamed from a fresh state (:func:`memstream.pipelines.anomaly_task.score_video`);
frame AUROC of ``score``, ``image_score`` and ``temporal`` over all frames, and over the frames of appearance
events (or of temporal events) against the normal frames. The video model is ``--checkpoint``'s.

Output: a table, or with ``--json`` one JSON object ``{"categories": {name: {image_auroc, image_auroc_ci95 (low,
high), pixel_auroc, aupro, images, anomalous}}, "mean": {...}, "video": {...}}`` (undefined values are null)
and nothing else on stdout; ``--plot`` writes a PNG (image-level ROC curves, heat maps of the worst cases). A
progress bar over images and videos goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from memstream.pipelines.anomaly_data import AnomalyDataset, find_categories, load_image, load_mask, read_mvtec
from memstream.pipelines.anomaly_metrics import (
    aupro,
    frame_auroc,
    image_auroc,
    image_auroc_interval,
    pixel_auroc,
    summarise,
)

log = logging.getLogger(__name__)

SIGNALS = ("score", "image_score", "temporal")  # per-frame outputs of score_video
EVENT_KINDS = ("appearance", "temporal")
WORST = 4  # heat maps of each kind (highest-scoring good, lowest-scoring defect) in the plot


@dataclass
class Scored:
    """What the plot needs besides the metrics: per-category labels and scores, per-signal frame labels and
    scores, and the worst cases ``(score, title, image (S, S, 3), map (S, S), mask (S, S))`` of each kind."""

    images: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    frames: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    good: list[tuple] = field(default_factory=list)
    defect: list[tuple] = field(default_factory=list)


def labels_file(data) -> Path | None:
    """``data/video/labels.json`` or ``data/labels.json`` (a synth-defects set or its video folder), else None."""
    found = [p for p in (Path(data) / "video" / "labels.json", Path(data) / "labels.json") if p.is_file()]
    return found[0] if found else None


def _progress(total: int):
    """A rich progress bar on stderr when it is a terminal (else None); ``.advance(n, text)`` moves it."""
    if not sys.stderr.isatty() or total <= 0:
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(*Progress.get_default_columns(), console=Console(stderr=True), transient=True)
    task = bar.add_task("eval anomaly", total=total)
    bar.start()
    bar.step = lambda n, text: bar.update(task, advance=n, description=f"eval anomaly {text}")
    return bar


def image_scorer(model, backend: str, threads: int | None = None):
    """What :func:`score_images` takes: the model itself (torch; its spatial part for any segment), or its ONNX
    graph, which scores single images only for a model without temporal memory (segment 1)."""
    if backend == "torch":
        return model
    if model.cfg.segment != 1:
        raise ValueError(f"--backend onnx scores images with a model of segment 1 only; this checkpoint has temporal "
                         f"memory (segment {model.cfg.segment}): evaluate its images with --backend torch")
    from memstream.pipelines.anomaly_task import model_backend_for

    return model_backend_for(model, backend, threads)


def evaluate_category(dataset: AnomalyDataset, scorer, size: int, *, batch: int = 8, bar=None,
                      scored: Scored | None = None) -> dict:
    """Score ``dataset.test`` with ``scorer`` (see :func:`image_scorer`) at ``size`` -> ``{image_auroc,
    image_auroc_ci95, pixel_auroc, aupro, images, anomalous}`` (``image_auroc_ci95``: the 95 % bootstrap interval,
    see :func:`image_auroc_interval`); ``scored`` collects the scores and worst cases for the plot."""
    from memstream.pipelines.anomaly_task import score_images

    test = dataset.test
    images, maps, scores = [], [], []
    for i in range(0, len(test), batch):
        chunk = np.stack([load_image(s.path, size) for s in test[i:i + batch]])  # (b, S, S, 3)
        m, s = score_images(scorer, chunk, batch)
        images.append(chunk)
        maps.append(m)
        scores.append(s)
        if bar is not None:
            bar.step(len(chunk), dataset.category)
    images, maps, scores = np.concatenate(images), np.concatenate(maps), np.concatenate(scores)
    labels = np.array([s.label for s in test])
    masks = np.stack([load_mask(s.mask_path, size) if s.mask_path is not None else np.zeros((size, size), bool)
                      for s in test])  # (N, S, S)
    pixel = np.array([s.label == 0 or s.mask_path is not None for s in test])  # images the pixel metrics use
    result = {"image_auroc": image_auroc(labels, scores), "image_auroc_ci95": image_auroc_interval([(labels, scores)]),
              "pixel_auroc": pixel_auroc(masks[pixel], maps[pixel]),
              "aupro": aupro(masks[pixel], maps[pixel], fpr_limit=0.3), "images": len(test),
              "anomalous": int(labels.sum())}
    if scored is not None:
        scored.images[dataset.category] = (labels, scores)
        for kind, picked in (("good", np.flatnonzero(labels == 0)[np.argsort(-scores[labels == 0])]),
                             ("defect", np.flatnonzero(labels == 1)[np.argsort(scores[labels == 1])])):
            getattr(scored, kind).extend((float(scores[i]), f"{dataset.category}/{test[i].defect}/{test[i].path.name}",
                                          images[i], maps[i], masks[i]) for i in picked[:WORST])
    return result


def _video_tasks(path: Path) -> list[tuple[str, Path, np.ndarray, dict[str, np.ndarray]]]:
    """The test videos of a labels file: ``(name, file, frame labels (F,), {kind: frames of its events (F,)})``."""
    try:
        doc = json.loads(path.read_text())
        videos = doc["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a synth-defects labels file ({e})") from None
    tasks = []
    for name, v in sorted(videos.items()):
        if v.get("split", "test") != "test":
            continue
        try:
            labels = np.asarray(v["frame_labels"], dtype=int)
            kinds = {k: np.zeros(len(labels), bool) for k in EVENT_KINDS}
            for e in v.get("events", []):
                if e.get("kind") in kinds:
                    kinds[e["kind"]][e["start_frame"]:e["end_frame"] + 1] = True
            tasks.append((name, path.parent / v["file"], labels, kinds))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: video {name}: bad entry ({type(e).__name__}: {e})") from None
    if not tasks:
        raise ValueError(f"{path}: no test videos")
    return tasks


def evaluate_videos(path: Path, backend, size: int, segment: int, *, bar=None, scored: Scored | None = None) -> dict:
    """Stream every test video of the labels file ``path`` through ``backend`` -> frame counts and
    ``frame_auroc[signal][all|appearance|temporal]`` (an event kind's frames against the normal frames)."""
    from memstream.pipelines.anomaly import read_video_frames
    from memstream.pipelines.anomaly_task import score_video

    tasks = _video_tasks(path)
    labels, kinds, signals = [], {k: [] for k in EVENT_KINDS}, {k: [] for k in SIGNALS}
    for name, file, y, kind in tasks:
        if not file.is_file():
            raise FileNotFoundError(f"{path}: video {name} not found: {file}")
        frames = read_video_frames(file, size)
        n = min(len(frames), len(y))
        if len(frames) != len(y):
            log.warning("%s: %d frames decoded, %d labelled: the first %d evaluated", file, len(frames), len(y), n)
        out = score_video(backend, frames[:n], segment)
        labels.append(y[:n])
        for k in EVENT_KINDS:
            kinds[k].append(kind[k][:n])
        for k in SIGNALS:
            signals[k].append(out[k])
        if bar is not None:
            bar.step(1, name)
    y = np.concatenate(labels).astype(bool)
    kind = {k: np.concatenate(v) for k, v in kinds.items()}
    subsets = {"all": np.ones(len(y), bool), **{k: ~y | (y & kind[k]) for k in EVENT_KINDS}}
    auroc = {}
    for signal, values in signals.items():
        s = np.concatenate(values)
        auroc[signal] = {name: frame_auroc(y[keep], s[keep]) for name, keep in subsets.items()}
        if scored is not None:
            scored.frames[signal] = (y, s)
    return {"videos": len(tasks), "frames": len(y), "anomalous_frames": int(y.sum()),
            **{f"{k}_frames": int((y & kind[k]).sum()) for k in EVENT_KINDS}, "frame_auroc": auroc}


def _heat_map(ax, case: tuple, norm) -> None:
    score, title, image, amap, mask = case
    ax.imshow(image)
    ax.imshow(amap, cmap="jet", alpha=0.45, norm=norm)
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.0)
    ax.set_title(f"{title}\nscore {score:.2f}", fontsize=7)
    ax.axis("off")


def plot_results(scored: Scored, path) -> Path:
    """ROC curves (image level per category; frame level per video signal) and, for images, two rows of heat
    maps: the highest-scoring good images and the lowest-scoring defect images, with the masks outlined."""
    from matplotlib.colors import Normalize
    from memstream.pipelines.anomaly_metrics import roc_curve_points
    from memstream.pipelines.figures import pyplot, save_figure

    plt = pyplot()

    good = sorted(scored.good, key=lambda c: -c[0])[:WORST]
    defect = sorted(scored.defect, key=lambda c: c[0])[:WORST]
    columns = max(len(good), len(defect))
    fig = plt.figure(figsize=(4.5 + 2.2 * columns, 4.8))
    grid = fig.add_gridspec(2, 2 + columns)
    roc = fig.add_subplot(grid[:, :2])
    curves = [(f"{n} (image)", *v) for n, v in scored.images.items()]
    curves += [(f"video {n} (frame)", *v) for n, v in scored.frames.items()]
    for name, labels, scores in curves:
        if 0 < labels.sum() < len(labels):
            fpr, tpr, _ = roc_curve_points(labels, scores)
            roc.plot(fpr, tpr, "--" if "video" in name else "-", label=f"{name} {image_auroc(labels, scores):.3f}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title("ROC")
    if roc.get_legend_handles_labels()[0]:
        roc.legend(fontsize=6, loc="lower right")
    shown = [c[3] for c in (*good, *defect)]
    norm = Normalize(min(float(m.min()) for m in shown), max(float(m.max()) for m in shown)) if shown else None
    for row, (cases, what) in enumerate(((good, "good, highest"), (defect, "defect, lowest"))):
        for col, case in enumerate(cases):
            ax = fig.add_subplot(grid[row, 2 + col])
            _heat_map(ax, case, norm)
            if col == 0:
                ax.text(-0.08, 0.5, what, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=8)
    return save_figure(fig, path)


def format_table(result: dict) -> str:
    """The result of :func:`cli_eval` as text: one row per category and ``mean``, then the video frame AUROC."""

    def num(v, width=11) -> str:
        return f"{v:{width}.3f}" if isinstance(v, float) and np.isfinite(v) else f"{'-':>{width}}"

    def interval(v) -> str:
        shown = f"[{v[0]:.3f}, {v[1]:.3f}]" if v is not None and all(np.isfinite(v)) else "-"
        return f"{shown:>14}"

    lines = []
    if result["categories"]:
        width = max(8, *(len(n) for n in result["categories"]))
        lines.append(f"{'category':<{width}}  images  anomalous  image AUROC  95% interval  pixel AUROC    AUPRO@0.3")
        rows = [*result["categories"].items(), ("mean", result["mean"])]
        for name, r in rows:
            counts = f"{r['images']:6d}  {r['anomalous']:9d}" if "images" in r else " " * 17
            image = f"{num(r.get('image_auroc'))}{interval(r.get('image_auroc_ci95'))}"
            pixels = "  ".join(num(r.get(k)) for k in ("pixel_auroc", "aupro"))
            lines.append(f"{name:<{width}}  {counts}  {image}  {pixels}")
    video = result.get("video")
    if video:
        lines.append(f"video: {video['videos']} test videos, {video['frames']} frames, {video['anomalous_frames']} "
                     f"anomalous ({video['appearance_frames']} appearance, {video['temporal_frames']} temporal)")
        lines.append("frame AUROC          all  appearance    temporal")
        for signal, r in video["frame_auroc"].items():
            lines.append(f"{signal:<12}" + "".join(num(r[k], 12) for k in ("all", *EVENT_KINDS)))
    return "\n".join(lines)


def cli_eval(argv: list[str]) -> int:
    from memstream.models.anomaly import SCORES

    p = argparse.ArgumentParser(prog="memstream eval anomaly", description=(
        "Image AUROC, pixel AUROC and AUPRO@0.3 of an anomaly model per MVTec AD layout category (and their mean); "
        "with --video the frame AUROC on the annotated test videos of a synth-defects set."))
    p.add_argument("--data", required=True, help="a category folder or a folder of categories (MVTec AD layout); "
                                                 "a synth-defects set also holds video/labels.json")
    p.add_argument("--checkpoint", help="anomaly checkpoint folder (default: the bundled one)")
    p.add_argument("--checkpoint-per-category", metavar="DIR", help="use DIR/<category>/ for each category's images")
    p.add_argument("--video", action="store_true", help="also evaluate the test videos of --data's video/labels.json")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--plot", help="write a PNG: ROC curves and heat maps of the worst cases")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--score", choices=SCORES, help="score with this instead of the checkpoint's own score (e.g. "
                                                   "position for aligned parts, features for textures)")
    args = p.parse_args(argv)
    from memstream.pipelines.anomaly_task import load_anomaly_model, model_backend_for
    from memstream.pipelines.sinks import to_json

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    labels = labels_file(args.data)
    try:
        folders = find_categories(args.data)
    except FileNotFoundError:
        if labels is None:
            raise
        folders = []  # a video set only
    categories = [read_mvtec(c) for c in folders]
    if (args.video or not categories) and labels is None:
        raise FileNotFoundError(f"{args.data}: no video/labels.json to evaluate videos with")
    videos = _video_tasks(labels) if (args.video or not categories) else []

    @functools.cache
    def model_for(directory: str | None):
        model = load_anomaly_model(directory)[0]
        return model.use_score(args.score) if args.score else model

    @functools.cache
    def scorer_for(directory: str | None):  # one ONNX export per checkpoint
        return image_scorer(model_for(directory), args.backend, args.threads)

    scored = Scored()
    bar = _progress(sum(len(d.test) for d in categories) + len(videos))
    try:
        per_category = {}
        for dataset in categories:
            directory = (str(Path(args.checkpoint_per_category) / dataset.category) if args.checkpoint_per_category
                         else args.checkpoint)
            per_category[dataset.category] = evaluate_category(dataset, scorer_for(directory),
                                                               model_for(directory).cfg.image_size,
                                                               batch=args.batch, bar=bar, scored=scored)
        result = {"categories": per_category, "mean": summarise(per_category)["mean"] if per_category else {}}
        if per_category:  # each category resampled on its own, the mean taken per replicate
            result["mean"]["image_auroc_ci95"] = image_auroc_interval(scored.images.values())
        if videos:
            model = model_for(args.checkpoint)
            backend = model_backend_for(model, args.backend, args.threads)
            result["video"] = evaluate_videos(labels, backend, model.cfg.image_size, model.cfg.segment, bar=bar,
                                              scored=scored)
    finally:
        if bar is not None:
            bar.stop()
    result["backend"] = args.backend
    if args.plot:
        result["plot"] = str(plot_results(scored, args.plot))
    if args.json:
        print(to_json(result))
    else:
        print(format_table(result))
        if args.plot:
            print(f"plot: {result['plot']}")
    return 0
