"""Model directories: the artifact every stage hands to the next.

A trained model is a directory holding ``model.safetensors`` (or ``model.onnx``),
``config.json`` (what is needed to rebuild the network), ``metrics.json`` and
``model_card.md``. It is written atomically (:mod:`core.atomic`) and read without unpickling.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.atomic import atomic_dir
from core.errors import ModelLoadError
from core.serialization import tensors_for_safetensors

REQUIRED = ("config.json",)


def save_model_dir(
    out: str | os.PathLike[str],
    model: torch.nn.Module,
    config: dict[str, Any],
    metrics: dict[str, Any],
    card: str,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``out`` atomically with weights, config, metrics and model card.

    ``extra_tensors`` maps further file names (``*.safetensors``) to tensors saved beside the
    weights, e.g. an anomaly memory bank."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file(tensors_for_safetensors(model.state_dict()), str(tmp / "model.safetensors"))
        for name, tensors in (extra_tensors or {}).items():
            save_file(tensors_for_safetensors(tensors), str(tmp / name))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "model_card.md").write_text(card)
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a model directory (PyTorch or ONNX), with errors naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(
            "model directory does not exist",
            where=str(path),
            fix="pass the directory a training run wrote",
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            "model directory lacks config.json",
            where=str(path),
            fix="re-run training or export into this directory",
        )
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"config.json is not valid JSON ({exc})",
            where=str(cfg_path),
            fix="restore the file from the training run",
        ) from exc


def read_model_dir(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a model directory, with errors that name the missing piece."""
    config = read_config(path)
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            "model directory lacks model.safetensors",
            where=str(path),
            fix="re-run training or export into this directory",
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"weights cannot be read ({exc})",
            where=str(weights),
            fix="the file is corrupt; re-run training or restore it",
        ) from exc
    return config, state
