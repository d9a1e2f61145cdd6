"""Training the anomaly model (`memstream train anomaly`) on normal images or footage only.

1. **Masked autoencoder** on normal images (an MVTec-layout category's ``train/good``, a plain folder, or frames
   of normal training videos): each step hides a random ``mask_ratio`` of every image's patches; the loss is
   the squared error of the hidden patches' pixels.
2. **Temporal memory** (video only, ``--temporal-steps``): the frame code's principal components are fitted on
   the normal training videos (:func:`fit_temporal_code`), every frame is coded once (the spatial part is
   frozen), and the core learns, on clips of codes, to predict each frame's change from the frames before it
   (Gaussian negative log-likelihood).
3. **Normality fit** (:func:`fit_normality`): the memory banks of normal patch features (PatchCore: one per
   pixel patch size, patches at every offset on their principal components, a random ``bank_size`` of them,
   each entry's spread among other images' entries; or a greedy coreset of the encoder's) from most training
   images, and the statistics that standardise the scores from the others (held out, so the bank's
   self-matches do not make normal look too normal).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from memstream.models import build, save_checkpoint
from memstream.models.anomaly import MAPS, POSITION_SHRINK, SCORES, AnomalyModel
from torch import Tensor

log = logging.getLogger(__name__)
MAX_PATCHES = 1 << 20  # normal patch features held at once while fitting the bank (a random subset per image)
PCA_SAMPLE = 20_000  # patch features the bank's principal components are fitted on
MAX_BANK_CANDIDATES = 262_144  # normal patch features the coreset picks the bank from (a random subset beyond)


def load_images(paths: list[Path], size: int) -> np.ndarray:
    from memstream.pipelines.anomaly_data import load_image

    return np.stack([load_image(p, size) for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)


def read_video_frames(path: str | Path, size: int) -> np.ndarray:
    """Every frame of a video file as the runtime decodes it, resized to ``size`` x ``size`` -> (F, S, S, 3)."""
    from memstream.pipelines.segmenter import read_video

    return read_video(path, None, size)[0]


class MaeObjective:
    """:class:`memstream.pipelines.train.Objective`: masked-patch reconstruction of normal images."""

    def __init__(self, model: AnomalyModel, images: np.ndarray, *, batch: int = 16, steps_per_epoch: int = 100,
                 extra_config: dict | None = None) -> None:
        if not len(images):
            raise ValueError("MaeObjective: no training images")
        self.model, self.images, self.batch = model, images, batch
        self.steps_per_epoch, self.extra_config = steps_per_epoch, extra_config or {}

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed * 100_003 + epoch)
        n = self.model.cfg.tokens
        keep = max(1, int(round(n * (1 - self.model.cfg.mask_ratio))))
        for k in range(self.steps_per_epoch):
            pick = rng.integers(0, len(self.images), self.batch)
            x = self.images[pick].copy()
            flip = rng.random(self.batch) < 0.5  # mirror images: cheap variety for 50-image training sets
            x[flip] = x[flip, :, ::-1]
            gain = rng.uniform(0.95, 1.05, (self.batch, 1, 1, 1))
            x = np.clip(x.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            visible = np.sort(np.argsort(rng.random((self.batch, n)), axis=1)[:, :keep], axis=1)
            if k % world == rank:
                yield {"x": torch.from_numpy(x), "visible": torch.from_numpy(visible)}

    def windows(self, batch) -> int:
        return 1

    def init_state(self, model, batch) -> None:
        return None

    def loss(self, model: AnomalyModel, batch: dict, window: int, state) -> tuple[Tensor, None, dict[str, float]]:
        x, visible = batch["x"], batch["visible"]
        tokens = model.tokens(x)
        rec = model.reconstruct(tokens, visible)
        target = model.patches(x)
        hidden = torch.ones(rec.shape[:2], dtype=torch.bool).scatter(1, visible, False)
        err = (rec - target).pow(2).mean(-1)
        loss = (err * hidden).sum() / hidden.sum()
        return loss, None, {"mse_hidden": float(loss.detach()), "samples": int(x.shape[0])}

    def checkpoint_config(self) -> dict:
        return {"model": "anomaly", "config": self.model.cfg.to_dict(), **self.extra_config}


class TemporalObjective(MaeObjective):
    """Next-change prediction (Gaussian NLL) over clips of normal videos' temporal codes (spatial part frozen:
    every frame is coded once, at construction)."""

    def __init__(self, model: AnomalyModel, videos: list[np.ndarray], *, clip_frames: int = 64, batch: int = 8,
                 steps_per_epoch: int = 100, extra_config: dict | None = None) -> None:
        if not videos:
            raise ValueError("TemporalObjective: no training videos")
        t = model.cfg.segment
        self.model, self.batch = model, batch
        self.codes = [video_codes(model, v) for v in videos]
        self.clip = max(t, clip_frames // t * t)
        self.steps_per_epoch, self.extra_config = steps_per_epoch, extra_config or {}

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed * 100_003 + epoch + 7)
        for k in range(self.steps_per_epoch):
            clips, masks = [], []
            for _ in range(self.batch):
                v = self.codes[rng.integers(len(self.codes))]
                start = int(rng.integers(0, max(1, len(v) - self.clip + 1)))
                clip = v[start:start + self.clip]
                pad = self.clip - len(clip)
                clips.append(torch.cat((clip, clip.new_zeros(pad, clip.shape[1]))) if pad else clip)
                masks.append(torch.arange(self.clip) < len(clip))
            if k % world == rank:
                yield {"codes": torch.stack(clips), "mask": torch.stack(masks)}

    def loss(self, model: AnomalyModel, batch: dict, window: int, state) -> tuple[Tensor, None, dict[str, float]]:
        nll, ok = model.forward_codes(batch["codes"], batch["mask"])
        loss = (nll.mean(-1) * ok).sum() / ok.sum().clamp(min=1)
        return loss, None, {"nll_next": float(loss.detach()), "samples": int(ok.sum())}


@torch.no_grad()
def video_codes(model: AnomalyModel, frames: np.ndarray, batch: int = 64) -> Tensor:
    """A video's frames (F, S, S, 3) uint8 -> its temporal codes (F, W)."""
    model.eval()
    return torch.cat([model.video_codes(torch.from_numpy(frames[i:i + batch]).unsqueeze(0))[0]
                      for i in range(0, len(frames), batch)])


