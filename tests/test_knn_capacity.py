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
