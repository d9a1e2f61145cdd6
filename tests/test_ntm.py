"""``ntm`` memory: NTM addressing (content, interpolation, shift, sharpening), erase/add, bounded state."""

from __future__ import annotations

import pytest
import torch
from memstream.memory import NtmState
from memstream.memory.base import StepContext
from memstream.memory.ntm import address, content_weights, erase_add, sharpen, shift_weights

R, C = 6, 5


def _one_hot(row: int, rows: int = R) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(row), rows).float()


# -- addressing -------------------------------------------------------------------------------------------
def test_content_addressing_picks_the_matching_row():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(2, R, C, generator=g)
    key = torch.stack((memory[0, 3] * 2.5, -memory[1, 1] * 0.1)).unsqueeze(1)  # (B, 1, C); cosine ignores scale
    w = content_weights(memory, key, torch.full((2, 1, 1), 50.0))
    assert w.shape == (2, 1, R)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 1))
    assert w[0, 0].argmax() == 3 and w[0, 0, 3] > 0.99
    assert w[1, 0].argmin() == 1  # the opposite direction is the worst match
    # beta -> 0 spreads the weights evenly; an all-zero row or key stays finite
    flat = content_weights(memory, key, torch.zeros(2, 1, 1))
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / R))
    assert torch.isfinite(content_weights(torch.zeros(1, R, C), torch.zeros(1, 1, C), torch.ones(1, 1, 1))).all()


@pytest.mark.parametrize("offset,probs", [(1, [0.0, 0.0, 1.0]), (-1, [1.0, 0.0, 0.0]), (0, [0.0, 1.0, 0.0])])
def test_shift_moves_weights_by_one_row(offset, probs):
    shift = torch.tensor(probs)
    for row in range(R):  # the last row wraps to the first and back
        moved = shift_weights(_one_hot(row), shift)
        torch.testing.assert_close(moved, _one_hot((row + offset) % R))
    w = torch.softmax(torch.randn(3, R), -1)
    torch.testing.assert_close(shift_weights(w, shift.expand(3, -1)), torch.roll(w, offset, dims=-1))


def test_shift_is_a_circular_convolution():
    g = torch.Generator().manual_seed(1)
    w = torch.softmax(torch.randn(2, 3, R, generator=g), -1)
    s = torch.softmax(torch.randn(2, 3, 3, generator=g), -1)
    expected = sum(s[..., i:i + 1] * torch.roll(w, off, dims=-1) for i, off in enumerate((-1, 0, 1)))
    torch.testing.assert_close(shift_weights(w, s), expected)
    torch.testing.assert_close(shift_weights(w, s).sum(-1), torch.ones(2, 3))  # still a distribution


def test_sharpening():
    w = torch.tensor([0.5, 0.3, 0.2, 0.0])
    torch.testing.assert_close(sharpen(w, torch.tensor([1.0])), w)
    p = torch.tensor([0.25, 0.09, 0.04, 0.0])
    torch.testing.assert_close(sharpen(w, torch.tensor([2.0])), p / p.sum())
    # a huge gamma gives a one-hot, not 0/0
    torch.testing.assert_close(sharpen(torch.tensor([1e-3, 2e-3, 1e-3]), torch.tensor([1e4])),
                               torch.tensor([0.0, 1.0, 0.0]))


def test_address_combines_the_four_stages():
    g = torch.Generator().manual_seed(2)
    memory = torch.randn(1, R, C, generator=g)
    key = memory[:, 2:3] + 0.01 * torch.randn(1, 1, C, generator=g)
    prev = _one_hot(4).view(1, 1, R)
    beta, gamma = torch.full((1, 1, 1), 100.0), torch.ones(1, 1, 1)
    stay, forward = torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[0.0, 0.0, 1.0]]])
    one, zero = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    # gate 1: content only (row 2); gate 0: the previous weights (row 4); then a shift by +1
    assert address(memory, prev, key, beta, one, stay, gamma).argmax() == 2
    torch.testing.assert_close(address(memory, prev, key, beta, zero, stay, gamma), prev)
    torch.testing.assert_close(address(memory, prev, key, beta, zero, forward, gamma), _one_hot(5).view(1, 1, R))
    assert address(memory, prev, key, beta, one, forward, gamma).argmax() == 3
    # half-half interpolation, sharpened: the two peaks survive, the rest fades
    half = address(memory, prev, key, beta, torch.full((1, 1, 1), 0.5), stay, torch.full((1, 1, 1), 3.0))
    assert set(half[0, 0].topk(2).indices.tolist()) == {2, 4} and half[0, 0].sum().item() == pytest.approx(1.0)


