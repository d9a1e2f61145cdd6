"""The memory core: streaming == whole sequence, fixed-size state, reset, torch.compile, rotary precision."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VARIANTS
from memstream.memory import CoreConfig, MemoryCore
from memstream.memory.layers import Rotary, rotation_tables
from memstream.pipelines.core_bench import state_bytes

B = 3


def _ones(b: int, t: int) -> torch.Tensor:
    return torch.ones(b, t, dtype=torch.bool)


def _stream(core: MemoryCore, x: torch.Tensor, mask: torch.Tensor, resets=None):
    """Feed x: (B, S, D) segment by segment -> (outputs (B, S, D), list of states after each step)."""
    t = core.cfg.segment
    b = x.shape[0]
    state = core.init_state(b)
    ys, states = [], []
    for i in range(x.shape[1] // t):
        reset = resets[i] if resets is not None else torch.zeros(b, dtype=torch.bool)
        y, state = core.step(x[:, i * t:(i + 1) * t], state, reset, mask[:, i * t:(i + 1) * t])
        ys.append(y)
        states.append(state)
    return torch.cat(ys, dim=1), states


def _padded_mask(b: int, segments: int, t: int) -> torch.Tensor:
    """Stream 0 full; stream 1's last segment holds 1 valid token, stream 2's t - 1 (prefix masks)."""
    mask = _ones(b, segments * t)
    mask[1, -(t - 1):] = False
    mask[2, -1:] = False
    return mask


def _assert_valid_close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, atol: float) -> None:
    """Compare (B, S, D) outputs on valid tokens only (padded positions are to be ignored)."""
    diff = (a - b).abs().masked_fill(~mask.unsqueeze(-1), 0.0)
    assert diff.max().item() <= atol, f"max |diff| on valid tokens {diff.max().item():.3g} > {atol}"


# -- streaming == forward_sequence -----------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@torch.no_grad()
def test_streaming_equals_sequence(variant, causal, make_core, stream):
    core = make_core(variant, causal=causal)
    t, n = core.cfg.segment, 7
    x = stream(B, n, t, core.cfg.dim)
    mask = _padded_mask(B, n, t)
    y_seq = core.forward_sequence(x, mask)
    y_stream, states = _stream(core, x, mask)
    assert y_seq.shape == y_stream.shape == x.shape
    assert torch.isfinite(y_stream).all() and torch.isfinite(y_seq).all()
    _assert_valid_close(y_stream, y_seq, mask, 1e-5)
    assert states[-1].step.tolist() == [n] * B


@pytest.mark.parametrize("variant", ["queue", "queue-gated"])
@pytest.mark.parametrize("lengths", [(8, 3), (0, 5), (5, 0)], ids=lambda v: "-".join(map(str, v)))
@torch.no_grad()
def test_streaming_equals_sequence_per_layer_lengths(variant, lengths, make_core, stream):
    core = make_core(variant, memory_length=lengths)
    assert core.cfg.layer_memory_lengths == lengths
    t, n = core.cfg.segment, 6
    x = stream(B, n, t, core.cfg.dim, seed=1)
    mask = _padded_mask(B, n, t)
    y_stream, states = _stream(core, x, mask)
    _assert_valid_close(y_stream, core.forward_sequence(x, mask), mask, 1e-5)
    # The state holds max(lengths) entries; a layer with length 0 reads nothing.
    assert states[-1].keys.shape[1] == max(lengths)


@torch.no_grad()
def test_per_layer_length_changes_the_result(make_core, stream):
    """Per-layer lengths are not ignored: (8, 3) and (8, 8) differ, (8, 0) differs from both."""
    cores = [make_core("queue", memory_length=m) for m in ((8, 3), (8, 8), (8, 0))]
    x = stream(B, 5, cores[0].cfg.segment, cores[0].cfg.dim)
    mask = _ones(B, x.shape[1])
    outs = [core.forward_sequence(x, mask) for core in cores]
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)
    assert not torch.allclose(outs[0], outs[2], atol=1e-4)


@torch.no_grad()
def test_gated_queue_keeps_and_skips_segments(make_core, stream):
    """The write gate really decides: some segments are written (logit > 0), others skipped (< 0);
    a skipped segment leaves the queue untouched, a kept one pushes its valid tokens."""
    core = make_core("queue-gated")
    t, n = core.cfg.segment, 8
    x = stream(B, n, t, core.cfg.dim, seed=2)
    mask = _padded_mask(B, n, t)
    logits = core.memory.gate_logits(x.view(B, n, t, -1), mask.view(B, n, t))  # (B, n)
    assert (logits > 0).any() and (logits < 0).any(), logits
    assert logits.abs().min() > 0.1  # no segment sits on the decision boundary
    _, states = _stream(core, x, mask)
    before = core.init_state(B)
    for i, after in enumerate(states):
        n_valid = mask.view(B, n, t)[:, i].sum(1)
        for s in range(B):
            if logits[s, i] > 0:
                # kept: the newest slots now hold this segment's valid positions
                k = int(n_valid[s])
                assert after.valid[s, -k:].all()
                assert after.pos[s, -k:].tolist() == list(range(i * t, i * t + k))
            else:
                # skipped: memory unchanged
                assert torch.equal(after.keys[s], before.keys[s])
                assert torch.equal(after.valid[s], before.valid[s])
                assert torch.equal(after.pos[s], before.pos[s])
        before = after
    # The gate changes the outputs compared with the same weights writing every segment.
    ungated = make_core("queue")
    ungated.load_state_dict({k: v for k, v in core.state_dict().items() if not k.startswith("memory.gate")})
    y_gated, _ = _stream(core, x, mask)
    y_all, _ = _stream(ungated, x, mask)
    assert not torch.allclose(y_gated, y_all, atol=1e-4)


# -- fixed-size state ------------------------------------------------------------------------------------
def _layout(state) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(f, tuple(t.shape), t.dtype) for f, t in zip(state._fields, state, strict=True)]


def _nbytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state)


@torch.inference_mode()
def test_state_bytes_do_not_grow(variant, make_core):
    """State after 10 and after 10,000 segments: same shapes, dtypes and bytes (and still finite)."""
    core = make_core(variant, layers=1, segment=2, memory_length=6)
    b, t, d = 2, core.cfg.segment, core.cfg.dim
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(16, b, t, d, generator=g)
    reset, mask = torch.zeros(b, dtype=torch.bool), _ones(b, t)
    state = core.init_state(b)
    initial = (_layout(state), _nbytes(state))
    snapshot, held = None, []
    for i in range(10_000):
        _, state = core.step(xs[i % 16], state, reset, mask)
        held.append(state_bytes(state))  # the storages it keeps alive
        if i == 9:
            snapshot = (_layout(state), _nbytes(state))
    final = (_layout(state), _nbytes(state))
    assert snapshot == final == initial
    # What the state keeps alive may differ from step to step (a view of a step's buffer, or a copy), never grow.
    assert max(held[9_000:]) <= max(held[10:1_000]) <= 2 * final[1], "the memory a state holds grew"
    spec = core.state_spec(b)
    assert [(f, s, dt) for f, (s, dt) in spec.items()] == final[0]
    assert state.step.tolist() == [10_000] * b
    for f, tensor in zip(state._fields, state, strict=True):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"state.{f} is not finite after 10,000 segments"


@torch.no_grad()
def test_earlier_states_survive_later_steps(variant, make_core, stream):
    """A state is a value: stepping on (the eager step may hand out views of its own buffers) never changes a
    state returned earlier, and stepping twice from one state (two branches) gives the same result twice."""
    core = make_core(variant)
    t = core.cfg.segment
    x = stream(B, 10, t, core.cfg.dim, seed=8)
    reset, mask = torch.zeros(B, dtype=torch.bool), _ones(B, t)
    state, kept = core.init_state(B), []
    for i in range(10):
        _, state = core.step(x[:, i * t:(i + 1) * t], state, reset, mask)
        kept.append((state, [f.clone() for f in state]))
    for i, (st, copy) in enumerate(kept):
        for f, a, b in zip(st._fields, st, copy, strict=True):
            assert torch.equal(a, b), f"state.{f} of step {i} changed after later steps"
    branch = kept[4][0]
    y1, s1 = core.step(x[:, :t], branch, reset, mask)
    y2, s2 = core.step(x[:, :t], branch, reset, mask)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(s1, s2, strict=True))


def test_unmasked_attention_in_eager_steps_equals_the_graph_path(make_core, stream, monkeypatch):
    """Once the queue is full and the segment is too (the steady state), the eager step attends without a mask
    and returns the new queue as a view of its buffer; the grad-enabled step (what export traces) masks and
    copies. Same numbers, and the shortcut is really taken."""
    import memstream.memory.core as core_module

    core = make_core("queue")
    t, n = core.cfg.segment, 6
    x = stream(B, n, t, core.cfg.dim, seed=9)
    reset, mask = torch.zeros(B, dtype=torch.bool), _ones(B, t)
    masks_built = []
    additive = core_module.additive
    monkeypatch.setattr(core_module, "additive", lambda m, dtype: masks_built.append(1) or additive(m, dtype))
    s_fast = s_graph = core.init_state(B)
    full = -(-core.memory.capacity // t)  # steps until every slot is filled
    for i in range(n):
        seg = x[:, i * t:(i + 1) * t]
        masks_built.clear()
        with torch.no_grad():
            y_fast, s_fast = core.step(seg, s_fast, reset, mask)
        if i >= full:
            assert not masks_built, f"step {i}: a full queue and segment still built an attention mask"
            assert s_fast.keys.untyped_storage().nbytes() > _nbytes(s_fast[:1]), "the new queue was copied"
        with torch.enable_grad():
            y_graph, s_graph = core.step(seg, s_graph, reset, mask)
        assert masks_built, "the grad-enabled step must keep the mask (the exported graph needs it)"
        torch.testing.assert_close(y_fast, y_graph.detach(), atol=1e-6, rtol=0)
        for f, a, b in zip(s_fast._fields, s_fast, s_graph, strict=True):
            torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=0, msg=f"state.{f} at step {i}")


# -- reset -----------------------------------------------------------------------------------------------
@torch.no_grad()
def test_reset_starts_a_fresh_stream(variant, make_core, stream):
    core = make_core(variant)
    t, n, k = core.cfg.segment, 10, 4
    x = stream(B, n, t, core.cfg.dim, seed=4)
    mask = _ones(B, n * t)
    mask[1, k * t + 2:(k + 1) * t] = False  # the reset stream's first segment is padded too
    no_reset = [torch.zeros(B, dtype=torch.bool) for _ in range(n)]
    resets = [r.clone() for r in no_reset]
    resets[k][1] = True

    y_reset, st_reset = _stream(core, x, mask, resets)
    y_plain, st_plain = _stream(core, x, mask, no_reset)
    # A fresh stream fed only segments k, k+1, ... (in the same batch slot).
    y_fresh, st_fresh = _stream(core, x[:, k * t:], mask[:, k * t:])

    valid = mask[1:2, k * t:]
    _assert_valid_close(y_reset[1:2, k * t:], y_fresh[1:2], valid, 0.0)
    for a, b in zip(st_reset[-1], st_fresh[-1], strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a[1], b[1], atol=0, rtol=0)
        else:
            assert torch.equal(a[1], b[1])
    # Before the reset, and for the other streams throughout: bit-identical to no reset at all.
    assert torch.equal(y_reset[:, :k * t], y_plain[:, :k * t])
    for s in (0, 2):
        assert torch.equal(y_reset[s], y_plain[s])
        for a, b in zip(st_reset[-1], st_plain[-1], strict=True):
            assert torch.equal(a[s], b[s])
    if variant != "none":  # the reset really changed stream 1: its memory mattered
        assert not torch.allclose(y_reset[1, (k + 1) * t:], y_plain[1, (k + 1) * t:], atol=1e-5)


# -- torch.compile ---------------------------------------------------------------------------------------
# Inductor compiles one variant in 15-50 s on 2 CPU cores (all seven: ~2 minutes, cold cache), so only
# the queue runs by default; `make test-all` compiles the others.
@pytest.mark.parametrize("variant", [v if v == "queue" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in VARIANTS])
@torch.no_grad()
def test_compiled_step_equals_eager(variant, make_core, stream):
    core = make_core(variant)
    t, n = core.cfg.segment, 5
    x = stream(B, n, t, core.cfg.dim, seed=5)
    mask = _ones(B, n * t)
    mask[0, 3 * t + 1:4 * t] = False
    resets = [torch.zeros(B, dtype=torch.bool) for _ in range(n)]
    resets[3][2] = True
    torch._dynamo.reset()
    compiled = torch.compile(core.step, fullgraph=True)
    s_eager = s_comp = core.init_state(B)
    for i in range(n):
        seg, m = x[:, i * t:(i + 1) * t], mask[:, i * t:(i + 1) * t]
        y_e, s_eager = core.step(seg, s_eager, resets[i], m)
        y_c, s_comp = compiled(seg, s_comp, resets[i], m)
        torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=0)
        for f, a, b in zip(s_eager._fields, s_comp, s_eager, strict=True):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"state.{f} at step {i}")
            else:
                assert torch.equal(a, b), f"state.{f} at step {i}"
    torch._dynamo.reset()


# -- rotary positions ------------------------------------------------------------------------------------
def _angles(rotary: Rotary, pos: list[int]) -> torch.Tensor:
    cos, sin = rotary(torch.tensor([pos], dtype=torch.int64))  # (1, 1, N, Dh/2)
    return torch.atan2(sin[0, 0].double(), cos[0, 0].double())  # (N, Dh/2)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


POSITIONS = [0, 1, 1023, 1024, 1025, 99_999, 1_048_575, 1_048_576, 10**7 + 3, 123_456_789 - 10**7 * 3, 10**8 - 1,
             10**8]
DISTANCES = [1, 2, 7, 1000, 1024, 4096]


@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rotary_relative_rotation_is_position_independent(base):
    """Rotation between p and p + d equals the one between 0 and d within 2e-3 rad, for p up to 1e8."""
    rotary = Rotary(64, base)
    ref = _angles(rotary, [0, *DISTANCES])
    ref_rel = _wrap(ref[1:] - ref[:1])  # (len(DISTANCES), Dh/2)
    worst = 0.0
    for p in POSITIONS:
        a = _angles(rotary, [p, *(p + d for d in DISTANCES)])
        rel = _wrap(a[1:] - a[:1])
        worst = max(worst, _wrap(rel - ref_rel).abs().max().item())
    assert worst < 2e-3, f"relative rotation drifts by {worst:.3g} rad"


def test_rotary_absolute_angle_matches_float64():
    rotary = Rotary(64, 10000.0)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    pos = torch.tensor(POSITIONS, dtype=torch.float64)
    exact = _wrap(pos.unsqueeze(1) * inv_freq)
    err = _wrap(_angles(rotary, POSITIONS) - exact).abs().max().item()
    assert err < 2e-3, err
    # The naive float32 product would be off by radians at 1e8: the digit split is what buys this.
    naive = (torch.tensor(POSITIONS, dtype=torch.float32).unsqueeze(1) * inv_freq.float()).double()
    assert _wrap(naive - exact).abs().max().item() > 0.1


def test_rotary_tables_shape():
    cos, sin = Rotary(8, 10000.0)(torch.arange(10).view(2, 5))
    assert cos.shape == sin.shape == (2, 1, 5, 4)
    torch.testing.assert_close(cos**2 + sin**2, torch.ones_like(cos))


def test_token_tables_equal_the_tables_made_from_half_width_ones():
    """The step's token-major full-width tables are the numbers rotation_tables makes from forward's, exactly, also
    far into a stream (positions past 2^20 use every digit)."""
    rotary = Rotary(16, 10000.0)
    pos = torch.tensor([[0, 1, 2, 3], [2**20 + 5, 2**20 + 6, 2**33 + 7, 10**9]])
    cos, sin = rotary(pos)  # (B, 1, N, Dh/2)
    cos_full, sin_signed = rotation_tables(*(c.transpose(1, 2).unsqueeze(2) for c in (cos, sin)))
    token_cos, token_sin = rotary.token_tables(pos)
    assert token_cos.shape == token_sin.shape == (2, 4, 1, 1, 16)
    assert torch.equal(token_cos, cos_full) and torch.equal(token_sin, sin_signed)


def test_core_state_spec_matches_init_state(variant, make_core):
    core = make_core(variant)
    state = core.init_state(5)
    assert isinstance(state, core.State)
    assert _layout(state) == [(f, s, dt) for f, (s, dt) in core.state_spec(5).items()]
    assert all(t.shape[0] == 5 for t in state)  # batch first on every tensor
    assert all(not t.any() for t in state)      # the all-zero state is the empty memory
    assert isinstance(core.cfg, CoreConfig)


# -- eager inference shortcuts ---------------------------------------------------------------------------
def test_eager_inference_shortcuts_equal_the_graph_path(variant, make_core, stream):
    """Without autograd the eager step skips a reset nobody asked for and writes into its own buffers; with
    autograd on (what training, torch.compile and the export trace) it does neither. Same outputs and states,
    and the caller's state is never written to."""
    core = make_core(variant)
    t, n = core.cfg.segment, 8
    x = stream(B, n, t, core.cfg.dim, seed=6)
    mask = _padded_mask(B, n, t)
    resets = [torch.zeros(B, dtype=torch.bool) for _ in range(n)]
    resets[0][:] = True
    resets[5][1] = True
    resets[3] = None  # no reset argument at all
    s_fast = s_graph = core.init_state(B)
    for i in range(n):
        seg, m = x[:, i * t:(i + 1) * t], mask[:, i * t:(i + 1) * t]
        before = [f.clone() for f in s_fast]
        with torch.no_grad():
            y_fast, s_next = core.step(seg, s_fast, resets[i], m)
        for f, a, b in zip(s_fast._fields, s_fast, before, strict=True):
            assert torch.equal(a, b), f"the step wrote into the caller's state.{f} at step {i}"
        s_fast = s_next
        with torch.enable_grad():
            y_graph, s_graph = core.step(seg, s_graph, resets[i], m)
        s_graph = type(s_graph)(*(f.detach() for f in s_graph))
        _assert_valid_close(y_fast, y_graph.detach(), m, 1e-6)
        for f, a, b in zip(s_fast._fields, s_fast, s_graph, strict=True):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"state.{f} at step {i}")
            else:
                assert torch.equal(a, b), f"state.{f} at step {i}"


