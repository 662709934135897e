"""`dv prune | export | quantize | bench` on a real trained model directory, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.models import load_model_dir, registered_models

pytestmark = pytest.mark.slow


def dv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    proc = dv("train", "digits", "--epochs", "3", "--out", str(d / "fp32"))
    assert proc.returncode == 0, proc.stderr
    return d


def test_prune_writes_a_smaller_model_that_reloads(model_dir):
    proc = dv(
        "prune", str(model_dir / "fp32"), "--out", str(model_dir / "pruned"), "--ratio", "0.5"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mac_reduction"] > 2.5 and report["frozen"]["head"] == "model output"
    model, cfg = load_model_dir(model_dir / "pruned")
    assert model.features[0].out_channels == 16 and cfg["compression"][0]["step"] == "prune"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_export_and_quantize_and_bench_side_by_side(model_dir):
    assert dv("export", str(model_dir / "fp32"), "--out", str(model_dir / "onnx")).returncode == 0
    proc = dv(
        "quantize",
        str(model_dir / "fp32"),
        "--out",
        str(model_dir / "int8"),
        "--calibration",
        "mse",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads(proc.stdout)["size_bytes"] < (model_dir / "onnx" / "model.onnx").stat().st_size
    )
    proc = dv(
        "bench",
        str(model_dir / "onnx"),
        str(model_dir / "int8"),
        "--batch",
        "1",
        "--json",
        str(model_dir / "bench.json"),
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((model_dir / "bench.json").read_text())["variants"]
    assert [r["name"] for r in rows] == ["onnx", "int8"] and all(
        r["latency_ms"]["b1"] > 0 for r in rows
    )


def test_missing_files_and_bad_calibration_data_exit_2_with_one_line(model_dir, tmp_path):
    proc = dv("prune", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "model directory does not exist" in proc.stderr
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((4, 3, 8, 8), dtype=np.float32))
    proc = dv(
        "quantize", str(model_dir / "fp32"), "--out", str(tmp_path / "q"), "--calib-data", str(bad)
    )
    assert (
        proc.returncode == 2
        and "calibration data has shape (4, 3, 8, 8) but the model takes (N, 1, 8, 8)"
        in proc.stderr
    )
    assert not (tmp_path / "q").exists()


def test_every_core_registered_model_builds_and_runs():
    import core.reference.digits  # noqa: F401  (registers the core reference architectures)
    from core.models import _REGISTRY, build_model

    # pipelines register their own architectures (other inputs/outputs) and test them there
    core_models = [n for n in registered_models() if _REGISTRY[n].__module__.startswith("core.")]
    assert {"digits_cnn", "resnet18_digits"} <= set(core_models)
    for name in core_models:
        model = build_model({"arch": name})
        x = torch.zeros(1, 1, 32, 32)
        assert model.eval()(x).shape == (1, 10)


def _copy_with_flipped_byte(src, dst, name: str, where: int) -> None:
    import shutil

    shutil.copytree(src, dst)
    f = dst / name
    data = bytearray(f.read_bytes())
    data[where] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(("where", "label"), [(-5, "data region"), (12, "header")])
def test_flipped_weight_bytes_are_reported_as_a_corrupt_file(model_dir, tmp_path, where, label):
    bad = tmp_path / "bad"
    _copy_with_flipped_byte(model_dir / "fp32", bad, "model.safetensors", where)
    proc = dv("prune", str(bad), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2, proc.stderr
    assert "model.safetensors is corrupt (checksum mismatch)" in proc.stderr, label
    assert "different models" not in proc.stderr and "Traceback" not in proc.stderr


def test_bench_refuses_a_corrupt_onnx_a_zero_batch_and_prune_an_unknown_layer(model_dir, tmp_path):
    if not (model_dir / "onnx").exists():
        assert (
            dv("export", str(model_dir / "fp32"), "--out", str(model_dir / "onnx")).returncode == 0
        )
    bad = tmp_path / "bad_onnx"
    _copy_with_flipped_byte(model_dir / "onnx", bad, "model.onnx", 100)
    proc = dv("bench", str(bad), "--batch", "1")
    assert proc.returncode == 2 and "model.onnx is corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    proc = dv("bench", str(model_dir / "onnx"), "--batch", "0")
    assert proc.returncode == 2 and "batch sizes must be >= 1" in proc.stderr
    proc = dv(
        "prune", str(model_dir / "fp32"), "--out", str(tmp_path / "p"), "--exclude", "no.such.layer"
    )
    assert proc.returncode == 2 and "exclude names no module of the model" in proc.stderr
    assert not (tmp_path / "p").exists()
