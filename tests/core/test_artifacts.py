"""Model directories carry checksums: what a loader reads is verified first."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from core.artifacts import (
    MANIFEST,
    read_config,
    read_model_dir,
    save_model_dir,
    update_model_config,
    verify_model_files,
)
from core.errors import ModelLoadError


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "m"
    save_model_dir(out, nn.Linear(4, 3), {"arch": "x", "lr": 0.1}, {"acc": 0.5}, "# card\n")
    return out


def test_every_file_is_listed_in_the_checksums(saved):
    listed = json.loads((saved / MANIFEST).read_text())["sha256"]
    assert sorted(listed) == ["config.json", "metrics.json", "model.safetensors", "model_card.md"]
    verify_model_files(saved, listed)  # passes on the untouched directory


def test_a_changed_config_value_is_a_corrupt_file(saved):
    text = (saved / "config.json").read_text().replace("0.1", "0.2")
    (saved / "config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=r"config\.json is corrupt"):
        read_config(saved)


def test_a_weights_file_not_covered_by_the_checksums_is_refused(saved):
    listed = json.loads((saved / MANIFEST).read_text())
    del listed["sha256"]["model.safetensors"]
    (saved / MANIFEST).write_text(json.dumps(listed))
    with pytest.raises(ModelLoadError, match=r"not covered by checksums\.json"):
        read_model_dir(saved)


def test_a_directory_from_before_checksums_loads_with_a_warning(saved, caplog):
    (saved / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        config, state = read_model_dir(saved)
    assert config["arch"] == "x" and set(state) == {"weight", "bias"}
    assert "cannot be verified" in caplog.text


def test_updating_the_config_keeps_the_checksums_true_and_the_weights(saved):
    before = (saved / "model.safetensors").read_bytes()
    update_model_config(saved, {"threshold": 0.7})
    assert read_config(saved)["threshold"] == 0.7 and read_config(saved)["lr"] == 0.1
    _, state = read_model_dir(saved)  # verified
    assert (saved / "model.safetensors").read_bytes() == before and "weight" in state


def test_updating_a_corrupt_directory_does_not_bless_the_corruption(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-2] ^= 0xFF
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is corrupt"):
        update_model_config(saved, {"threshold": 0.7})
    assert "threshold" not in json.loads((saved / "config.json").read_text())
