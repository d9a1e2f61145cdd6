"""Configuration: bad values fail at construction naming the value; registry presets; checkpoints."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from memstream.memory import MEMORY_TYPES, CoreConfig, MemoryCore
from memstream.models import build, list_models, load_weights, read_config, save_checkpoint
from safetensors.torch import load_file

BAD_CONFIGS = [
    # (overrides, text the message must contain)
    ({"dim": 30, "heads": 4}, "dim=30"),
    ({"dim": 12, "heads": 4}, "dim/heads=3"),             # odd head width: no rotary
    ({"memory": "lstm"}, "memory='lstm'"),
    ({"memory": "queue", "memory_length": 0}, "memory_length=0"),
    ({"memory": "queue", "memory_length": (0, 0)}, "memory_length=(0, 0)"),
    ({"memory": "tokens", "num_tokens": 0}, "num_tokens=0"),
    ({"memory": "slots", "num_tokens": 0}, "num_tokens=0"),
    ({"memory": "knn", "knn_capacity": 0}, "knn_capacity=0"),
    ({"memory": "knn", "knn_capacity": 64, "knn_topk": 65}, "knn_topk=65"),
    ({"memory": "knn", "knn_topk": 0}, "knn_topk=0"),
    ({"memory": "knn", "knn_capacity": 8, "segment": 16}, "knn_capacity=8"),
    ({"memory": "knn", "knn_layer": 2}, "knn_layer=2"),
    ({"memory": "ntm", "ntm_rows": 0}, "ntm_rows=0"),
    ({"memory": "ntm", "ntm_width": -3}, "ntm_width=-3"),
    ({"memory": "ntm", "ntm_read_heads": 0}, "ntm_read_heads=0"),
    ({"memory": "ntm", "ntm_rows": 2.5}, "ntm_rows=2.5"),
    ({"memory_length": (8, 3, 2)}, "memory_length=(8, 3, 2)"),
    ({"memory_length": (8,)}, "memory_length=(8,)"),
    ({"memory_length": (8, -1)}, "memory_length=(8, -1)"),
    ({"layers": 0}, "layers=0"),
    ({"segment": 0}, "segment=0"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"rope_base": 1.0}, "rope_base=1.0"),
]

BASE = {"dim": 16, "heads": 2, "layers": 2, "segment": 4, "memory_length": 6, "num_tokens": 3,
        "knn_capacity": 16, "knn_topk": 4}


@pytest.mark.parametrize("overrides,named", BAD_CONFIGS, ids=[b for _, b in BAD_CONFIGS])
def test_bad_config_fails_at_construction(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        CoreConfig(**{**BASE, **overrides})


@pytest.mark.parametrize("overrides,named", BAD_CONFIGS[:4], ids=[b for _, b in BAD_CONFIGS[:4]])
def test_bad_preset_override_fails_at_build(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        build("core-tiny", **overrides)


def test_good_configs_build(variant, make_core):
    core = make_core(variant)
    assert isinstance(core, MemoryCore)
    assert core.cfg.memory in MEMORY_TYPES


def test_per_layer_memory_length_forms():
    assert CoreConfig(**{**BASE, "memory_length": 5}).layer_memory_lengths == (5, 5)
    cfg = CoreConfig(**{**BASE, "memory_length": [8, 0]})  # a list (from JSON) becomes a tuple
    assert cfg.memory_length == (8, 0) and cfg.layer_memory_lengths == (8, 0)
    hash(cfg)  # frozen and hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 32


def test_config_dict_round_trip():
    cfg = CoreConfig(**{**BASE, "memory": "queue", "memory_length": (8, 3), "write_gate": True})
    d = json.loads(json.dumps(cfg.to_dict()))  # plain JSON
    assert d["memory_length"] == [8, 3]
    assert CoreConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknown_field():
    d = CoreConfig(**BASE).to_dict()
    d["memroy_length"] = 3
    with pytest.raises(ValueError, match="memroy_length"):
        CoreConfig.from_dict(d)


def test_from_dict_validates_values():
    d = CoreConfig(**BASE).to_dict()
    d["heads"] = 3
    with pytest.raises(ValueError, match="heads=3"):
        CoreConfig.from_dict(d)


def test_registry_presets():
    assert {"core-tiny", "core-small"} <= set(list_models())
    tiny = build("core-tiny")
    assert isinstance(tiny, MemoryCore) and tiny.cfg.dim == 64
    slots = build("core-tiny", memory="slots", num_tokens=4)
    assert slots.cfg.memory == "slots" and slots.cfg.num_tokens == 4
    assert build("core-small").cfg.dim == 256
    with pytest.raises(KeyError, match="core-huge"):
        build("core-huge")


@pytest.mark.parametrize("memory", ["queue", "tokens", "knn"])
def test_checkpoint_round_trip(memory, tmp_path):
    torch.manual_seed(1)
    model = build("core-tiny", memory=memory, memory_length=(16, 4), update_layer=True)
    config = {"model": "core-tiny", "config": model.cfg.to_dict(), "note": "test"}
    save_checkpoint(tmp_path / "ckpt", model, config)

    # config.json is plain JSON (no pickled objects) and holds what was given
    raw = (tmp_path / "ckpt" / "config.json").read_text()
    assert json.loads(raw) == config == read_config(tmp_path / "ckpt")
    assert set(load_file(str(tmp_path / "ckpt" / "model.safetensors"))) == set(model.state_dict())
    assert not list((tmp_path / "ckpt").glob("*.tmp"))

    torch.manual_seed(2)  # different initial weights
    fresh = MemoryCore(CoreConfig.from_dict(read_config(tmp_path / "ckpt")["config"]))
    x = torch.randn(2, 3 * model.cfg.segment, model.cfg.dim)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.equal(fresh.forward_sequence(x), model.forward_sequence(x))
        load_weights(tmp_path / "ckpt", fresh)
        assert torch.equal(fresh.forward_sequence(x), model.forward_sequence(x))
        s1, s2 = model.init_state(2), fresh.init_state(2)
        y1, s1 = model.step(x[:, :model.cfg.segment], s1)
        y2, s2 = fresh.step(x[:, :model.cfg.segment], s2)
        assert torch.equal(y1, y2)


def test_checkpoint_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_weights(tmp_path, build("core-tiny"))


def test_load_weights_rejects_mismatched_model(tmp_path):
    save_checkpoint(tmp_path, build("core-tiny"), {"model": "core-tiny"})
    with pytest.raises(RuntimeError):
        load_weights(tmp_path, build("core-tiny", dim=32))
