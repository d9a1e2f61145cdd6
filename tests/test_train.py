"""The generic trainer: loss goes down, truncated BPTT windows and detaching, the LR schedule, exact resume,
config validation, skipped non-finite windows, and two-process data parallel training under torchrun."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from memstream.models.checkpoint import load_weights, read_config
from memstream.pipelines.train import TrainConfig, lr_at, param_groups, train
from safetensors.torch import load_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
D, H = 4, 8


class ToyRNN(nn.Module):
    """h' = norm(tanh(inp(x) + rec(h))), y = out(dropout(h')); x: (B, D), h: (B, H)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.rec, self.out = nn.Linear(D, H), nn.Linear(H, H, bias=False), nn.Linear(H, 1)
        self.norm, self.drop = nn.LayerNorm(H), nn.Dropout(0.1)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(torch.tanh(self.inp(x) + self.rec(h)))
        return self.out(self.drop(h)), h


class Recurrent:
    """Sequences of ``windows`` vectors; the target of window k is the running sum of the first feature.

    One window per optimiser step; ``n`` samples shared out by rank; ``record`` keeps what each call saw.
    """

    def __init__(self, n: int = 13, batch: int = 3, windows: int = 3, nan_at: int | None = None,
                 stop_at: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, windows, D, generator=g)
        self.y = self.x[..., :1].cumsum(1)
        self.n, self.batch, self.k, self.nan_at, self.stop_at = n, batch, windows, nan_at, stop_at
        self.calls, self.record = 0, []

    def batches(self, rank, world, seed, epoch):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))[rank::world]
        for i in range(0, len(perm), self.batch):
            yield self.x[perm[i:i + self.batch]], self.y[perm[i:i + self.batch]]

    def windows(self, batch):
        return self.k

    def init_state(self, model, batch):
        return torch.zeros(batch[0].shape[0], H)

    def loss(self, model, batch, window, state):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt("stop here")
        self.record.append((window, state.clone(), state.requires_grad, state.grad_fn))
        pred, state = model.step(batch[0][:, window], state)
        loss = ((pred - batch[1][:, window]) ** 2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, state, {"samples": float(batch[0].shape[0]), "mean_pred": float(pred.detach().mean())}

    def checkpoint_config(self):
        return {"model": "toy-rnn", "config": {"dim": D, "hidden": H}}


class Linear(Recurrent):
    """Plain regression y = x @ w on whole samples (no carried state)."""

    def __init__(self):
        super().__init__(n=64, batch=16, windows=1)
        self.y = self.x[:, 0] @ torch.tensor([1.0, -2.0, 0.5, 3.0]).unsqueeze(1)

    def init_state(self, model, batch):
        return None

    def loss(self, model, batch, window, state):
        return ((model(batch[0][:, 0]) - batch[1]) ** 2).mean(), None, {"samples": 16.0}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_loss_decreases_and_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(D, 1)
    evals = []
    summary = train(model, Linear(), TrainConfig(steps=60, lr=0.3, log_every=10, eval_every=30), tmp_path,
                    evaluate=lambda m: evals.append(m.training) or {"w0": float(m.weight[0, 0])}, progress=False)
    records = [r for r in _log(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["loss"] < 0.05 * records[0]["loss"]
    assert all(r["samples_per_s"] > 0 for r in records)
    assert [r["step"] for r in _log(tmp_path) if "eval" in r] == [30, 60] and evals == [False, False]
    assert summary["steps"] == 60 and summary["eval"]["w0"] == pytest.approx(1.0, abs=0.2)
    config = read_config(tmp_path)
    assert config["model"] == "toy-rnn" and config["training"]["step"] == 60
    assert config["training"]["train_config"]["lr"] == 0.3
    loaded = load_weights(tmp_path, nn.Linear(D, 1))
    assert torch.equal(loaded.weight, model.weight)


def test_tbptt_windows_carry_detached_state(tmp_path):
    objective = Recurrent(windows=3)
    summary = train(ToyRNN(), objective, TrainConfig(steps=7, log_every=1), tmp_path, progress=False)
    assert summary["steps"] == 7
    assert [w for w, *_ in objective.record] == [0, 1, 2, 0, 1, 2, 0]
    for w, state, needs_grad, grad_fn in objective.record:
        assert not needs_grad and grad_fn is None  # cut from the previous window's graph
        assert bool(state.abs().sum() == 0) == (w == 0)  # init_state at each batch's start, carried after
    assert "mean_pred" in _log(tmp_path)[0]


def test_lr_schedule():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3]) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55, abs=0.02)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert 0.1 <= lrs[-1] < 0.101
    assert TrainConfig(steps=200).warmup_steps == 10 and TrainConfig(steps=5).warmup_steps == 1


