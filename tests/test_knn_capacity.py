"""The knn memory at its largest documented capacity runs the very same code path as a small one."""

from __future__ import annotations

import torch
from memstream.memory import CoreConfig, MemoryCore


def test_knn_at_262144_entries_equals_a_small_buffer_before_eviction():
    torch.manual_seed(0)
    small = CoreConfig(dim=16, heads=2, layers=1, segment=4, memory="knn", knn_capacity=64, knn_topk=4)
    big = small.replace(knn_capacity=262_144)
    core_small = MemoryCore(small).eval()
    core_big = MemoryCore(big).eval()
    core_big.load_state_dict(core_small.state_dict())
    s_small, s_big = core_small.init_state(1), core_big.init_state(1)
    assert s_big.keys.shape == (1, 2, 262_144, 8)
    reset = torch.zeros(1, dtype=torch.bool)
    with torch.inference_mode():
        for _ in range(16):  # 64 tokens: the small buffer is full but has evicted nothing yet
            x = torch.randn(1, 4, 16)
            y_small, s_small = core_small.step(x, s_small, reset)
            y_big, s_big = core_big.step(x, s_big, reset)
            torch.testing.assert_close(y_big, y_small, rtol=0, atol=1e-6)
    assert int(s_big.valid.sum()) == 64 and int(s_big.cursor[0]) == 64
    torch.testing.assert_close(s_big.keys[:, :, :64], s_small.keys)


def test_writing_into_the_resets_buffers_equals_the_copying_write_and_leaves_the_input_alone():
    """With autograd off, a step given ``reset`` writes into the reset's new key/value buffers instead of
    copying the whole ring; it must give the copying write's numbers bit for bit and never touch the
    caller's state (the step stays pure)."""
    torch.manual_seed(1)
    core = MemoryCore(CoreConfig(dim=16, heads=2, layers=2, segment=4, memory="knn", knn_capacity=24,
                                 knn_topk=4)).eval()
    state_inplace = state_copy = core.init_state(3)
    for k in range(12):  # past the capacity: the ring wraps; random resets, a padded segment now and then
        x = torch.randn(3, 4, 16)
        reset = torch.rand(3) < 0.2
        mask = torch.arange(4) < torch.tensor([4, 4 - k % 3, 4]).unsqueeze(1)
        before = [t.clone() for t in state_inplace]
        with torch.inference_mode():
            y_inplace, new_inplace = core.step(x, state_inplace, reset, mask)
        with torch.no_grad(), torch.enable_grad():  # autograd on: the copying write
            y_copy, new_copy = core.step(x, state_copy, reset, mask)
        assert all(torch.equal(a, b) for a, b in zip(before, state_inplace, strict=True))  # input untouched
        assert torch.equal(y_inplace, y_copy.detach())
        assert all(torch.equal(a, b.detach()) for a, b in zip(new_inplace, new_copy, strict=True))
        state_inplace, state_copy = new_inplace, new_copy
