"""Pickle-free state trees, atomic directories and model-directory errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from core.artifacts import read_model_dir, save_model_dir
from core.atomic import atomic_dir
from core.errors import ModelLoadError
from core.serialization import load_tree, save_tree, tensors_for_safetensors


def test_state_tree_round_trips_rng_optimizer_and_int_keyed_dicts(tmp_path):
    opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt.zero_grad()
    sum(p.sum() for group in opt.param_groups for p in group["params"]).backward()
    opt.step()
    tree = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "opt": opt.state_dict(),
        "by_bucket": {0: torch.ones(2), 3: None},
        "nan": float("nan"),
    }
    files = save_tree(tree, tmp_path / "state")
    assert sorted(f.name for f in files) == ["state.json", "state.safetensors"]
    back = load_tree(tmp_path / "state")
    assert back["python"] == random.getstate()
    assert back["numpy"][0] == "MT19937" and np.array_equal(
        back["numpy"][1], np.random.get_state()[1]
    )
    assert back["numpy"][1].dtype == np.uint32
    assert torch.equal(back["torch"], torch.get_rng_state())
    assert set(back["by_bucket"]) == {0, 3} and back["by_bucket"][3] is None
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(back["opt"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert back["nan"] != back["nan"]


def test_arbitrary_objects_are_refused_rather_than_pickled(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_tree({"x": object()}, tmp_path / "s")


def test_tied_weights_are_saved(tmp_path):
    emb = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    state = {"emb.weight": emb.weight, "head.weight": head.weight}
    out = tensors_for_safetensors(state)
    assert out["emb.weight"].data_ptr() != out["head.weight"].data_ptr()
    assert torch.equal(out["emb.weight"], out["head.weight"])


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2")
    assert (target / "a.txt").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_model_dir_round_trip_and_errors_name_the_missing_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_model_dir(tmp_path / "m", model, {"arch": "linear"}, {"acc": 1.0}, "# card\n")
    cfg, state = read_model_dir(tmp_path / "m")
    assert cfg == {"arch": "linear"} and torch.equal(state["weight"], model.weight)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is corrupt \(checksum"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "checksums.json").unlink()  # a directory from before checksums
    with pytest.raises(ModelLoadError, match="weights cannot be read"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"lacks config\.json"):
        read_model_dir(tmp_path / "m")
