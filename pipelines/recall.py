"""Long-range associative recall: training, streaming evaluation, and the ``train``/``bench``/``demo`` CLIs.

Every memory type is trained on sequences whose pairs lie at most ``train_distance`` distractor segments
before the query, with ``forward_sequence`` (the parallel form for ``queue``/``none``), and always
evaluated by streaming ``step`` segment by segment (the inference path) at 1x, 4x and 16x that distance.
The task and the model are in :mod:`memstream.pipelines.recall_task`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import memstream.models
import torch
import torch.nn.functional as F
from memstream.memory import MEMORY_TYPES, CoreConfig
from memstream.memory.training import mrbp
from memstream.models import load_weights, read_config, save_checkpoint
from memstream.pipelines.recall_task import IGNORE, RecallConfig, RecallModel, RecallTask, make_batch
from memstream.pipelines.train import lr_at
from torch import Tensor

__all__ = ["RecallModel", "RecallTask", "RecallConfig", "make_batch", "recall_config", "train_recall",
           "evaluate_recall", "load_recall_model", "bundled_dir", "cli_train", "cli_bench", "cli_demo"]

MODEL_KIND = "recall"
MULTIPLES = (1, 4, 16)          # evaluation distances, as multiples of the training distance
BENCH_TYPES = ("queue", "queue-nogate", "tokens", "slots", "knn", "none")  # "-nogate": queue without gate
BACKPROP = ("bptt", "mrbp")
EVAL_SEED = 1_000_003           # evaluation sequences never share a generator stream with training
# Roughly equal CPU time per type (a knn or tokens step costs several queue steps).
DEFAULT_STEPS = {"queue": 1200, "tokens": 2000, "slots": 2000, "knn": 1200, "ntm": 2000, "none": 600}


def recall_config(memory: str, task: RecallTask | None = None, *, train_distance: int = 4, gate: bool = True,
                  dim: int = 64, heads: int = 1, layers: int = 2,
                  rope_base: float = 1e16) -> RecallConfig:
    """The benchmark's model for ``memory``, sized to train in a few CPU minutes.

    Capacities are honest: the queue keeps ``2 P T`` tokens per layer, room for the pair segments but far
    from 16x ``train_distance`` segments of distractors, so at long range only the write gate (which
    skips distractor segments) can keep the pairs; ``knn`` holds the whole longest evaluated sequence (its
    design); ``tokens``/``slots`` carry ``P T`` fixed memory vectors, as many as there are pair tokens;
    ``ntm`` has as many rows (of width ``dim``) and one read head per query.

    One 64-wide head and rotary base 1e16: a query finds its key by content through the rotary pairs of low
    frequency, which barely turn over the distances evaluated, while the few fast pairs still tell a pair's
    key from its neighbours. With base 1e4 and 16-wide heads too few slow pairs remain: training stalls at
    guessing among the shown values. With base 1e8 a pair that is still in the slow band at the training
    distances turns by about pi at 16x (recall dips to 95% at 64 segments and recovers at 96).
    """
    if memory not in MEMORY_TYPES:
        raise ValueError(f"recall_config: unknown memory type {memory!r}; "
                         f"choose one of {', '.join(MEMORY_TYPES)}")
    if train_distance < 1:
        raise ValueError(f"recall_config: train_distance={train_distance} must be >= 1")
    task = task or RecallTask()
    t = task.segment
    longest = task.num_segments(MULTIPLES[-1] * train_distance) * t
    core = CoreConfig(dim=dim, heads=heads, layers=layers, ff_mult=2, segment=t, memory=memory,
                      memory_length=2 * task.pair_segments * t, write_gate=gate and memory == "queue",
                      num_tokens=task.pair_segments * t, knn_capacity=1 << math.ceil(math.log2(longest)),
                      knn_topk=2 * t, ntm_rows=task.pair_segments * t, ntm_width=dim,
                      ntm_read_heads=task.queries, rope_base=rope_base)
    return RecallConfig(core=core, task=task)


def train_recall(model: RecallModel, *, steps: int, train_distance: int, batch: int = 32, lr: float = 3e-3,
                 seed: int = 0, log_every: int = 100, log=None, backprop: str = "bptt") -> dict:
    """Train ``model`` with AdamW on fresh batches; distances drawn uniformly from 1..``train_distance``.

    Loss = cross-entropy at the query positions (+ the write gate's BCE for a gated queue). ``log(record)``
    gets a dict every ``log_every`` steps and at the end. Returns a summary (final loss, accuracy, time).
    ``backprop``: ``bptt`` through ``forward_sequence`` (the parallel form where there is one), or ``mrbp``
    (memory-replay backprop over ``step``: the same gradients, the activations of one segment at a time).
    """
    if steps < 1 or train_distance < 1:
        raise ValueError(f"train_recall: steps={steps} and train_distance={train_distance} must be >= 1")
    if backprop not in BACKPROP:
        raise ValueError(f"train_recall: backprop={backprop!r}; choose one of {', '.join(BACKPROP)}")
    task = model.cfg.task
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    model.train()
    start = time.perf_counter()
    window = {"loss": 0.0, "gate_loss": 0.0, "acc": 0.0, "n": 0}
    record: dict = {}
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)  # warm-up, cosine to 5%
        distance = int(torch.randint(1, train_distance + 1, (1,), generator=g))
        data = make_batch(task, batch, distance, g)
        answer = data.targets != IGNORE
        opt.zero_grad(set_to_none=True)
        if backprop == "mrbp":
            recall_loss, correct = _mrbp_recall_loss(model, data, answer)
        else:
            logits = model.forward_sequence(data.tokens, data.mask)
            recall_loss = F.cross_entropy(logits[answer], data.targets[answer])
            recall_loss.backward()
            correct = int((logits[answer].argmax(-1) == data.targets[answer]).sum())
        gate_loss = model.gate_loss(data.tokens, data.mask, data.salient)
        if gate_loss.requires_grad:
            gate_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window["loss"] += float(recall_loss.detach())
        window["gate_loss"] += float(gate_loss.detach())
        window["acc"] += correct / int(answer.sum())
        window["n"] += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = window.pop("n")
            record = {"step": step + 1, "lr": round(opt.param_groups[0]["lr"], 6),
                      "seconds": round(time.perf_counter() - start, 2)}
            record.update({k: round(v / n, 4) for k, v in window.items()})
            window = {"loss": 0.0, "gate_loss": 0.0, "acc": 0.0, "n": 0}
            if log is not None:
                log(record)
    model.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 2), "final_loss": record["loss"],
            "final_train_acc": record["acc"], "final_gate_loss": record["gate_loss"]}


def _mrbp_recall_loss(model: RecallModel, data, answer: Tensor) -> tuple[Tensor, int]:
    """The mean cross-entropy over the answers of a batch, backpropagated by memory replay (gradients left in
    ``.grad``). Returns (the loss, how many answers were right)."""
    t = model.cfg.segment
    segments = [(data.tokens[:, i:i + t], data.mask[:, i:i + t]) for i in range(0, data.tokens.shape[1], t)]
    total = int(answer.sum())
    correct = [0]

    def loss_fn(i: int, logits: Tensor) -> Tensor:
        here = answer[:, i * t:(i + 1) * t]
        targets = data.targets[:, i * t:(i + 1) * t][here]
        correct[0] += int((logits[here].argmax(-1) == targets).sum())
        # Summed per segment over the batch's answer count: the segments' losses add up to the mean.
        return F.cross_entropy(logits[here], targets, reduction="sum") / total

    loss, _ = mrbp(lambda seg, state: model.step(seg[0], state, None, seg[1]), segments,
                   model.init_state(data.tokens.shape[0], data.tokens.device), loss_fn)
    return loss, correct[0]


@torch.no_grad()
def evaluate_recall(model: RecallModel, distance: int, *, sequences: int = 512, batch: int = 256,
                    seed: int = EVAL_SEED) -> float:
    """Query accuracy at ``distance``, streaming ``model.step`` one segment at a time from the empty state."""
    if sequences < 1:
        raise ValueError(f"evaluate_recall: sequences={sequences} must be >= 1")
    task, t = model.cfg.task, model.cfg.segment
    g = torch.Generator().manual_seed(seed + 7919 * distance)
    model.eval()
    correct = total = 0
    for first in range(0, sequences, batch):
        data = make_batch(task, min(batch, sequences - first), distance, g)
        b = data.tokens.shape[0]
        state = model.init_state(b)
        reset = torch.zeros(b, dtype=torch.bool)
        for i in range(0, data.tokens.shape[1], t):
            logits, state = model.step(data.tokens[:, i:i + t], state, reset, data.mask[:, i:i + t])
        answer = data.targets[:, -t:] != IGNORE  # only the last (query) segment asks anything
        correct += int((logits[answer].argmax(-1) == data.targets[:, -t:][answer]).sum())
        total += int(answer.sum())
    return correct / total


def recall_vs_distance(model: RecallModel, train_distance: int, *, sequences: int = 512,
                       seed: int = EVAL_SEED) -> dict[str, float]:
    """{"1x": acc, "4x": acc, "16x": acc} at those multiples of ``train_distance``."""
    return {f"{m}x": round(evaluate_recall(model, m * train_distance, sequences=sequences, seed=seed), 4)
            for m in MULTIPLES}


def load_recall_model(directory: str | Path) -> tuple[RecallModel, dict]:
    """A checkpoint written by ``memstream train recall`` -> (model in eval mode, its config.json)."""
    config = read_config(directory)
    if config.get("model") != MODEL_KIND:
        raise ValueError(f"{directory}: model kind {config.get('model')!r} is not {MODEL_KIND!r}")
    model = RecallModel(RecallConfig(core=CoreConfig.from_dict(config["config"]),
                                     task=RecallTask.from_dict(config["task"])))
    return load_weights(directory, model).eval(), config


def bundled_dir() -> Path:
    """Where the bundled checkpoints live: ``models/bundled/`` inside the installed package."""
    return Path(memstream.models.__file__).parent / "bundled"


def bundled_recall(sequences: int = 256) -> dict:
    """Recall at 1x/4x/16x the training distance of every bundled checkpoint, streamed (``bench core``)."""
    out = {}
    for path in sorted(p for p in bundled_dir().glob("recall-*") if (p / "config.json").is_file()):
        model, config = load_recall_model(path)
        out[path.name.removeprefix("recall-")] = recall_vs_distance(
            model, config["training"]["train_distance"], sequences=sequences)
    return out


# -- command line ----------------------------------------------------------------------------------------
def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-distance", type=int, default=4,
                        help="longest training distance, in distractor segments (default 4)")
    parser.add_argument("--eval-sequences", type=int, default=1024, help="sequences per evaluated distance")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def _train_one(memory: str, *, gate: bool, steps: int, seed: int, train_distance: int, batch: int, lr: float,
               eval_sequences: int, log=None, backprop: str = "bptt") -> tuple[RecallModel, dict]:
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    model = RecallModel(recall_config(memory, train_distance=train_distance, gate=gate))
    summary = train_recall(model, steps=steps, train_distance=train_distance, batch=batch, lr=lr, seed=seed,
                           log=log, backprop=backprop)
    start = time.perf_counter()
    summary["recall"] = recall_vs_distance(model, train_distance, sequences=eval_sequences)
    summary["eval_seconds"] = round(time.perf_counter() - start, 2)
    return model, summary


def cli_train(argv: list[str] | None = None) -> int:
    """``memstream train recall``: train one memory type, write a checkpoint with its recall figures."""
    parser = argparse.ArgumentParser(prog="memstream train recall",
                                     description="Train one memory type on associative recall.")
    parser.add_argument("--memory", required=True, help=f"memory type: {', '.join(MEMORY_TYPES)}")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default per memory type)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--no-gate", action="store_true", help="queue: write every segment (no learned gate)")
    parser.add_argument("--backprop", choices=BACKPROP, default="bptt",
                        help="bptt: through forward_sequence (default); mrbp: memory-replay backprop over step, the "
                             "same gradients with one segment's activations at a time (Memformer)")
    _common_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        recall_config(args.memory, train_distance=args.train_distance)  # validates before any work
        steps = args.steps or DEFAULT_STEPS[args.memory]
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "train_log.jsonl", "w") as log_file:
            def log(record: dict) -> None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                print(f"recall {args.memory}: step {record['step']}/{steps} loss {record['loss']:.4f} "
                      f"acc {record['acc']:.3f} gate {record['gate_loss']:.4f} {record['seconds']:.0f}s",
                      flush=True)

            model, summary = _train_one(args.memory, gate=not args.no_gate, steps=steps, seed=args.seed,
                                        train_distance=args.train_distance, batch=args.batch, lr=args.lr,
                                        eval_sequences=args.eval_sequences, log=log, backprop=args.backprop)
            log_file.write(json.dumps({"event": "summary", **summary}) + "\n")
    except ValueError as err:
        print(f"memstream train recall: error: {err}", file=sys.stderr)
        return 2
    summary.update(seed=args.seed, batch=args.batch, lr=args.lr, train_distance=args.train_distance,
                   eval_sequences=args.eval_sequences, threads=args.threads, backprop=args.backprop)
    save_checkpoint(args.out, model, {"model": MODEL_KIND, "config": model.cfg.core.to_dict(),
                                      "task": model.cfg.task.to_dict(), "training": summary})
    print(json.dumps({"out": str(args.out), "recall": summary["recall"],
                      "train_seconds": summary["seconds"]}))
    return 0


def cli_eval(argv: list[str] | None = None) -> int:
    """``memstream eval recall``: stream a recall checkpoint at 1x/4x/16x its training distance."""
    parser = argparse.ArgumentParser(prog="memstream eval recall",
                                     description="Recall of a checkpoint vs distance, streamed segment by segment.")
    parser.add_argument("--checkpoint", default=str(bundled_dir() / "recall-queue"),
                        help="checkpoint folder (default: the bundled gated queue)")
    parser.add_argument("--sequences", type=int, default=512, help="sequences per distance (default 512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.sequences < 1:
        raise ValueError(f"--sequences {args.sequences} must be >= 1")
    torch.set_num_threads(args.threads)
    model, config = load_recall_model(args.checkpoint)
    train_distance = config["training"]["train_distance"]
    recall = recall_vs_distance(model, train_distance, sequences=args.sequences)
    result = {"checkpoint": str(args.checkpoint), "memory": model.cfg.core.memory, "train_distance": train_distance,
              "distances": {f"{m}x": m * train_distance for m in MULTIPLES}, "recall": recall,
              "chance": model.cfg.task.chance, "sequences": args.sequences}
    if not args.json:
        for key, acc in recall.items():
            print(f"{key:>4} ({result['distances'][key]:>3} segments): {acc:.1%}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cli_bench(argv: list[str] | None = None) -> int:
    """``memstream bench recall``: train every memory type from scratch, print recall vs distance as JSON."""
    parser = argparse.ArgumentParser(prog="memstream bench recall",
                                     description="Train every memory type; print recall vs distance as JSON.")
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, few sequences")
    parser.add_argument("--types", default=",".join(BENCH_TYPES),
                        help="comma-separated memory types; 'queue-nogate' adds the queue without its gate")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps for every type")
    parser.add_argument("--seed", type=int, default=0)
    _common_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    types = [s.strip() for s in args.types.split(",") if s.strip()]
    try:
        for name in types:
            recall_config(name.removesuffix("-nogate"), train_distance=args.train_distance)
    except ValueError as err:
        print(f"memstream bench recall: error: {err}", file=sys.stderr)
        return 2
    eval_sequences = min(64, args.eval_sequences) if args.quick else args.eval_sequences
    result: dict = {"recall": {}, "train_distance": args.train_distance,
                    "distances": {f"{m}x": m * args.train_distance for m in MULTIPLES},
                    "chance": RecallTask().chance, "train_seconds": {}, "steps": {},
                    "eval_sequences": eval_sequences, "threads": args.threads, "quick": args.quick}
    start = time.perf_counter()
    for name in types:
        memory = name.removesuffix("-nogate")
        steps = args.steps or (20 if args.quick else DEFAULT_STEPS[memory])
        _, summary = _train_one(memory, gate=not name.endswith("-nogate"), steps=steps, seed=args.seed,
                                train_distance=args.train_distance, batch=32, lr=3e-3,
                                eval_sequences=eval_sequences)
        result["recall"][name] = summary["recall"]
        result["train_seconds"][name] = summary["seconds"]
        result["steps"][name] = steps
        print(f"bench recall: {name} {summary['recall']} in {summary['seconds']:.0f}s",
              file=sys.stderr, flush=True)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0


def cli_demo(argv: list[str] | None = None) -> int:
    """``memstream demo``: the bundled recall models, streamed at growing distances."""
    parser = argparse.ArgumentParser(prog="memstream demo",
                                     description="Stream the bundled recall models at growing distances.")
    parser.add_argument("--sequences", type=int, default=256, help="sequences per distance (default 256)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = sorted(p for p in bundled_dir().glob("recall-*") if (p / "config.json").is_file())
    if not found:
        print(f"memstream demo: no bundled recall checkpoints under {bundled_dir()}", file=sys.stderr)
        return 1
    models, train_distances = {}, set()
    for path in found:
        models[path.name.removeprefix("recall-")], config = load_recall_model(path)
        train_distances.add(config["training"]["train_distance"])
    task = next(iter(models.values())).cfg.task
    if len(train_distances) > 1 or any(m.cfg.task != task for m in models.values()):
        print("memstream demo: the bundled recall checkpoints differ in task or training distance",
              file=sys.stderr)
        return 1
    train_distance = train_distances.pop()
    rows = {name: recall_vs_distance(model, train_distance, sequences=args.sequences)
            for name, model in models.items()}
    distances = [m * train_distance for m in MULTIPLES]
    t, far = task.segment, distances[-1]
    print(f"Associative recall, streamed one {t}-token segment at a time "
          f"({args.sequences} sequences per cell, chance {task.chance:.1%}):")
    print(f"{'memory':<14}" + "".join(f"{f'{d} segments':>14}" for d in distances))
    for name, acc in rows.items():
        print(f"{name:<14}" + "".join(f"{acc[f'{m}x']:>14.1%}" for m in MULTIPLES))
    best = max((n for n in rows if n != "none"), key=lambda n: rows[n]["16x"], default=None)
    print(f"\nEach sequence shows {task.num_pairs} key-value pairs once, then N segments of random "
          f"distractor tokens, then asks for the values of {task.queries} of the keys; every model was "
          f"trained with N up to {train_distance} and is evaluated here by streaming, one segment per step.")
    if best is not None:
        print(f"The '{best}' memory carries the pairs across {far} distractor segments ({far * t} tokens, "
              f"16x the longest training gap) and answers {rows[best]['16x']:.0%} of the queries with a "
              f"fixed-size state.")
    if "queue-nogate" in rows:
        nogate, length = rows["queue-nogate"], models["queue-nogate"].cfg.core.layer_memory_lengths[0]
        print(f"Without its learned write gate the same queue ({length} tokens per layer) is overwritten by "
              f"the distractors: {nogate['1x']:.0%} at {distances[0]} segments, "
              f"{nogate['16x']:.0%} at {far}; the gate, trained to keep only the segments that show pairs "
              f"(as MATR keeps segments with action), is what makes the pairs fit.")
    if "none" in rows:
        print(f"The same core without memory ('none') sees only the current segment, so it can only guess: "
              f"{rows['none']['16x']:.0%} against a chance level of {task.chance:.0%}.")
    return 0
