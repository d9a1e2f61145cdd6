"""One trainer for every task: truncated BPTT, AdamW with warm-up and cosine decay, checkpoints that resume
exactly, JSON Lines logs, and data parallel training over several processes under ``torchrun``.

A task plugs in with an :class:`Objective` (its data, its loss, its checkpoint config)::

    class AsrObjective:
        def batches(self, rank, world, seed, epoch):          # this rank's shard of one epoch
            return shard_of(corpus, rank, world, seed=seed + epoch)
        def windows(self, batch):                              # truncated-BPTT windows (1: whole sequence)
            return 1
        def init_state(self, model, batch):                    # carried state, or None
            return None
        def loss(self, model, batch, window, state):
            logits = model.forward_sequence(batch.audio)
            loss = ctc_loss(logits, batch.labels)
            return loss, None, {"samples": batch.size}        # "samples" (a count) gives samples/s in the log
        def checkpoint_config(self):
            return {"model": "asr", "config": cfg.to_dict(), "vocabulary": vocab}

    summary = train(model, AsrObjective(), TrainConfig(steps=20_000, lr=1e-3), "runs/asr",
                    evaluate=lambda m: {"wer": wer_of(m)})

``out_dir`` then holds a loadable checkpoint (``model.safetensors`` + ``config.json``), ``train_log.jsonl`` and
the trainer state; calling ``train`` again on it continues where it stopped (``resume=True``). Several processes,
each with its shard of the batches and averaged gradients (only rank 0 writes)::

    torchrun --nproc_per_node 2 -m memstream.pipelines.cli train asr ...

With a carried state, every optimiser step trains one window: ``loss(model, batch, w, state)`` for
``w in range(windows(batch))``, the state cut from the graph between windows. ``batches`` must be deterministic
given its arguments (resuming replays the epoch up to the saved batch). Parameters that get no gradient on a
rank are averaged as zeros when several ranks train. ``train`` makes the process group when there is none and
ends it when done; to call it more than once in a process under torchrun, make the group yourself
(``dist.init_process_group``): PyTorch cannot make the default group a second time there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from memstream.memory.training import detach_state
from memstream.models.checkpoint import load_weights
from memstream.pipelines.train_state import (
    STATE_JSON,
    DataCursor,
    flat_collective,
    gather_leaves,
    load_optimizer,
    rank_leaves,
    read_trainer_state,
    state_leaves,
    write_checkpoint,
)
from torch import Tensor, nn
from torch.utils._pytree import tree_map

log = logging.getLogger(__name__)
LOG_FILE = "train_log.jsonl"
MAX_CONSECUTIVE_SKIPS = 100
_NO_DECAY = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, logging and checkpointing of one run (see the module docstring)."""

    steps: int                  # optimiser steps
    lr: float = 1e-3
    weight_decay: float = 0.01  # AdamW, applied to >=2-D weights except embeddings/norms
    betas: tuple = (0.9, 0.98)
    warmup: int = 0             # linear warm-up steps (0: 5% of steps)
    min_lr_ratio: float = 0.05  # cosine decay to lr * this
    clip: float = 1.0           # gradient-norm clip (0: off)
    log_every: int = 50
    checkpoint_every: int = 500  # also always at the end (0: only at the end)
    eval_every: int = 0         # 0: only at the end (when an evaluate callback is given)
    seed: int = 0
    threads: int = 0            # torch CPU threads per process (0: leave torch's default)

    def __post_init__(self) -> None:
        ints = {"steps": 1, "warmup": 0, "log_every": 1, "checkpoint_every": 0, "eval_every": 0, "seed": 0,
                "threads": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig: {name}={value!r} must be an integer >= {low}")
        for name, low, high in (("lr", 0.0, math.inf), ("weight_decay", 0.0, math.inf),
                                ("min_lr_ratio", 0.0, 1.0), ("clip", 0.0, math.inf)):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not low <= value <= high or (name == "lr" and value == 0):
                raise ValueError(f"TrainConfig: {name}={value!r} must be a finite number in "
                                 f"{'(' if name == 'lr' else '['}{low}, {high}]")
        if (not isinstance(self.betas, tuple | list) or len(self.betas) != 2
                or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"TrainConfig: betas={self.betas!r} must be two numbers in [0, 1)")
        if self.warmup > self.steps:
            raise ValueError(f"TrainConfig: warmup={self.warmup} must not exceed steps={self.steps}")

    @property
    def warmup_steps(self) -> int:
        return self.warmup or max(1, self.steps // 20)


class Objective(Protocol):
    """What the trainer needs from a task."""

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterable[Any]:
        """One epoch of this rank's shard; the trainer loops epochs until ``steps``."""

    def windows(self, batch) -> int:
        """Truncated-BPTT windows in this batch (1 = whole sequence)."""

    def init_state(self, model, batch) -> Any:
        """The carried state at the start of ``batch`` (``None`` for models trained on whole sequences)."""

    def loss(self, model, batch, window: int, state) -> tuple[Tensor, Any, dict[str, float]]:
        """(scalar loss, new state, metrics to log) of one window."""

    def checkpoint_config(self) -> dict:
        """config.json content (model kind, configs, vocabulary, normalisation statistics)."""


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.05) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up to ``lr``, then cosine decay toward
    ``lr * min_lr_ratio``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[str]]:
    """AdamW groups (decay on >=2-D weights except embeddings and norms) and the parameter names in order."""
    skip = {id(p) for m in model.modules() if isinstance(m, _NO_DECAY) for p in m.parameters(recurse=False)}
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            plain = p.dim() >= 2 and id(p) not in skip and "embed" not in name and "norm" not in name
            (decay if plain else rest).append((name, p))
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in rest], "weight_decay": 0.0}]
    return groups, [n for n, _ in decay + rest]


