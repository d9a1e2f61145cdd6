"""Training over streams: memory-replay backprop equals plain BPTT; truncated BPTT windows and detaching."""

from __future__ import annotations

import math

import pytest
import torch
from memstream.memory.training import bptt, detach_state, mrbp, truncated_bptt

N_SEGMENTS = 5


def _problem(core, n: int = N_SEGMENTS, seed: int = 0):
    """Segments (leaf tensors needing grad), fixed random loss weights, and the step function."""
    g = torch.Generator().manual_seed(seed)
    b, t, d = 2, core.cfg.segment, core.cfg.dim
    segments = [torch.randn(b, t, d, generator=g).requires_grad_(True) for _ in range(n)]
    weights = [torch.randn(b, t, d, generator=g) for _ in range(n)]

    def loss_fn(i, y):
        return (y * weights[i]).sum() / y.numel()

    def step(x, state):
        return core.step(x, state)

    return segments, loss_fn, step


def _grads(core, segments) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in core.named_parameters() if p.grad is not None}
    out.update({f"x{i}": x.grad.clone() for i, x in enumerate(segments)})
    return out


def _zero(core, segments) -> None:
    core.zero_grad(set_to_none=True)
    for x in segments:
        x.grad = None


def test_mrbp_gradients_equal_bptt(variant, make_core):
    core = make_core(variant).train()  # dropout is 0: train mode stays deterministic
    segments, loss_fn, step = _problem(core)

    loss_b, state_b = bptt(step, segments, core.init_state(2), loss_fn)
    grads_b = _grads(core, segments)
    _zero(core, segments)
    loss_m, state_m = mrbp(step, segments, core.init_state(2), loss_fn)
    grads_m = _grads(core, segments)

    torch.testing.assert_close(loss_m, loss_b, atol=1e-6, rtol=0)
    for a, b in zip(state_m, state_b, strict=True):
        torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=0)
    assert grads_m.keys() == grads_b.keys()
    # every parameter that influences the outputs got a gradient (the memory path included)
    assert sum(g.abs().sum() > 0 for g in grads_b.values()) > len(grads_b) // 2
    for name in grads_b:
        torch.testing.assert_close(grads_m[name], grads_b[name], atol=1e-6, rtol=0, msg=name)


def test_mrbp_gradient_crosses_segments(make_core):
    """The loss of the last segment alone has a gradient w.r.t. the first segment's input (through the
    memory), in both BPTT and MRBP: the replay really carries state gradients backwards."""
    core = make_core("queue").train()
    segments, _, step = _problem(core, n=3)
    last_only = lambda i, y: y.sum() * (i == 2)  # noqa: E731
    bptt(step, segments, core.init_state(2), last_only)
    g_b = segments[0].grad.clone()
    _zero(core, segments)
    mrbp(step, segments, core.init_state(2), last_only)
    assert g_b.abs().sum() > 0
    torch.testing.assert_close(segments[0].grad, g_b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,k", [(7, 3), (6, 3), (5, 1), (4, 10)])
def test_truncated_bptt_windows(n, k, make_core):
    core = make_core("queue").train()
    segments, loss_fn, step = _problem(core, n=n)
    window_losses = []
    state = truncated_bptt(step, segments, core.init_state(2), loss_fn, k, window_losses.append)
    assert len(window_losses) == math.ceil(n / k)
    for t in state:
        assert not t.requires_grad and t.grad_fn is None
    assert state.step.tolist() == [n, n]
    # Truncation cuts gradients, not values: the window losses add up to the full-sequence loss.
    with torch.no_grad():
        full, _ = bptt(step, segments, core.init_state(2), loss_fn, backward=False)
    torch.testing.assert_close(sum(window_losses), full, atol=1e-6, rtol=0)


def test_truncated_bptt_with_one_window_equals_bptt(make_core):
    core = make_core("tokens").train()
    segments, loss_fn, step = _problem(core, n=4)
    bptt(step, segments, core.init_state(2), loss_fn)
    grads_b = _grads(core, segments)
    _zero(core, segments)
    truncated_bptt(step, segments, core.init_state(2), loss_fn, 4, lambda loss: None)
    grads_t = _grads(core, segments)
    for name in grads_b:
        torch.testing.assert_close(grads_t[name], grads_b[name], atol=1e-6, rtol=0, msg=name)


def test_truncated_bptt_cuts_the_graph(make_core):
    """With k = 1, the loss of segment 1 never reaches segment 0's input."""
    core = make_core("queue").train()
    segments, _, step = _problem(core, n=2)
    truncated_bptt(step, segments, core.init_state(2), lambda i, y: y.sum() * (i == 1), 1, lambda loss: None)
    assert segments[0].grad is None or not segments[0].grad.any()
    assert segments[1].grad.abs().sum() > 0


@pytest.mark.parametrize("k", [0, -2])
def test_truncated_bptt_rejects_bad_k(k, make_core):
    core = make_core("queue")
    segments, loss_fn, step = _problem(core, n=2)
    with pytest.raises(ValueError, match=f"k={k}"):
        truncated_bptt(step, segments, core.init_state(2), loss_fn, k, lambda loss: None)


def test_detach_state(make_core):
    core = make_core("slots").train()
    segments, _, step = _problem(core, n=1)
    _, state = step(segments[0], core.init_state(2))
    assert state.memory.requires_grad
    detached = detach_state(state)
    assert type(detached) is type(state)
    assert all(not t.requires_grad for t in detached)
    assert all(torch.equal(a, b) for a, b in zip(detached, state, strict=True))