# -- the blocks' kept tensors ------------------------------------------------------------------------------
def _modifications():
    """Changes a user may make to a trained core, each as (name, fn(core))."""

    def replace_parameter(core):
        qkv = core.blocks[0].qkv
        qkv.weight = torch.nn.Parameter(qkv.weight.detach() * 1.5)

    def replace_submodule(core):
        old = core.blocks[1].out
        new = torch.nn.Linear(old.in_features, old.out_features)
        with torch.no_grad():
            new.weight.copy_(old.weight.flip(0))
            new.bias.copy_(old.bias + 0.1)
        core.blocks[1].out = new

    def update_in_place(core):
        with torch.no_grad():
            core.blocks[0].ff[2].weight.mul_(2.0)
            core.blocks[1].norm1.bias.add_(0.3)

    def change_norm_setting(core):
        core.blocks[1].norm2.eps = 0.5

    def load_with_assign(core):
        sd = {k: v * 0.9 if k.endswith("qkv.bias") else v for k, v in core.state_dict().items()}
        core.load_state_dict(sd, assign=True)

    return [replace_parameter, replace_submodule, update_in_place, change_norm_setting, load_with_assign]


@pytest.mark.parametrize("modify", _modifications(), ids=lambda f: f.__name__)
def test_blocks_use_their_current_parameters(modify, make_core, stream):
    """The blocks keep their tensors between steps (Block.tensors); a step after any change to the parameters (in
    place, replaced, a new submodule, a norm setting, load_state_dict(assign=True)) must compute with the new ones,
    exactly as a core built with them from the start."""
    core = make_core("queue")
    t = core.cfg.segment
    x = stream(B, 2, t, core.cfg.dim, seed=12)
    reset, mask = torch.zeros(B, dtype=torch.bool), _ones(B, t)
    with torch.no_grad():
        core.step(x[:, :t], core.init_state(B), reset, mask)  # the blocks now keep their tensors
        before, _ = core.step(x[:, t:], core.init_state(B), reset, mask)
    modify(core)
    fresh = make_core("queue")
    fresh.load_state_dict(core.state_dict())
    for ours, theirs in zip(core.blocks, fresh.blocks, strict=True):
        ours_eps = (ours.norm1.eps, ours.norm2.eps)
        theirs.norm1.eps, theirs.norm2.eps = ours_eps
    with torch.no_grad():
        after, _ = core.step(x[:, t:], core.init_state(B), reset, mask)
        expected, _ = fresh.step(x[:, t:], fresh.init_state(B), reset, mask)
    assert not torch.equal(after, before), "the modification changed nothing: the test would prove nothing"
    assert torch.equal(after, expected)


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle"])
def test_copied_blocks_use_their_own_parameters(duplicate, make_core, stream):
    """A copied core (deepcopy, or a pickle round trip as torch.save of a whole model does) keeps no tensors of the
    original: a norm setting changed on the copy is used by the copy, and the original is untouched."""
    import copy
    import pickle

    core = make_core("queue")
    t = core.cfg.segment
    x = stream(B, 2, t, core.cfg.dim, seed=13)[:, :t]
    reset, mask = torch.zeros(B, dtype=torch.bool), _ones(B, t)
    with torch.no_grad():
        before, _ = core.step(x, core.init_state(B), reset, mask)  # the blocks now keep their tensors
    twin = copy.deepcopy(core) if duplicate == "deepcopy" else pickle.loads(pickle.dumps(core))
    twin.blocks[1].norm2.eps = 0.5
    fresh = make_core("queue")
    fresh.blocks[1].norm2.eps = 0.5
    with torch.no_grad():
        after, _ = twin.step(x, twin.init_state(B), reset, mask)
        expected, _ = fresh.step(x, fresh.init_state(B), reset, mask)
        again, _ = core.step(x, core.init_state(B), reset, mask)
    assert not torch.equal(after, before)
    assert torch.equal(after, expected) and torch.equal(again, before)