def _detach(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, tuple) and hasattr(state, "_fields") and all(isinstance(t, Tensor) for t in state):
        return detach_state(state)
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def _reseed(seed: int, rank: int, step: int) -> None:
    """Global RNGs as a function of (seed, rank, step): dropout and augmentation resume exactly."""
    value = ((seed * 1_000_003 + rank) * 1_000_003 + step) % (2**32)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _record(step: int, epoch: int, lr: float, sums: dict[str, float], counts: dict[str, int], seconds: float,
            window_seconds: float) -> dict:
    record = {"step": step, "epoch": epoch, "lr": round(lr, 8)}
    samples = sums.pop("samples", None)
    counts.pop("samples", None)
    record.update({k: round(v / counts[k], 6) for k, v in sums.items()})
    record["seconds"] = round(seconds, 3)
    if samples is not None:
        record["samples_per_s"] = round(samples / max(window_seconds, 1e-9), 2)
    return record


def check_resume_data(out_dir: str | Path, fingerprint: str, resume: bool, key: str = "data_fingerprint",
                      message: str = "was trained on other data; use a new --out or --no-resume") -> bool:
    """Whether training into ``out_dir`` resumes; a resume replays the batch order, so it must see the same data:
    a checkpoint whose config records another ``key`` fingerprint is refused (``ValueError``)."""
    out_dir = Path(out_dir)
    resuming = resume and (out_dir / "trainer_state.json").is_file()
    if resuming:
        saved = json.loads((out_dir / "config.json").read_text()).get(key)
        if saved is not None and saved != fingerprint:
            raise ValueError(f"--out {out_dir} {message}")
    return resuming