@torch.no_grad()
def fit_temporal_code(model: AnomalyModel, videos: list[np.ndarray], max_frames: int = 4096, seed: int = 0) -> dict:
    """The frame code's principal components: PCA of the temporal cells' mean patch embeddings over frames of
    the normal videos (into the model's ``cell_mean`` / ``cell_proj`` buffers)."""
    model.eval()
    frames = np.concatenate(videos)
    if len(frames) > max_frames:
        frames = frames[np.sort(np.random.default_rng(seed).choice(len(frames), max_frames, replace=False))]
    cells = torch.cat([model.cells(model.tokens(torch.from_numpy(frames[i:i + 64]))).flatten(0, 1)
                       for i in range(0, len(frames), 64)])
    mean = cells.mean(0)
    _, sv, v = torch.linalg.svd(cells - mean, full_matrices=False)
    k = model.cfg.temporal_dims
    model.cell_mean.copy_(mean)
    model.cell_proj.copy_(v[:k].t())
    explained = float(sv[:k].pow(2).sum() / sv.pow(2).sum().clamp(min=1e-12))
    return {"cells": int(cells.shape[0]), "explained_variance": round(explained, 4)}


def coreset(features: Tensor, size: int, seed: int = 0) -> Tensor:
    """PatchCore's greedy k-center coreset (on a 64-d random projection): the indices of ``size`` rows of
    ``features`` (M, D)."""
    m = features.shape[0]
    if m <= size:
        return torch.arange(m)
    g = torch.Generator().manual_seed(seed)
    proj = features @ torch.randn(features.shape[1], min(64, features.shape[1]), generator=g)
    chosen = [int(torch.randint(m, (1,), generator=g))]
    dist = (proj - proj[chosen[0]]).pow(2).sum(-1)
    for _ in range(size - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (proj - proj[nxt]).pow(2).sum(-1))
    return torch.tensor(chosen)