def test_trainer_follows_schedule_and_groups(tmp_path):
    train(ToyRNN(), Recurrent(), TrainConfig(steps=6, lr=0.01, warmup=2, log_every=1), tmp_path, progress=False)
    lrs = [r["lr"] for r in _log(tmp_path)]
    assert lrs == pytest.approx([lr_at(s, 6, 0.01, 2) for s in range(6)], abs=1e-8)
    groups, names = param_groups(ToyRNN(), 0.1)
    decayed = {n for n, p in ToyRNN().named_parameters() if any(p.shape == q.shape for q in groups[0]["params"])}
    assert decayed == {"inp.weight", "rec.weight", "out.weight"} and groups[1]["weight_decay"] == 0.0
    assert len(names) == len(list(ToyRNN().parameters()))


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(steps=10, lr=0.01, checkpoint_every=4, log_every=2)
    whole = ToyRNN(seed=0)
    train(whole, Recurrent(), cfg, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):  # stopped inside a batch: step 4 of 3-window batches
        train(ToyRNN(seed=0), Recurrent(stop_at=5), cfg, tmp_path / "parts", progress=False)
    state = json.loads((tmp_path / "parts" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["positions"] == [[0, 1, 1]] and state["state_leaves"] == [1]
    resumed = ToyRNN(seed=123)  # other initial weights: everything comes from the checkpoint
    summary = train(resumed, Recurrent(), cfg, tmp_path / "parts", progress=False)
    assert summary["steps"] == 10
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r["step"] for r in _log(tmp_path / "parts")] == [2, 4, 6, 8, 10]
    again = ToyRNN(seed=5)  # a finished run resumes to no work
    assert train(again, Recurrent(), cfg, tmp_path / "parts", progress=False)["steps"] == 10
    assert torch.equal(again.rec.weight, whole.rec.weight)


def test_cut_short_checkpoint_is_refused(tmp_path):
    cfg = TrainConfig(steps=2, log_every=1)
    train(ToyRNN(), Recurrent(), cfg, tmp_path, progress=False)
    train(ToyRNN(), Recurrent(), cfg, tmp_path, resume=False, progress=False)  # fresh run overwrites
    (tmp_path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="model.safetensors does not match"):
        train(ToyRNN(), Recurrent(), cfg, tmp_path, progress=False)


@pytest.mark.parametrize("field,value", [
    ("steps", 0), ("steps", 2.5), ("lr", 0.0), ("lr", float("nan")), ("weight_decay", -1.0), ("betas", (0.9,)),
    ("betas", (1.0, 0.9)), ("warmup", -1), ("warmup", 11), ("min_lr_ratio", 1.5), ("clip", -0.1),
    ("log_every", 0), ("checkpoint_every", -1), ("eval_every", -2), ("seed", True), ("threads", -1),
])
def test_bad_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{"steps": 10, field: value})


def test_non_finite_loss_is_skipped_and_counted(tmp_path, caplog):
    model = ToyRNN()
    objective = Recurrent(nan_at=2)
    summary = train(model, objective, TrainConfig(steps=5, log_every=1), tmp_path, progress=False)
    assert summary["skipped"] == 1 and summary["steps"] == 5
    assert [w for w, *_ in objective.record] == [0, 1, 0, 1, 2, 0]  # the rest of the NaN batch is dropped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "non-finite loss" in caplog.text
    assert read_config(tmp_path)["training"]["skipped"] == 1


def test_empty_shard_fails_clearly(tmp_path):
    objective = Recurrent()
    objective.batches = lambda rank, world, seed, epoch: iter(())
    with pytest.raises(ValueError, match="yielded no batches"):
        train(ToyRNN(), objective, TrainConfig(steps=3), tmp_path, progress=False)


SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch, torch.distributed as dist
from safetensors.torch import save_file
from memstream.pipelines.train import TrainConfig, train
from test_train import Recurrent, ToyRNN

rank, out = int(os.environ["RANK"]), {out!r}
cfg = TrainConfig(steps=8, lr=0.01, checkpoint_every=4, log_every=2)
if sys.argv[1] == "whole":  # the trainer makes the process group and ends it
    model = ToyRNN(seed=rank)  # different on each rank: rank 0's weights are broadcast
    train(model, Recurrent(), cfg, out + "/whole", progress=False)
else:  # a group made outside (PyTorch cannot make the default group twice in a process under torchrun)
    dist.init_process_group("gloo")
    try:
        train(ToyRNN(seed=rank), Recurrent(stop_at=5), cfg, out + "/parts", progress=False)
    except KeyboardInterrupt:
        pass
    model = ToyRNN(seed=7 + rank)
    summary = train(model, Recurrent(), cfg, out + "/parts", progress=False)
    assert summary["steps"] == 8 and summary["world"] == 2 and dist.is_initialized()
    dist.destroy_process_group()
save_file(dict(model.state_dict()), out + f"/{{sys.argv[1]}}{{rank}}.safetensors")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identical_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in ("whole", "parts"):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--monitor-interval=0.1",
                   "--master_port", str(_free_port()), str(script), mode]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, mode + proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "whole0.safetensors"), load_file(tmp_path / "whole1.safetensors")
    r0, r1 = load_file(tmp_path / "parts0.safetensors"), load_file(tmp_path / "parts1.safetensors")
    start = ToyRNN(seed=0).state_dict()
    for name in w0:
        assert torch.equal(w0[name], w1[name]) and torch.equal(r0[name], r1[name]), name
        assert torch.equal(w0[name], r0[name]), name  # resumed across ranks == uninterrupted
    assert not torch.equal(w0["rec.weight"], start["rec.weight"])
    state = json.loads((tmp_path / "parts" / "trainer_state.json").read_text())
    assert state["world"] == 2 and len(state["positions"]) == 2 and state["step"] == 8
    log = [r for r in _log(tmp_path / "whole") if "loss" in r]
    assert [r["step"] for r in log] == [2, 4, 6, 8] and all(math.isfinite(r["loss"]) for r in log)