def train(model: nn.Module, objective: Objective, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = True,
          evaluate: Callable[[nn.Module], dict] | None = None, progress: bool = True) -> dict:
    """Train ``model`` on ``objective`` for ``cfg.steps`` optimiser steps; checkpoints, logs and resumes in
    ``out_dir``. Returns a summary (steps, epochs, seconds, final loss, skipped windows, last evaluation)."""
    out_dir = Path(out_dir)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = next(model.parameters()).device
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" and torch.cuda.is_available() else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the usual trade on GPUs that have them
    try:
        return _train(model, objective, cfg, out_dir, rank, world, device, resume, evaluate, progress)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(model: nn.Module, objective: Objective, cfg: TrainConfig, out_dir: Path, rank: int, world: int,
           device: torch.device, resume: bool, evaluate, progress: bool) -> dict:
    groups, names = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    saved = read_trainer_state(out_dir) if resume else None
    step, skipped, last_eval, position, leaves = 0, 0, None, (0, 0, 0), None
    if saved is not None:
        record, tensors = saved
        if record["param_names"] != names:
            raise ValueError(f"{out_dir}: the saved optimiser state is for other parameters than this model's")
        load_weights(out_dir, model)
        load_optimizer(opt, tensors, record["optimizer_scalars"])
        step, skipped, last_eval = record["step"], record["skipped"], record.get("eval")
        if record["world"] == world:
            position, leaves = tuple(record["positions"][rank]), rank_leaves(tensors, record, rank)
        else:
            log.warning("resuming with %d ranks where %d saved: each rank restarts epoch %d", world,
                        record["world"], record["positions"][0][0])
            position = (record["positions"][0][0], 0, 0)
    elif rank == 0 and (out_dir / STATE_JSON).is_file():
        (out_dir / STATE_JSON).unlink()  # a fresh run: never resume later from an older run's state
    if world > 1:
        steps = torch.tensor([step, -step], device=device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if int(steps[0]) != -int(steps[1]):
            raise RuntimeError(f"{out_dir}: ranks resume from different steps {int(steps[0])} and {-int(steps[1])}")
        with torch.no_grad():
            flat_collective([*model.parameters(), *model.buffers()], lambda t: dist.broadcast(t, 0))
    cursor = DataCursor(objective, model, rank, world, cfg.seed, position, leaves)
    writer = rank == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / LOG_FILE, "a" if saved else "w") if writer else None  # noqa: SIM115
    bar = _progress_bar(cfg.steps, step) if writer and progress else None
    start = window_start = time.perf_counter()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    last_record: dict = {}
    consecutive = 0

    def checkpoint() -> None:
        positions = torch.tensor(cursor.position(), dtype=torch.int64, device=device)
        states = [state_leaves(cursor.state) if cursor.position()[2] else []]
        if world > 1:
            every = [torch.zeros_like(positions) for _ in range(world)]
            dist.all_gather(every, positions)
            positions = torch.stack(every)
            states = gather_leaves(states[0], rank, world, device)
        if writer:
            training = {"train_config": asdict(cfg), "step": step, "world": world, "skipped": skipped,
                        "time": datetime.now(UTC).isoformat(timespec="seconds"), "eval": last_eval}
            config = objective.checkpoint_config()
            config["training"] = {**config.get("training", {}), **training}
            meta = {**training, "positions": positions.reshape(world, 3).tolist(),
                    "rng": {"seed": cfg.seed, "scheme": "torch/random/numpy seeded from (seed, rank, step)"}}
            write_checkpoint(out_dir, model, config, opt, names, meta, states)
        if world > 1:
            dist.barrier()  # no rank reads the folder (a resume) before it is written

    def run_eval() -> None:
        nonlocal last_eval
        if evaluate is None:
            return
        if writer:
            model.eval()
            with torch.no_grad():
                last_eval = evaluate(model)
            model.train()
            _write(log_file, {"step": step, "eval": last_eval})
        if world > 1:
            dist.barrier()

    model.train()
    try:
        while step < cfg.steps:
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            _reseed(cfg.seed, rank, step)
            opt.zero_grad(set_to_none=True)
            has, ok, loss_value, metrics = cursor.advance(), False, 0.0, {}
            if has:
                loss, new_state, metrics = objective.loss(model, cursor.batch, cursor.window, cursor.state)
                loss_value = float(loss.detach())
                if math.isfinite(loss_value):
                    loss.backward()
                    cursor.state, cursor.window, ok = _detach(new_state), cursor.window + 1, True
                else:
                    log.warning("rank %d step %d: non-finite loss %s in window %d; skipping the rest of the batch",
                                rank, step, loss_value, cursor.window)
                    skipped += 1
                    cursor.drop_batch()
            flags = torch.tensor([float(has), float(ok), loss_value if ok else 0.0,
                                  float(metrics.get("samples", 0.0)) if ok else 0.0], device=device)
            if world > 1:
                dist.all_reduce(flags)
            if float(flags[0]) == 0:
                raise ValueError(f"objective.batches(rank, {world}, {cfg.seed}, epoch={cursor.epoch}) yielded no "
                                 f"batches on any rank")
            contributors = float(flags[1])
            if world > 1 and contributors:
                _average_grads(params, contributors)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) if contributors \
                else None
            if not contributors or not math.isfinite(float(norm)):
                if contributors:
                    skipped += 1
                    if writer:
                        log.warning("step %d: non-finite gradient norm; skipping the step", step)
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeError(f"{consecutive} windows in a row skipped for non-finite loss or gradients")
                continue
            if cfg.clip:
                torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], cfg.clip, norm)
            opt.step()
            step, consecutive = step + 1, 0
            metrics = {**metrics, "loss": float(flags[2]) / float(flags[1]), "samples": float(flags[3])}
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
            if bar is not None:
                bar[0].update(bar[1], completed=step, description=f"loss {metrics['loss']:.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                if sums.get("samples") == 0.0:
                    sums.pop("samples")
                last_record = _record(step, cursor.epoch, lr, sums, counts, now - start, now - window_start)
                sums, counts, window_start = {}, {}, now
                _write(log_file, last_record)
            if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
                run_eval()
            if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
        if not last_record and saved is not None and step >= cfg.steps and writer:
            log.info("%s: already trained %d steps", out_dir, step)
    finally:
        if bar is not None:
            bar[0].stop()
        if log_file is not None:
            log_file.close()
    return {"steps": step, "epochs": cursor.epoch, "seconds": round(time.perf_counter() - start, 3),
            "final_loss": last_record.get("loss"), "skipped": skipped, "eval": last_eval, "world": world,
            "out_dir": str(out_dir)}


def _average_grads(params: list[nn.Parameter], contributors: float) -> None:
    """Sum every rank's gradients (missing ones as zeros) and divide by the ranks that contributed."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    def reduce(flat: Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(contributors)

    flat_collective([p.grad for p in params], reduce)


def _write(log_file, record: dict) -> None:
    if log_file is not None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()


def _progress_bar(total: int, done: int):
    """A rich progress bar on a terminal, else ``None``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal or not sys.stderr.isatty():
        return None
    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeRemainingColumn(), console=console)
    bar.start()
    return bar, bar.add_task("", total=total, completed=done)