@torch.no_grad()
def raw_maps_in_batches(model: AnomalyModel, images: np.ndarray, which: tuple[str, ...] = MAPS,
                        batch: int = 16) -> dict[str, Tensor]:
    """(N, S, S, 3) uint8 images -> ``model.raw_maps`` (N, S, S) of each map in ``which`` it gives, ``batch``
    images at a time (bounded memory however many images)."""
    raw: dict[str, list[Tensor]] = {}
    for i in range(0, len(images), batch):
        maps, _ = model.raw_maps(torch.from_numpy(images[i:i + batch]), which)
        for name, m in maps.items():
            raw.setdefault(name, []).append(m)
    return {name: torch.cat(parts) for name, parts in raw.items()}


@torch.no_grad()
def fit_normality(model: AnomalyModel, images: np.ndarray, videos: list[np.ndarray] | None = None,
                  holdout: float = 0.2, batch: int = 16, seed: int = 0, groups: np.ndarray | None = None) -> dict:
    """Fill the feature banks and the score statistics from normal data (see the module docstring).
    ``groups``: (len(images),) the recording each image comes from (frames of one video are near duplicates:
    a bank entry's spread is measured against other recordings' entries); default: every image its own."""
    model.eval()
    groups = np.arange(len(images)) if groups is None else np.asarray(groups)
    if groups.shape != (len(images),):
        raise ValueError(f"fit_normality: groups has shape {groups.shape}, want ({len(images)},): one per image")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_out = max(1, int(round(len(images) * holdout))) if len(images) > 2 else 0
    held, bank_images = images[order[:n_out]], images[order[n_out:]]
    bank_groups = torch.from_numpy(np.unique(groups, return_inverse=True)[1][order[n_out:]])
    per_image = max(1, MAX_PATCHES // max(1, len(bank_images)))  # bounds the memory of long videos' frames
    pick = torch.Generator().manual_seed(seed)
    nb = len(model.banks)
    chunks, sources = [[] for _ in range(nb)], [[] for _ in range(nb)]  # per bank: candidates, the image of each
    grids = []  # the first bank's features on the map's grid (the position Gaussians)
    for i in range(0, len(bank_images), batch):
        x = torch.from_numpy(bank_images[i:i + batch])
        image = model.pixel_image(x) if model.cfg.features_from == "pixels" else None  # once for both uses
        if model.cfg.position_dims:
            grids.append(model.features(x, image=image))
        for j, f in enumerate(model.bank_features(x, image=image)):  # (b, M, D)
            if f.shape[1] > per_image:
                f = f[:, torch.randperm(f.shape[1], generator=pick)[:per_image]]
            chunks[j].append(f.flatten(0, 1))
            sources[j].append(bank_groups[i:i + f.shape[0]].repeat_interleave(f.shape[1]))
    banks = [_fill_bank(model, j, torch.cat(chunks[j]), torch.cat(sources[j]), seed) for j in range(nb)]
    if model.cfg.position_dims:
        fit_positions(model, torch.cat(grids))  # (n, N, D)
    probe = held if len(held) else bank_images
    names = [n for n in MAPS if n != "position" or model.cfg.position_dims]
    joined = raw_maps_in_batches(model, probe, tuple(names), batch)
    spread = {n: [float(m.mean()), float(m.std().clamp(min=1e-6))] for n, m in joined.items()}
    stats = [*spread["reconstruction"], *spread["features"], 0.0, 1.0]
    if model.cfg.position_dims:
        model.position_stats.copy_(torch.tensor(spread["position"]))
    if videos and model.core is not None:
        errs = []
        for v in videos:
            t = model.cfg.segment
            n = len(v) // t * t
            nll, ok = model.forward_codes(video_codes(model, v[:n]).unsqueeze(0))
            errs.append(nll.amax(-1)[ok])
        e = torch.cat(errs)
        stats[4:] = [float(e.mean()), float(e.std().clamp(min=1e-6))]
    model.stats.copy_(torch.tensor(stats))
    out = {"bank": banks[0]["entries"], "bank_from_patches": banks[0]["from_patches"],
           "holdout_images": int(len(held)), "stats": [round(v, 6) for v in stats]}
    if nb > 1:
        out["banks"] = banks
    if model.cfg.position_dims:
        out["position_stats"] = [round(v, 6) for v in spread["position"]]
    return out


def _fill_bank(model: AnomalyModel, index: int, feats: Tensor, sources: Tensor, seed: int) -> dict:
    """Bank ``index`` of ``model`` from its normal candidates (M, D) and the image of each (M,): principal
    components, then ``bank_size`` entries (random or a coreset), then their neighbourhood sizes."""
    bank, cfg = model.banks[index], model.cfg
    candidates = int(feats.shape[0])
    if cfg.bank_dims:
        if candidates < cfg.bank_dims:
            raise ValueError(f"fit_normality: {candidates} normal patch features, fewer than bank_dims="
                             f"{cfg.bank_dims}: give more normal images or a smaller bank_dims")
        sample = feats[torch.randperm(candidates, generator=torch.Generator().manual_seed(seed))[:PCA_SAMPLE]]
        center = sample.mean(0)
        _, _, v = torch.linalg.svd(sample - center, full_matrices=False)
        bank.center.copy_(center)
        bank.proj.copy_(v[: cfg.bank_dims].T)
        feats = bank.space(feats)
    shuffled = torch.randperm(candidates, generator=torch.Generator().manual_seed(seed))
    if cfg.bank_pick == "random":
        picked = shuffled[:cfg.bank_size]
    else:
        shuffled = shuffled[:MAX_BANK_CANDIDATES]  # bounds the coreset's time (linear in the candidates)
        picked = shuffled[coreset(feats[shuffled], cfg.bank_size, seed)]
    bank.entries.zero_()
    bank.entries[: len(picked)] = feats[picked]
    bank.valid.zero_()
    bank.valid[: len(picked)] = True
    fit_bank_scale(model, sources[picked], bank=index)
    return {"patch": bank.patch, "pool": bank.pool, "entries": int(len(picked)), "from_patches": candidates}


@torch.no_grad()
def fit_bank_scale(model: AnomalyModel, sources: Tensor | None = None, chunk: int = 64, bank: int = 0) -> None:
    """Each entry's neighbourhood size in bank ``bank`` of ``model``: its distance to its ``density_k``-th
    nearest entry taken from *another* image (``sources``: (entries,) the image of each; None: any other
    entry), plus ``density_soft`` x the median of those (into its ``scale``). The feature map divides a
    patch's distance by its nearest entry's size, as a local outlier factor does: normal patterns that vary a
    lot (edges, stripes) no longer outscore a faint defect on a smooth surface (synthetic mean image AUROC
    0.895 -> 0.927 in ``memstream bench anomaly``; MVTec transistor 0.56 -> 1.0). Other images only,
    because a patch of a new image is never from a training image: on a flat surface an entry's nearest
    neighbours are its own image's neighbouring offsets, and their distance (sensor noise) is far below the
    next image's (the surface's colour jitter), so every new image's flat surface looked anomalous (synthetic
    board 0.938 -> 0.960)."""
    k = model.cfg.density_k
    if not k:
        return
    memory = model.banks[bank]
    memory.scale.fill_(1.0)
    entries = memory.entries[memory.valid]
    if sources is not None and len(sources) != len(entries):
        raise ValueError(f"fit_bank_scale: {len(sources)} sources for {len(entries)} bank entries")
    if len(entries) <= k:
        return
    if sources is not None and int(sources.unique().numel()) < 2:
        sources = None  # one recording: its own entries are all there is
    b2 = entries.pow(2).sum(-1)
    radius = []
    # ``chunk`` entries against all at a time, in place: 64 x 65,536 distances are 16 MB that the allocator
    # reuses; at 2048 rows, new 512 MB blocks were zero-filled by the kernel on every chunk (13 s against 8.5 s)
    for i in range(0, len(entries), chunk):
        d2 = torch.addmm(b2, entries[i:i + chunk], entries.t(), alpha=-2.0).add_(b2[i:i + chunk, None])
        if sources is None:  # the entry itself is its own first neighbour
            d2.scatter_(1, torch.arange(i, min(i + chunk, len(entries))).unsqueeze(1), float("inf"))
        else:
            d2.masked_fill_(sources[i:i + chunk, None] == sources[None, :], float("inf"))
        kth = d2.topk(min(k, len(entries) - 1), dim=-1, largest=False).values[:, -1]
        radius.append(torch.where(torch.isfinite(kth), kth, d2.new_tensor(float("nan"))))
    radius = torch.cat(radius).clamp(min=0.0).sqrt()
    radius = torch.where(radius.isnan(), radius.nanmedian(), radius)  # fewer than k entries from other images
    soft = model.cfg.density_soft * radius.median().clamp(min=1e-6)
    memory.scale[memory.valid] = radius + soft


@torch.no_grad()
def fit_positions(model: AnomalyModel, feats: Tensor) -> None:
    """The per-position Gaussians of score ``position`` from normal patch features (n images, N, D): the
    features' principal components over all positions, then each position's mean and shrunk covariance."""
    n = feats.shape[0]
    if n < 2:
        raise ValueError(f"fit_positions: {n} normal image(s); a Gaussian per position needs at least 2")
    k = model.cfg.position_dims
    center = feats.mean((0, 1))
    flat = (feats - center).flatten(0, 1)
    if len(flat) < k:
        raise ValueError(f"fit_positions: {len(flat)} patch features, fewer than position_dims={k}")
    _, _, v = torch.linalg.svd(flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:8192]],
                               full_matrices=False)
    proj = v[:k].T.contiguous()  # (D, k)
    x = (feats - center) @ proj  # (n, N, k)
    mean = x.mean(0)
    xc = x - mean
    cov = torch.einsum("snk,snl->nkl", xc, xc) / (n - 1)
    shrink = POSITION_SHRINK * cov.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-6)
    precision = torch.linalg.inv(cov + shrink.view(-1, 1, 1) * torch.eye(k))
    model.position_center.copy_(center)
    model.position_proj.copy_(proj)
    model.position_mean.copy_(mean)
    model.position_precision.copy_(precision)


