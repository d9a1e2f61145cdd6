"""The trainer's resumable state on disk, written without pickles and read back without unpickling.

A training folder holds the model checkpoint (``model.safetensors`` + ``config.json``, see
:mod:`memstream.models.checkpoint`) and ``trainer_state.safetensors`` + ``trainer_state.json``:

- ``trainer_state.safetensors``: AdamW's per-parameter tensors as ``optim.<index>.<name>`` (``exp_avg``,
  ``exp_avg_sq``, ``step``) and every rank's carried truncated-BPTT state as ``state.<rank>.<leaf>``;
- ``trainer_state.json``: the step, every rank's data position, counters, the parameter names in optimiser
  order, and the SHA-256 of ``model.safetensors`` and ``trainer_state.safetensors``.

Every file is written to a temporary name and moved into place with ``os.replace``; ``trainer_state.json`` goes
last and its hashes tell a consistent folder from one a crash left half-written.

Also here: :class:`DataCursor` (a rank's place in its data, which the state records) and the collectives that
gather and average across ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from memstream.models.checkpoint import CONFIG, WEIGHTS, save_checkpoint
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
# Collective transfers carry dtypes as indices into this list (bool travels as uint8).
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_leaves(state: Any) -> list[Tensor]:
    """The tensors of a carried state (a NamedTuple, tuple, dict or ``None``), detached, on the CPU."""
    return [leaf.detach().cpu() for leaf in tree_flatten(state)[0] if isinstance(leaf, Tensor)]


def restore_state(template: Any, leaves: list[Tensor]) -> Any:
    """``template`` (a fresh ``init_state``) with its tensors replaced by saved ``leaves``, on their devices."""
    flat, spec = tree_flatten(template)
    tensors = iter(leaves)
    # Copies, not views into the loaded file: unaligned buffers take other kernel paths and round differently.
    out = [next(tensors).to(device=x.device, dtype=x.dtype, copy=True) if isinstance(x, Tensor) else x for x in flat]
    if next(tensors, None) is not None:
        raise ValueError("trainer state: the saved carried state has more tensors than objective.init_state gives")
    return tree_unflatten(out, spec)


def gather_leaves(leaves: list[Tensor], rank: int, world: int, device: torch.device) -> list[list[Tensor]]:
    """Rank 0 receives every rank's state tensors (point to point, a header gives dtypes and shapes).

    Returns the list per rank on rank 0, ``[]`` elsewhere. Every rank must call it.
    """
    import torch.distributed as dist

    if rank != 0:
        header = [len(leaves)]
        for t in leaves:
            header += [_DTYPES.index(t.dtype), t.dim(), *t.shape]
        dist.send(torch.tensor([len(header)], dtype=torch.int64, device=device), 0)
        dist.send(torch.tensor(header, dtype=torch.int64, device=device), 0)
        for t in leaves:
            dist.send((t.to(torch.uint8) if t.dtype == torch.bool else t).contiguous().to(device), 0)
        return []
    out = [leaves]
    for src in range(1, world):
        size = torch.zeros(1, dtype=torch.int64, device=device)
        dist.recv(size, src)
        header = torch.zeros(int(size), dtype=torch.int64, device=device)
        dist.recv(header, src)
        fields, received, i = header.tolist(), [], 1
        for _ in range(fields[0]):
            dtype, ndim = _DTYPES[fields[i]], fields[i + 1]
            shape, i = fields[i + 2:i + 2 + ndim], i + 2 + ndim
            t = torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=device)
            dist.recv(t, src)
            received.append(t.to(dtype).cpu())
        out.append(received)
    return out


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """AdamW's state flattened: tensors keyed ``optim.<index>.<name>`` and the non-tensor values per index."""
    tensors, scalars = {}, {}
    for index, values in opt.state_dict()["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, scalars


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, dict]) -> None:
    """Put the flattened state back into ``opt`` (its param groups, hence learning rates, stay as built)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.clone()  # aligned memory, as in an unbroken run
    for index, values in scalars.items():
        state.setdefault(int(index), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _replace_from(tmp: Path, out: Path, names: list[str]) -> None:
    for name in names:
        os.replace(tmp / name, out / name)


def write_checkpoint(out_dir: Path, model: nn.Module, config: dict, opt: torch.optim.Optimizer,
                     param_names: list[str], meta: dict, states: list[list[Tensor]]) -> None:
    """Write the model checkpoint and the trainer state into ``out_dir``, every file atomically.

    ``meta``: JSON-serialisable step, positions and counters; ``states``: each rank's carried state tensors.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ckpt-") as tmp_name:
        tmp = Path(tmp_name)
        save_checkpoint(tmp, model, config)
        tensors, scalars = _optimizer_tensors(opt)
        for rank, leaves in enumerate(states):
            tensors.update({f"state.{rank}.{i}": t.contiguous() for i, t in enumerate(leaves)})
        save_file(tensors, str(tmp / STATE_TENSORS))
        record = {**meta, "param_names": param_names, "optimizer_scalars": scalars,
                  "state_leaves": [len(leaves) for leaves in states],
                  "sha256": {WEIGHTS: _sha256(tmp / WEIGHTS), STATE_TENSORS: _sha256(tmp / STATE_TENSORS)}}
        (tmp / STATE_JSON).write_text(json.dumps(record, indent=1) + "\n")
        _replace_from(tmp, out_dir, [WEIGHTS, CONFIG, STATE_TENSORS, STATE_JSON])  # the JSON record last


