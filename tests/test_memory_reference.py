"""The recurrent memory types against plain reference loops written from their definitions.

``tokens``, ``slots``, ``knn`` and ``ntm`` have no parallel form: their ``forward_sequence`` is a loop over ``step``, so
test_core's streaming == sequence check compares ``step`` with itself for them. Here each type is recomputed
one stream and one segment at a time, in float64, by code that shares nothing with the core but its weights:
explicit rotary angles, attention as an einsum over the keys a token may see, padded tokens simply left out
(a padded token must act as if it were absent), the knn ring as a Python list, resets as a fresh reference
stream. The core's outputs on valid tokens and its state must match it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from memstream.memory import MemoryCore

B, SEGMENTS = 3, 7
ATOL = 1e-5

REFERENCE_VARIANTS = ["tokens", "tokens-update", "slots", "knn", "ntm"]


def _ln(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)


def _linear(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


class Reference:
    """One stream of a core, recomputed segment by segment from the definitions (float64)."""

    def __init__(self, core: MemoryCore) -> None:
        self.cfg = c = core.cfg
        self.p = {k: v.detach().double() for k, v in core.state_dict().items()}
        self.h, self.dh, self.k = c.heads, c.head_dim, c.num_tokens
        self.fresh()

    def fresh(self) -> None:
        """The empty stream: learned initial tokens/slots, an empty ring, segment counter 0."""
        self.segment = 0
        self.memory = self.p["memory.initial"].clone() if "memory.initial" in self.p else None
        if self.cfg.memory == "ntm":  # the NTM's previous read and write weights start from learned logits
            self.read_w = torch.softmax(self.p["memory.initial_read"], dim=-1)
            self.write_w = torch.softmax(self.p["memory.initial_write"], dim=-1).unsqueeze(0)
        self.ring: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # knn: (key, value, position), oldest first

    # -- pieces -------------------------------------------------------------------------------------------
    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: (N, H, Dh) rotated at positions pos: (N,); pairs (i, i + Dh/2), frequency base^(-2i/Dh)."""
        half = self.dh // 2
        inv = 1.0 / self.cfg.rope_base ** (torch.arange(half, dtype=torch.float64) * 2 / self.dh)
        angle = pos.double().unsqueeze(1) * inv  # (N, Dh/2)
        c, s = angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.h, self.dh)

    def attention(self, q, k, v, sees: torch.Tensor) -> torch.Tensor:
        """q: (Nq, H, Dh), k/v: (Nk, H, Dh), sees: (Nq, Nk) bool -> (Nq, H, Dh)."""
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.dh)
        weights = torch.softmax(scores.masked_fill(~sees, -math.inf), dim=-1)
        return torch.einsum("hqk,khd->qhd", weights, v)

    def qkv(self, prefix: str, h: torch.Tensor, pos: torch.Tensor):
        q, k, v = _linear(self.p, f"{prefix}.qkv", _ln(self.p, f"{prefix}.norm1", h)).split(self.cfg.dim, dim=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        return q, self.rope(q, pos), k, self.rope(k, pos), v

    def finish(self, prefix: str, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        h = h + _linear(self.p, f"{prefix}.out", attn.reshape(h.shape[0], -1))
        up = F.gelu(_linear(self.p, f"{prefix}.ff.0", _ln(self.p, f"{prefix}.norm2", h)))
        return h + _linear(self.p, f"{prefix}.ff.2", up)

    def segment_sees(self, n: int) -> torch.Tensor:
        """(n, n): which valid segment tokens each valid token sees."""
        ones = torch.ones(n, n, dtype=torch.bool)
        return ones.tril() if self.cfg.causal else ones

    # -- one segment ----------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        """x: (n, D) the segment's valid tokens (n may be 0) -> outputs (n, D) after the final norm."""
        t = self.cfg.segment
        n = x.shape[0]
        pos = self.segment * t + torch.arange(n)
        first, last = self.segment * t, self.segment * t + t - 1  # the slot's first and last position
        y = None
        if n:
            y = getattr(self, f"_{self.cfg.memory}")(x.double(), pos, first, last)
            y = _ln(self.p, "norm", y)
        self.segment += 1
        return y

    def _tokens(self, x, pos, first, last):
        k, n = self.k, x.shape[0]
        update = "memory.updater.qkv.weight" in self.p
        parts = [self.memory + self.p["memory.read_embed"], x]
        positions = [torch.full((k,), first), pos]
        if not update:
            parts.append(self.memory + self.p["memory.write_embed"])
            positions.append(torch.full((k,), last))
        h, pos_all = torch.cat(parts), torch.cat(positions)
        sees = torch.zeros(len(h), len(h), dtype=torch.bool)
        sees[:k, :k] = True                          # read tokens: the memory
        sees[k:k + n, :k] = True                     # segment tokens: the memory and the segment
        sees[k:k + n, k:k + n] = self.segment_sees(n)
        sees[k + n:, :] = True                       # write tokens: everything
        for layer in range(self.cfg.layers):
            _, q, _, kk, v = self.qkv(f"blocks.{layer}", h, pos_all)
            h = self.finish(f"blocks.{layer}", h, self.attention(q, kk, v, sees))
        y = h[k:k + n]
        if update:  # MemCtrl: the old memory attends to itself and the processed segment
            both = torch.cat((self.memory, y))
            _, q, _, kk, v = self.qkv("memory.updater", both, torch.cat((torch.full((k,), first), pos)))
            attn = self.attention(q[:k], kk, v, torch.ones(k, k + n, dtype=torch.bool))
            self.memory = self.finish("memory.updater", self.memory, attn)
        else:
            self.memory = h[k + n:]
        return y

    def blocks_over(self, x, pos, first, vectors):
        """The blocks over [vectors ; segment]: every layer's segment tokens also attend to the memory vectors
        (keys/values from that layer's projection, at the segment's first position)."""
        k, n = vectors.shape[0], x.shape[0]
        sees = torch.cat((torch.ones(n, k, dtype=torch.bool), self.segment_sees(n)), dim=1)
        h = x
        for layer in range(self.cfg.layers):
            prefix = f"blocks.{layer}"
            _, q, _, kk, v = self.qkv(prefix, h, pos)
            _, _, _, mk, mv = self.qkv(prefix, vectors, torch.full((k,), first))
            h = self.finish(prefix, h, self.attention(q, torch.cat((mk, kk)), torch.cat((mv, v)), sees))
        return h

    def _slots(self, x, pos, first, last):
        p, k, n, d = self.p, self.k, x.shape[0], self.cfg.dim
        h = self.blocks_over(x, pos, first, self.memory)
        # Memformer's slot-wise write: each slot attends to itself and the segment, never to other slots.
        m = _ln(p, "memory.norm_memory", self.memory)
        q = self.heads(_linear(p, "memory.query", m))
        ks, vs = (self.heads(z) for z in _linear(p, "memory.key_value", m).split(d, dim=-1))
        ki, vi = (self.heads(z) for z in _linear(p, "memory.key_value", _ln(p, "memory.norm_input", h)).split(d, -1))
        update = torch.empty(k, self.h, self.dh, dtype=torch.float64)
        for slot in range(k):
            keys = torch.cat((ks[slot:slot + 1], ki))  # (1 + n, H, Dh)
            values = torch.cat((vs[slot:slot + 1], vi))
            update[slot] = self.attention(q[slot:slot + 1], keys, values, torch.ones(1, 1 + n, dtype=torch.bool))[0]
        update = _linear(p, "memory.out", update.reshape(k, d))
        z = torch.sigmoid(_linear(p, "memory.gate", torch.cat((self.memory, update), dim=-1)))
        new = z * self.memory + (1 - z) * update + p["memory.forget_bias"]
        self.memory = new * math.sqrt(d) / new.norm(dim=-1, keepdim=True)
        return h

    def address(self, head: str, controller, prev):
        """NTM addressing (Graves et al.) of the heads of ``memory.<head>``, one row at a time.

        controller: (D,), prev: (H, R) -> weights (H, R), extra outputs (H, E)."""
        width, rows = self.cfg.ntm_width, self.memory.shape[0]
        per_head = _linear(self.p, f"memory.{head}.proj", controller).view(prev.shape[0], -1)
        weights, extras = [], []
        for h, out in enumerate(per_head):
            key, beta, gate = out[:width], F.softplus(out[width]), torch.sigmoid(out[width + 1])
            shift = torch.softmax(out[width + 2:width + 5], dim=0)  # offsets -1, 0, +1
            gamma = 1 + F.softplus(out[width + 5])
            cosine = torch.stack([key @ row / (key.norm() * row.norm()) for row in self.memory])
            w = gate * torch.softmax(beta * cosine, dim=0) + (1 - gate) * prev[h]
            # Offset +1 moves row i's weight to row i + 1, circularly.
            w = torch.stack([sum(shift[o + 1] * w[(i - o) % rows] for o in (-1, 0, 1)) for i in range(rows)])
            weights.append(w ** gamma / (w ** gamma).sum())
            extras.append(out[width + 6:])
        return torch.stack(weights), torch.stack(extras)

    def _ntm(self, x, pos, first, last):
        p, c = self.p, self.cfg.ntm_width
        read_w, _ = self.address("read_head", _ln(p, "memory.norm_read", x.mean(0)), self.read_w)
        tokens = _linear(p, "memory.out", read_w @ self.memory) + p["memory.head_embed"]  # (Hr, D)
        h = self.blocks_over(x, pos, first, tokens)
        w, extra = self.address("write_head", _ln(p, "memory.norm_write", h.mean(0)), self.write_w)
        erase = torch.sigmoid(extra[0, :c])
        add = erase * torch.tanh(extra[0, c:])
        self.memory = self.memory * (1 - torch.outer(w[0], erase)) + torch.outer(w[0], add)
        self.read_w, self.write_w = read_w, w
        return h

    def _knn(self, x, pos, first, last):
        cfg, n = self.cfg, x.shape[0]
        knn_layer = cfg.knn_layer % cfg.layers
        h = x
        written = None
        for layer in range(cfg.layers):
            prefix = f"blocks.{layer}"
            q, q_rot, k, k_rot, v = self.qkv(prefix, h, pos)
            attn = self.attention(q_rot, k_rot, v, self.segment_sees(n))  # local: within the segment only
            if layer == knn_layer:
                if self.ring:  # top-k over the stored (unrotated) keys, by content
                    keys = torch.stack([e[0] for e in self.ring])      # (E, H, Dh)
                    values = torch.stack([e[1] for e in self.ring])
                    scores = torch.einsum("qhd,ehd->hqe", q, keys) / math.sqrt(self.dh)
                    top = min(cfg.knn_topk, len(self.ring))
                    best, index = scores.topk(top, dim=-1)              # (H, n, top)
                    weights = torch.softmax(best, dim=-1)
                    chosen = values.permute(1, 0, 2)[torch.arange(self.h).view(-1, 1, 1), index]  # (H, n, top, Dh)
                    retrieved = torch.einsum("hqe,hqed->qhd", weights, chosen)
                    g = torch.sigmoid(self.p["memory.gate_bias"]).view(1, -1, 1)
                    attn = g * retrieved + (1 - g) * attn
                written = (k, v)
            h = self.finish(prefix, h, attn)
        for i in range(n):  # FIFO: the newest capacity entries
            self.ring.append((written[0][i], written[1][i], int(pos[i])))
        del self.ring[:-cfg.knn_capacity]
        return h


def _inputs(make_core, stream, variant: str, causal: bool):
    core = make_core(variant, causal=causal)
    t, d = core.cfg.segment, core.cfg.dim
    x = stream(B, SEGMENTS, t, d, seed=11)
    valid = torch.full((B, SEGMENTS), t)
    valid[0, 2] = 0          # an empty segment mid-stream (the memory must stay as it was)
    valid[1, 3] = 2          # a partial one
    valid[2, SEGMENTS - 1] = 1
    resets = torch.zeros(SEGMENTS, B, dtype=torch.bool)
    resets[4, 1] = True      # stream 1 starts anew at segment 4
    mask = (torch.arange(t) < valid.unsqueeze(-1)).view(B, SEGMENTS * t)
    return core, x, mask, valid, resets


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("variant", REFERENCE_VARIANTS)
@torch.no_grad()
def test_step_equals_the_reference_loop(variant, causal, make_core, stream):
    core, x, mask, valid, resets = _inputs(make_core, stream, variant, causal)
    t = core.cfg.segment
    refs = [Reference(core) for _ in range(B)]
    state = core.init_state(B)
    worst = 0.0
    for s in range(SEGMENTS):
        part = slice(s * t, (s + 1) * t)
        y, state = core.step(x[:, part], state, resets[s], mask[:, part])
        for b, ref in enumerate(refs):
            if resets[s, b]:
                ref.fresh()
            n = int(valid[b, s])
            expected = ref.step(x[b, part][:n])
            if n:
                worst = max(worst, (y[b, :n].double() - expected).abs().max().item())
        # The state is the reference's memory, not just something that yields the same outputs.
        for b, ref in enumerate(refs):
            assert int(state.step[b]) == ref.segment
            if variant == "knn":
                filled = state.valid[b].nonzero().flatten()
                order = filled[state.pos[b, filled].argsort()]  # ring slots, oldest entry first
                assert state.pos[b, order].tolist() == [e[2] for e in ref.ring]
                if ref.ring:
                    keys = torch.stack([e[0] for e in ref.ring])  # (E, H, Dh)
                    torch.testing.assert_close(state.keys[b][:, order].permute(1, 0, 2).double(), keys,
                                               atol=ATOL, rtol=0)
            elif int(state.step[b]) > 0:  # at step 0 the memory is the learned initial, kept out of the state
                torch.testing.assert_close(state.memory[b].double(), ref.memory, atol=ATOL, rtol=0)
                if variant == "ntm":
                    torch.testing.assert_close(state.read_weights[b].double(), ref.read_w, atol=ATOL, rtol=0)
                    torch.testing.assert_close(state.write_weights[b].double(), ref.write_w[0], atol=ATOL, rtol=0)
    assert worst <= ATOL, f"{variant}: max |step - reference| on valid tokens {worst:.3g} > {ATOL}"


@torch.no_grad()
def test_the_reference_notices_a_wrong_step(make_core, stream):
    """The comparison can fail: a core whose memory write is off by a little differs from the reference."""
    core, x, mask, valid, resets = _inputs(make_core, stream, "slots", causal=False)
    ref = Reference(core)
    core.memory.forget_bias.add_(1e-3)  # the core changes, the reference keeps the old weights
    t = core.cfg.segment
    state = core.init_state(B)
    diffs = []
    for s in range(3):
        part = slice(s * t, (s + 1) * t)
        y, state = core.step(x[:, part], state, None, mask[:, part])
        n = int(valid[2, s])
        if n:
            diffs.append((y[2, :n].double() - ref.step(x[2, part][:n])).abs().max().item())
        else:
            ref.step(x[2, part][:0])
    assert diffs[0] <= ATOL  # the first segment reads only the learned initial slots
    assert max(diffs[1:]) > 10 * ATOL