def train_anomaly(model: AnomalyModel, images: np.ndarray, videos: list[np.ndarray], out: str | Path, *,
                  steps: int, temporal_steps: int = 0, batch: int = 16, lr: float = 1e-3, threads: int = 0,
                  seed: int = 0, log_every: int = 50, extra: dict | None = None, spatial: bool = True,
                  float_dtype: torch.dtype | None = None, groups: np.ndarray | None = None) -> dict:
    """The whole recipe (masked autoencoder, temporal memory, normality fit) into checkpoint folder ``out``.
    ``spatial=False`` keeps the model's spatial weights and trains only the temporal part. ``groups``: the
    recording of each image (see :func:`fit_normality`)."""
    from memstream.pipelines.train import TrainConfig, train

    out = Path(out)
    extra = extra or {}
    summary: dict = {}
    if spatial:
        cfg = TrainConfig(steps=steps, lr=lr, seed=seed, threads=threads, log_every=log_every, checkpoint_every=0)
        summary["mae"] = train(model, MaeObjective(model, images, batch=batch, extra_config=extra), cfg, out / "mae",
                               resume=False)
    if videos and temporal_steps and model.core is not None:
        summary["temporal_code"] = fit_temporal_code(model, videos, seed=seed)
        for param in model.parameters():
            param.requires_grad_(False)
        for module in (model.frame_in, model.core, model.predict):
            for param in module.parameters():
                param.requires_grad_(True)
        cfg = TrainConfig(steps=temporal_steps, lr=lr, seed=seed, threads=threads, log_every=log_every,
                          checkpoint_every=0)
        summary["temporal"] = train(model, TemporalObjective(model, videos, extra_config=extra), cfg,
                                    out / "temporal", resume=False)
        for param in model.parameters():
            param.requires_grad_(True)
    summary["normality"] = fit_normality(model, images, videos, groups=groups)
    save_checkpoint(out, model, {"model": "anomaly", "config": model.cfg.to_dict(), **extra,
                                 "normality": summary["normality"]}, float_dtype=float_dtype)
    return summary