def test_erase_one_replaces_a_row():
    g = torch.Generator().manual_seed(3)
    memory = torch.randn(2, R, C, generator=g)
    add = torch.randn(2, C, generator=g)
    w = torch.stack((_one_hot(2), _one_hot(5)))
    new = erase_add(memory, w, torch.ones(2, C), add)
    torch.testing.assert_close(new[0, 2], add[0])
    torch.testing.assert_close(new[1, 5], add[1])
    untouched = torch.ones(2, R, dtype=torch.bool)
    untouched[0, 2] = untouched[1, 5] = False
    torch.testing.assert_close(new[untouched], memory[untouched])
    # erase 0 only adds; weight 0 changes nothing
    torch.testing.assert_close(erase_add(memory, w, torch.zeros(2, C), add)[0, 2], memory[0, 2] + add[0])
    torch.testing.assert_close(erase_add(memory, torch.zeros(2, R), torch.ones(2, C), add), memory)


# -- the memory inside the core ------------------------------------------------------------------------------
def _steps(core, xs, state, mask=None):
    for x in xs:
        _, state = core.step(x, state, None, mask)
    return state


@torch.no_grad()
def test_state_stays_bounded_on_a_long_stream(make_core):
    """2000 steps of random input, write head driven hard: memory within max(|M_0|, 1), weights distributions."""
    core = make_core("ntm")
    core.memory.write_head.proj.weight.mul_(20.0)  # saturating erase/add and sharp addressing
    b, t, d = 2, core.cfg.segment, core.cfg.dim
    g = torch.Generator().manual_seed(4)
    state = core.init_state(b)
    bound = max(core.memory.initial.abs().max().item(), 1.0) + 1e-5
    for i in range(2000):
        _, state = core.step(3.0 * torch.randn(b, t, d, generator=g), state)
        if i % 250 == 249:
            for f in ("memory", "read_weights", "write_weights"):
                assert torch.isfinite(getattr(state, f)).all(), f"state.{f} at step {i}"
            assert state.memory.abs().max() <= bound
            torch.testing.assert_close(state.read_weights.sum(-1), torch.ones(b, core.cfg.ntm_read_heads))
            torch.testing.assert_close(state.write_weights.sum(-1), torch.ones(b))
            assert state.read_weights.min() >= 0 and state.write_weights.min() >= 0
    assert state.step.tolist() == [2000] * b
    assert not torch.allclose(state.memory, core.memory.initial.expand(b, -1, -1))  # it did write


@torch.no_grad()
def test_empty_segment_leaves_the_state_unchanged(make_core, stream):
    core = make_core("ntm")
    t, d = core.cfg.segment, core.cfg.dim
    xs = stream(2, 4, t, d).view(2, 4, t, d).unbind(1)
    before = _steps(core, xs[:3], core.init_state(2))
    mask = torch.tensor([[True] * t, [False] * t])  # stream 1 gets nothing valid
    _, after = core.step(xs[3], before, None, mask)
    assert isinstance(after, NtmState) and after.step.tolist() == [4, 4]
    for f in ("memory", "read_weights", "write_weights"):
        assert torch.equal(getattr(after, f)[1], getattr(before, f)[1]), f"state.{f} changed"
        assert not torch.equal(getattr(after, f)[0], getattr(before, f)[0]), f"state.{f} did not change"
    # From a fresh stream, an empty segment keeps the learned initial memory and weights.
    _, fresh = core.step(xs[0], core.init_state(2), None, torch.zeros(2, t, dtype=torch.bool))
    initial = core.memory.current(core.init_state(2))
    for got, want in zip(fresh[:3], initial, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@torch.no_grad()
def test_read_vectors_come_from_the_memory(make_core, stream):
    """The memory tokens every layer attends over are the heads' reads of the memory: other memory, other output."""
    core = make_core("ntm")
    t, d = core.cfg.segment, core.cfg.dim
    x = stream(1, 3, t, d).view(1, 3, t, d)
    state = _steps(core, x[:, :2].unbind(1), core.init_state(1))
    y, _ = core.step(x[:, 2], state)
    y_other, _ = core.step(x[:, 2], state._replace(memory=state.memory.flip(1)))
    assert not torch.allclose(y, y_other, atol=1e-5)
    memory = core.memory.read(0, core.blocks[0], state, _ctx(core, x[:, 2], state))
    k, v, valid = memory
    assert k.shape == v.shape == (1, core.cfg.heads, core.cfg.ntm_read_heads, core.cfg.head_dim)
    assert valid.all() and valid.shape == (1, core.cfg.ntm_read_heads)


def _ctx(core, x, state) -> StepContext:
    """The StepContext of one step after the memory's ``begin`` (x: (B, T, D))."""
    b, t, _ = x.shape
    mask = torch.ones(b, t, dtype=torch.bool)
    ctx = StepContext(mask=mask, pos=state.step.unsqueeze(1) * t + torch.arange(t))
    core.memory.begin(x, state, ctx, core.rotary)
    return ctx


def test_gradients_reach_every_parameter_and_stay_finite(make_core, stream):
    """Truncated BPTT over a few segments (padding included): finite gradients for all ntm parameters."""
    core = make_core("ntm").train()
    t, d = core.cfg.segment, core.cfg.dim
    x = stream(2, 4, t, d)
    mask = torch.ones(2, 4 * t, dtype=torch.bool)
    mask[1, -2:] = False
    core.forward_sequence(x, mask)[mask].pow(2).mean().backward()
    for name, p in core.memory.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
