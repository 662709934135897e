"""Compression on model directories: what ``dv prune|quantize|export|bench`` and the flows call.

Each function reads a model directory (``core.models.load_model_dir``), does one thing, and
writes a new model directory atomically: weights (``model.safetensors`` or ``model.onnx``),
``config.json`` (with the lineage of what was done), ``metrics.json`` and ``model_card.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import read_config, save_model_dir, write_model_dir
from core.compress.export import Parity, export_onnx
from core.compress.prune import PruneConfig, PruneReport, prune
from core.compress.quantize import QuantizedModel, quantize
from core.compress.report import (
    VariantReport,
    count_macs,
    count_params,
    disk_size,
    load_ort_session,
    ort_latency,
    torch_latency,
)
from core.errors import ConfigError, DataError
from core.models import example_input, load_model_dir


def _card(config: dict[str, Any], step: str, details: dict[str, Any]) -> str:
    lines = [f"# {config.get('arch', 'model')} — {step}", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in details.items()]
    return "\n".join(lines) + "\n"


def _history(config: dict[str, Any], step: str, details: dict[str, Any]) -> dict[str, Any]:
    return {**config, "compression": [*config.get("compression", []), {"step": step, **details}]}


def prune_model_dir(
    src: str | os.PathLike[str], out: str | os.PathLike[str], config: PruneConfig
) -> PruneReport:
    model, cfg = load_model_dir(src)
    report = prune(model, example_input(cfg), config)
    details = {
        "ratio": config.ratio,
        "importance": config.importance,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "params_before": report.params_before,
        "params_after": report.params_after,
    }
    save_model_dir(
        out,
        model,
        _history(cfg, "prune", details),
        {"prune": details},
        _card(cfg, "pruned", details),
    )
    return report


def export_model_dir(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> Parity:
    model, cfg = load_model_dir(src)
    out = Path(out)
    with write_model_dir(out) as tmp:
        parity = export_onnx(model, example_input(cfg, 2), tmp / "model.onnx")
        details = {
            "format": "onnx",
            "parity_max_abs": parity.max_abs,
            "parity_max_rel": parity.max_rel,
        }
        (tmp / "config.json").write_text(json.dumps(_history(cfg, "export", details), indent=2))
        (tmp / "metrics.json").write_text(json.dumps({"export": details}, indent=2))
        (tmp / "model_card.md").write_text(_card(cfg, "ONNX export", details))
    return parity


def calibration_data(
    config: dict[str, Any], path: str | os.PathLike[str] | None, limit: int = 512
) -> list[np.ndarray]:
    """Calibration batches from a ``.npy`` file (N, *input_shape), or the reference task's data."""
    shape = tuple(config.get("input_shape", ()))
    if path is not None:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"calibration data cannot be read ({exc})",
                where=str(path),
                fix="save a float array with numpy.save",
            ) from exc
        if arr.ndim < 2 or tuple(arr.shape[1:]) != shape:
            raise DataError(
                f"calibration data has shape {tuple(arr.shape)} but the model takes (N, {', '.join(map(str, shape))})",
                where=str(path),
                fix="save samples shaped like the model's input",
            )
    elif config.get("task") == "digits":
        from core.reference.digits import load_digits_splits

        arr = load_digits_splits(shape[-1], seed=0)["train"][:][0].numpy()
    else:
        raise DataError(
            "no calibration data given",
            fix="pass --calib-data FILE.npy with (N, *input_shape) samples",
        )
    arr = arr[:limit].astype(np.float32)
    return [arr[i : i + 32] for i in range(0, len(arr), 32)]


def quantize_model_dir(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: Any,
    calibration: list[np.ndarray] | None,
) -> QuantizedModel:
    model, cfg = load_model_dir(src)
    out = Path(out)
    with write_model_dir(out) as tmp:
        q = quantize(
            model,
            config,
            out=tmp / "model.onnx",
            calibration=calibration,
            example=example_input(cfg, 2),
        )
        details = {
            "scheme": type(config).__name__,
            **{k: v for k, v in asdict(config).items() if v not in ((), None)},
            "reduce_range": q.reduce_range,
        }
        (tmp / "config.json").write_text(
            json.dumps(_history(cfg, "quantize", details), indent=2, default=str)
        )
        (tmp / "metrics.json").write_text(json.dumps({"quantize": details}, indent=2, default=str))
        (tmp / "model_card.md").write_text(_card(cfg, "INT8", details))
    q.path = out / "model.onnx"
    return q


def bench_model_dir(
    path: str | os.PathLike[str], batches: tuple[int, ...] = (1, 8), threads: int = 2
) -> VariantReport:
    """Parameters, size, MACs and latency of a model directory (PyTorch or ONNX)."""
    path = Path(path)
    bad = [b for b in batches if b < 1]
    if bad or not batches:
        raise ConfigError(
            f"batch sizes must be >= 1, got {list(batches)}", fix="pass e.g. --batch 1 --batch 8"
        )
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}", fix="pass e.g. --threads 2")
    cfg = read_config(path)
    rep = VariantReport(name=path.name)
    if (path / "model.onnx").is_file():
        sess = load_ort_session(path / "model.onnx", threads)
        rep.size_bytes = disk_size(path / "model.onnx")
        for b in batches:
            rep.latency_ms[f"b{b}"] = ort_latency(sess, example_input(cfg, b).numpy()) * 1e3
        return rep
    model, cfg = load_model_dir(path)
    rep.params = count_params(model)
    rep.size_bytes = disk_size(path / "model.safetensors")
    rep.macs = count_macs(model, example_input(cfg))
    for b in batches:
        rep.latency_ms[f"b{b}"] = torch_latency(model, example_input(cfg, b), threads) * 1e3
    return rep