def _training_images(args, size: int) -> tuple[np.ndarray, list[np.ndarray], str, np.ndarray | None]:
    """-> (normal images, normal videos (maybe empty), a description of the data, the video of each image
    (None: images are independent))."""
    from memstream.pipelines.anomaly_data import find_categories, read_mvtec

    data = Path(args.data)
    videos: list[np.ndarray] = []
    if args.video:
        folder = data / "video" / "train" if (data / "video" / "train").is_dir() else data
        files = sorted(folder.glob("*.mp4"))
        if not files:
            raise FileNotFoundError(f"{folder}: no .mp4 training videos")
        videos = [read_video_frames(f, size) for f in files]
        frames = np.concatenate([v[:: args.frame_stride] for v in videos])
        groups = np.concatenate([np.full(len(v[:: args.frame_stride]), i) for i, v in enumerate(videos)])
        return frames, videos, f"{len(files)} normal videos in {folder}", groups
    categories = find_categories(data)
    if args.category:
        categories = [c for c in categories if c.name == args.category]
        if not categories:
            raise FileNotFoundError(f"{data}: no category {args.category!r}")
    if len(categories) != 1:
        raise ValueError(f"{data} holds {len(categories)} categories ({', '.join(c.name for c in categories)}); "
                         "pick one with --category")
    dataset = read_mvtec(categories[0])
    return load_images([s.path for s in dataset.train], size), [], f"{len(dataset.train)} normal images of " \
        f"{categories[0]}", None


