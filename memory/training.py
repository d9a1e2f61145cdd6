"""Training over streams: truncated backprop through time and memory-replay backprop (Memformer's MRBP).

Both drive any ``step(x, state) -> (y, state)`` over a list of segments (``x`` is whatever ``step`` takes
first, e.g. an ``(x, mask)`` pair for a step that also needs the padding mask). ``bptt`` keeps the whole
graph (activation memory grows with the number of segments); ``mrbp`` keeps only the states at
segment boundaries and replays one segment at a time backwards, giving the same gradients with the
activation memory of one segment. ``truncated_bptt`` cuts the graph every ``k`` segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

StepFn = Callable[[Any, NamedTuple], tuple[Tensor, NamedTuple]]
LossFn = Callable[[int, Tensor], Tensor]  # (segment index, step output) -> scalar loss


def detach_state(state: NamedTuple) -> NamedTuple:
    """The same state cut from the autograd graph (the truncation point of TBPTT)."""
    return type(state)(*(t.detach() for t in state))


def _differentiable(t: Tensor) -> bool:
    return t.is_floating_point()


def bptt(step: StepFn, segments: Sequence[Tensor], state: NamedTuple, loss_fn: LossFn,
         backward: bool = True) -> tuple[Tensor, NamedTuple]:
    """Plain backprop through all ``segments``. Returns (summed loss, final state)."""
    total = torch.zeros(())
    for i, x in enumerate(segments):
        y, state = step(x, state)
        total = total + loss_fn(i, y)
    if backward:
        total.backward()
    return total.detach(), state


def truncated_bptt(step: StepFn, segments: Sequence[Tensor], state: NamedTuple, loss_fn: LossFn, k: int,
                   on_window: Callable[[Tensor], None]) -> NamedTuple:
    """Backprop through windows of ``k`` segments, the state carried (detached) between windows.

    ``on_window(loss)`` is called once per window after ``loss.backward()``: the place for the optimiser
    step. Returns the final (detached) state.
    """
    if k < 1:
        raise ValueError(f"truncated_bptt: k={k} must be >= 1")
    for start in range(0, len(segments), k):
        loss, state = bptt(step, segments[start:start + k], state, lambda i, y, s=start: loss_fn(s + i, y))
        on_window(loss)
        state = detach_state(state)
    return state


def mrbp(step: StepFn, segments: Sequence[Any], state: NamedTuple, loss_fn: LossFn) -> tuple[Tensor, NamedTuple]:
    """Memory-replay backprop: gradients equal to :func:`bptt`'s, one segment's activations at a time.

    Forward without a graph, keeping the state at every segment boundary; then, from the last segment
    to the first, replay the segment with a graph and backpropagate its loss together with the
    gradient that flowed into its output state from the later segments. ``step`` must be
    deterministic (eval-mode dropout, or seeded) for the replay to match.
    """
    boundaries = [state]
    total = torch.zeros(())
    with torch.no_grad():
        for x in segments:
            _, s = step(x, boundaries[-1])
            boundaries.append(s)
    grads: list[Tensor | None] | None = None
    for i in reversed(range(len(segments))):
        inputs = type(state)(*(t.detach().requires_grad_(_differentiable(t)) for t in boundaries[i]))
        y, out = step(segments[i], inputs)
        loss = loss_fn(i, y)
        total = total + loss.detach()
        roots, root_grads = [loss], [torch.ones_like(loss)]
        if grads is not None:
            for t, g in zip(out, grads, strict=True):
                if g is not None and t.requires_grad:
                    roots.append(t)
                    root_grads.append(g)
        torch.autograd.backward(roots, root_grads)
        grads = [t.grad if t.requires_grad else None for t in inputs]
    return total, boundaries[-1]
