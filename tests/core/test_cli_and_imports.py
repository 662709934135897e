"""The `dv` command line, run as a user runs it, and import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_dv(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


@pytest.mark.slow
def test_dv_train_digits_writes_a_model_directory(tmp_path):
    out = tmp_path / "model"
    proc = run_dv(
        "train",
        "digits",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["test"]["test/accuracy"] > 0.9
    assert sorted(p.name for p in out.iterdir()) == [
        "checksums.json",
        "config.json",
        "metrics.json",
        "model.safetensors",
        "model_card.md",
    ]
    assert (
        json.loads((out / "metrics.json").read_text())["test/accuracy"]
        == report["test"]["test/accuracy"]
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dv_train_nproc_2_runs_under_torchrun_with_topk(tmp_path):
    proc = run_dv("train", "digits", "--epochs", "2", "--nproc", "2", "--comm-hook", "topk")
    # keep the head of stderr too: the first failing rank's message comes before torchrun's summary
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    report = json.loads(proc.stdout)
    assert report["comm_bytes_per_step"] > 0 and report["test"]["test/accuracy"] > 0.5


def test_bad_config_file_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"max_epochs": 2, "precision": "fp8"}')
    proc = run_dv("train", "digits", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: unknown precision 'fp8'")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    proc = run_dv("train", "digits", "--config", str(broken))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and str(broken) in proc.stderr


def test_unknown_task_is_rejected():
    proc = run_dv("train", "imagenet")
    assert proc.returncode == 2 and "unknown task 'imagenet'" in proc.stderr


def test_importing_core_does_not_initialise_cuda_or_import_tracking_and_serving():
    code = (
        "import sys, core, core.train, core.errors; import torch; "
        "print(torch.cuda.is_initialized(), 'mlflow' in sys.modules, 'prefect' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=120,
    )
    assert out.stdout.split() == ["False", "False", "False"], out.stderr