def cli_train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream train anomaly", description=(
        "Train the anomaly model on normal data only: an MVTec-layout category (train/good), or normal videos "
        "with --video (then also the temporal memory)."))
    p.add_argument("--data", required=True, help="a category folder, a folder of categories (with --category), "
                                                 "or with --video a folder of .mp4 files (or a synth-defects set)")
    p.add_argument("--category", help="category name when --data holds several")
    p.add_argument("--video", action="store_true", help="train on normal videos: frames, then the temporal memory")
    p.add_argument("--preset", default="anomaly-small")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500, help="masked-autoencoder steps")
    p.add_argument("--temporal-steps", type=int, default=600, help="temporal-memory steps (with --video)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, help="input size (default: the preset's)")
    p.add_argument("--memory-slots", type=int, help="learned memory slots per encoder block (0: none)")
    p.add_argument("--addressing", choices=("none", "memae"), help="MemAE addressing with hard shrinkage")
    p.add_argument("--score", choices=SCORES,
                   help="which score the model gives (default: the preset's, features: best on textures and "
                        "turning objects; position: best on aligned objects, a part always in the same place; "
                        "fused was best on video, at a sixth of the speed)")
    p.add_argument("--features-from", choices=("pixels", "encoder"),
                   help="patch features of the bank and the position Gaussians (default: the preset's, pixels: "
                        "lighting-normalised pixel patches; encoder: the masked autoencoder's patch embeddings)")
    p.add_argument("--bank-size", type=int, help="entries of the bank of normal patch features")
    p.add_argument("--bank-dims", type=int, help="principal components the bank keeps of each patch feature (0: all)")
    p.add_argument("--pixel-patch", type=int, nargs="+", help="with pixel features: the patch side of each bank, "
                                                              "in pooled pixels (default: the preset's, 4 6)")
    p.add_argument("--pixel-pool", type=int, nargs="+", help="with pixel features: the factor each bank's image is "
                   "average-pooled by, one for all or one per patch size (default: the preset's, 1 2; with "
                   "--pixel-patch alone, 2)")
    p.add_argument("--density-k", type=int, help="distances in units of the nearest bank entry's distance to its "
                                                 "k-th neighbour (0: plain distances)")
    p.add_argument("--temporal-memory", choices=("queue", "none"), help="core memory of the temporal part")
    p.add_argument("--frame-stride", type=int, default=4, help="--video: every k-th frame for the autoencoder")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size; for bundling)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    overrides: dict = {}
    for name in ("image_size", "memory_slots", "addressing", "score", "features_from", "bank_size", "bank_dims",
                 "density_k", "pixel_patch", "pixel_pool"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.temporal_memory:
        overrides["temporal_memory"] = args.temporal_memory
    if not args.video:
        overrides["no_temporal"] = True
    model = build(args.preset, **overrides)
    images, videos, described, groups = _training_images(args, model.cfg.image_size)
    command = "memstream train anomaly " + " ".join(argv)
    extra = {"preset": args.preset, "command": command, "data": str(Path(args.data).resolve()), "trained_on": described}
    summary = train_anomaly(model, images, videos, args.out, steps=args.steps, temporal_steps=args.temporal_steps,
                            batch=args.batch, lr=args.lr, threads=args.threads, seed=args.seed,
                            log_every=args.log_every, extra=extra, groups=groups,
                            float_dtype=torch.float16 if args.half else None)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk in ("steps", "seconds", "final_loss")}
                              if k not in ("normality", "temporal_code") else v) for k, v in summary.items()}))
    return 0
