"""Long-range associative recall: generator, model parity, training, the bundled checkpoints, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from memstream.memory import MEMORY_TYPES
from memstream.pipelines.recall import (
    _mrbp_recall_loss,
    bundled_dir,
    cli_bench,
    cli_train,
    evaluate_recall,
    load_recall_model,
    recall_config,
    train_recall,
)
from memstream.pipelines.recall_task import IGNORE, QUERY, RecallConfig, RecallModel, RecallTask, make_batch

TASK = RecallTask()


def _batch(distance: int = 3, batch: int = 16, seed: int = 0):
    return make_batch(TASK, batch, distance, torch.Generator().manual_seed(seed))


def test_queries_answer_with_the_values_shown_earlier():
    data = _batch(distance=3)
    t, p = TASK.segment, TASK.pair_segments
    assert data.tokens.shape == (16, TASK.num_segments(3) * t)
    for tokens, targets in zip(data.tokens.tolist(), data.targets.tolist()):
        shown = dict(zip(tokens[:p * t:2], tokens[1:p * t:2]))
        assert len(shown) == TASK.num_pairs                                   # distinct keys
        assert all(TASK.first_key <= k < TASK.first_value for k in shown)
        assert all(TASK.first_value <= v < TASK.first_distractor for v in shown.values())
        distractors = tokens[p * t:-t]
        assert all(TASK.first_distractor <= d < TASK.vocab_size for d in distractors)
        asked = [(tokens[i], targets[i]) for i in range(len(tokens)) if targets[i] != IGNORE]
        assert len(asked) == TASK.queries and len({k for k, _ in asked}) == TASK.queries
        for key, value in asked:
            assert shown[key] == value + TASK.first_value                     # the value paired earlier
        assert tokens[-t::2] == [QUERY] * (t // 2)                            # "? k ? k ..."
    again = _batch(distance=3)
    assert torch.equal(again.tokens, data.tokens) and torch.equal(again.targets, data.targets)


def test_salient_labels_mark_exactly_the_pair_segments():
    data = _batch(distance=5)
    segments = data.tokens.view(16, -1, TASK.segment)
    has_pairs = ((segments >= TASK.first_value) & (segments < TASK.first_distractor)).any(-1)
    assert torch.equal(data.salient, has_pairs)
    assert data.salient[:, :TASK.pair_segments].all() and not data.salient[:, TASK.pair_segments:].any()


def _tiny(memory: str) -> RecallModel:
    torch.manual_seed(0)
    return RecallModel(recall_config(memory, dim=16, heads=1, train_distance=1)).eval()


@pytest.mark.parametrize("memory", MEMORY_TYPES)
def test_streaming_step_equals_forward_sequence(memory):
    model = _tiny(memory)
    if memory == "queue":  # a gate that writes some segments and skips others exercises both paths
        with torch.no_grad():
            model.core.memory.gate.weight.normal_(0.0, 2.0)
        x = model.embed(_batch(distance=4, batch=4).tokens).view(4, -1, TASK.segment, 16)
        logits = model.core.memory.gate_logits(x, torch.ones(x.shape[:3], dtype=torch.bool))
        assert (logits > 0).any() and (logits <= 0).any()
    data = _batch(distance=4, batch=4)
    with torch.no_grad():
        whole = model.forward_sequence(data.tokens, data.mask)
        state = model.init_state(4)
        reset = torch.zeros(4, dtype=torch.bool)
        streamed = []
        t = TASK.segment
        for i in range(0, data.tokens.shape[1], t):
            y, state = model.step(data.tokens[:, i:i + t], state, reset, data.mask[:, i:i + t])
            streamed.append(y)
    assert whole.shape == (4, data.tokens.shape[1], TASK.num_values)
    torch.testing.assert_close(torch.cat(streamed, 1), whole, atol=1e-5, rtol=1e-4)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    model = RecallModel(recall_config("queue", dim=32, heads=1, train_distance=1))
    data = _batch(distance=2, batch=64, seed=5)
    answer = data.targets != IGNORE

    def loss() -> float:
        with torch.no_grad():
            logits = model.forward_sequence(data.tokens, data.mask)
        return float(torch.nn.functional.cross_entropy(logits[answer], data.targets[answer]))

    before = loss()
    records = []
    summary = train_recall(model, steps=40, train_distance=2, batch=16, lr=1e-2, seed=1, log_every=10,
                           log=records.append)
    assert summary["steps"] == 40 and [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["gate_loss"] < 0.6 < records[0]["gate_loss"]  # the write gate learns too
    assert loss() < before - 0.1


@pytest.mark.parametrize("memory", ["tokens", "slots", "queue"])
def test_memory_replay_gradients_equal_plain_backprop(memory):
    """The recall loss backpropagated by memory replay over `step` leaves the gradients that backprop through
    forward_sequence leaves (queue: its parallel form)."""
    torch.manual_seed(0)
    model = RecallModel(recall_config(memory, dim=32, heads=1, train_distance=2))
    data = _batch(distance=2, batch=8, seed=4)
    answer = data.targets != IGNORE
    logits = model.forward_sequence(data.tokens, data.mask)
    loss = torch.nn.functional.cross_entropy(logits[answer], data.targets[answer])
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    replayed_loss, correct = _mrbp_recall_loss(model, data, answer)
    replayed = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert replayed_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    assert correct == int((logits[answer].argmax(-1) == data.targets[answer]).sum())
    assert set(replayed) == set(plain) and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(replayed[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_train_recall_with_memory_replay():
    runs = {}
    for backprop in ("bptt", "mrbp"):
        torch.manual_seed(0)
        model = RecallModel(recall_config("tokens", dim=32, heads=1, train_distance=2))
        records = []
        train_recall(model, steps=1, train_distance=2, batch=8, seed=3, log_every=1, log=records.append,
                     backprop=backprop)
        runs[backprop] = records[0]
    assert runs["mrbp"]["acc"] == runs["bptt"]["acc"]
    assert runs["mrbp"]["loss"] == pytest.approx(runs["bptt"]["loss"], abs=1e-5)
    with pytest.raises(ValueError, match="backprop='tbptt'"):
        train_recall(RecallModel(recall_config("none", dim=32, heads=1)), steps=1, train_distance=1, backprop="tbptt")


def test_bundled_queue_recalls_at_16x_and_the_baseline_guesses():
    queue, config = load_recall_model(bundled_dir() / "recall-queue")
    assert config["model"] == "recall" and queue.gated
    far = 16 * config["training"]["train_distance"]
    chance = queue.cfg.task.chance
    assert evaluate_recall(queue, far, sequences=64, seed=123) > 0.9 > 10 * chance
    none, _ = load_recall_model(bundled_dir() / "recall-none")
    assert evaluate_recall(none, far, sequences=128, seed=123) < 2.5 * chance


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown memory type 'lstm'"):
        recall_config("lstm")
    with pytest.raises(ValueError, match="distance=0"):
        make_batch(TASK, 2, 0, torch.Generator())
    with pytest.raises(ValueError, match="train_distance=0"):
        recall_config("queue", train_distance=0)
    with pytest.raises(ValueError, match="segment=7"):
        RecallTask(segment=7)
    with pytest.raises(ValueError, match="segment"):
        RecallConfig(core=recall_config("none").core.replace(segment=16), task=TASK)
    assert cli_train(["--memory", "lstm", "--out", str(tmp_path / "x")]) == 2
    assert "unknown memory type 'lstm'" in capsys.readouterr().err
    assert cli_bench(["--types", "queue,gru"]) == 2


def test_cli_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli_train(["--memory", "none", "--out", str(out), "--steps", "2", "--eval-sequences", "4",
                      "--train-distance", "1", "--backprop", "mrbp"]) == 0
    model, config = load_recall_model(out)
    assert config["model"] == "recall" and config["config"]["memory"] == "none"
    assert config["training"]["backprop"] == "mrbp"
    assert set(config["training"]["recall"]) == {"1x", "4x", "16x"}
    lines = [json.loads(s) for s in (out / "train_log.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "summary" and lines[0]["step"] == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["recall"] == config["training"]["recall"]


def test_quick_bench_prints_one_json_object(capsys):
    assert cli_bench(["--quick", "--types", "queue,none", "--train-distance", "1", "--steps", "3",
                      "--eval-sequences", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["recall"]) == {"queue", "none"} and result["chance"] == TASK.chance
    assert set(result["recall"]["queue"]) == {"1x", "4x", "16x"} and result["distances"]["16x"] == 16
    assert set(result["train_seconds"]) == {"queue", "none"}