def read_trainer_state(out_dir: Path) -> tuple[dict, dict[str, Tensor]] | None:
    """(``trainer_state.json``, its tensors) of a consistent training folder, or ``None`` when there is none.

    Raises ``ValueError`` when the files do not match their recorded hashes (a save cut short).
    """
    path = out_dir / STATE_JSON
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    for name, digest in record["sha256"].items():
        if not (out_dir / name).is_file() or _sha256(out_dir / name) != digest:
            raise ValueError(f"{out_dir}: {name} does not match {STATE_JSON} (a checkpoint save was cut short?); "
                             f"start again with resume=False or restore the folder")
    return record, load_file(str(out_dir / STATE_TENSORS))


def rank_leaves(tensors: dict[str, Tensor], record: dict, rank: int) -> list[Tensor]:
    """The carried-state tensors saved for ``rank``."""
    count = record["state_leaves"][rank] if rank < len(record["state_leaves"]) else 0
    return [tensors[f"state.{rank}.{i}"] for i in range(count)]


def flat_collective(tensors: list[Tensor], op: Callable[[Tensor], None]) -> None:
    """Run ``op`` on one flat buffer per dtype and copy the result back into ``tensors``."""
    for dtype in dict.fromkeys(t.dtype for t in tensors):  # the same order on every rank (a set's is not)
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        flat = flat.to(torch.uint8) if dtype == torch.bool else flat  # gloo has no bool collectives
        op(flat)
        for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(part.view_as(t).to(dtype))


class DataCursor:
    """This rank's place in its data: epoch, batch index, window and the state carried into that window."""

    def __init__(self, objective: Any, model: nn.Module, rank: int, world: int, seed: int,
                 position: tuple[int, int, int] = (0, 0, 0), leaves: list[Tensor] | None = None):
        self.objective, self.model, self.rank, self.world, self.seed = objective, model, rank, world, seed
        self.epoch, self.index, self.window = position
        self.leaves = leaves or []  # saved state to restore at the resumed window
        self.batch: Any = None
        self.count = 0
        self.state: Any = None
        self.it: Iterator | None = None

    def position(self) -> list[int]:
        """(epoch, batch index, window) of the next window to train."""
        if self.batch is not None and self.window >= self.count:
            return [self.epoch, self.index + 1, 0]
        return [self.epoch, self.index, self.window]

    def drop_batch(self) -> None:
        self.window = self.count

    def advance(self) -> bool:
        """Move to the next window to train; ``False`` when this rank's shard of an epoch is empty."""
        while self.batch is None or self.window >= self.count:
            if self.batch is not None:
                self.batch, self.state, self.index, self.window = None, None, self.index + 1, 0
            if self.it is None:
                self.it = iter(self.objective.batches(self.rank, self.world, self.seed, self.epoch))
                for _ in range(self.index):  # resuming: replay the epoch up to the saved batch
                    if next(self.it, None) is None:
                        break
            batch = next(self.it, None)
            if batch is None:
                if self.index == 0:
                    self.it = None
                    return False
                self.epoch, self.index, self.window, self.it, self.leaves = self.epoch + 1, 0, 0, None, []
                continue
            self.batch, self.count = batch, int(self.objective.windows(batch))
            state = self.objective.init_state(self.model, batch)
            self.state = restore_state(state, self.leaves) if self.leaves else state
            self.leaves = []
        return True
