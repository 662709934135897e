"""Exact resume after SIGKILL and SIGTERM, in real subprocesses, and corrupt-checkpoint fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.train import checkpoint as ckpt

CHILD = Path(__file__).with_name("digits_child.py")
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def run_child(*args: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect_rc, proc.stderr[-3000:]
    return proc


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ref")
    run_child(str(d / "ckpt"), str(d / "ref.safetensors"))
    return d / "ref.safetensors"


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, uninterrupted):
    ck = tmp_path / "ckpt"
    # 40 steps per epoch; checkpoints every 7 steps; die at step 52 (epoch 1, after ckpt 49).
    run_child(str(ck), str(tmp_path / "x"), "--kill-at", "52", expect_rc=-9)
    steps = [int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(ck)]
    assert max(steps) == 49 and 49 % 40 != 0  # the newest checkpoint is mid-epoch
    out = run_child(str(ck), str(tmp_path / "resumed.safetensors"), "--resume")
    assert "resumed=" in out.stdout and "step-00000049" in out.stdout
    assert_bit_identical(uninterrupted, tmp_path / "resumed.safetensors")


def test_sigterm_mid_accumulation_checkpoints_gradients_and_resumes_exactly(tmp_path):
    ref = tmp_path / "ref.safetensors"
    run_child(str(tmp_path / "ref_ckpt"), str(ref), "--accum", "3", "--epochs", "2", "--every", "0")
    ck = tmp_path / "ckpt"
    # Micro-batch 17 is the 2nd of an accumulation group of 3: the checkpoint holds gradients.
    out = run_child(
        str(ck),
        str(tmp_path / "x"),
        "--accum",
        "3",
        "--epochs",
        "2",
        "--every",
        "0",
        "--term-at-batch",
        "17",
    )
    assert "preempted=True" in out.stdout
    newest = ckpt.list_checkpoints(ck)[-1]
    meta = ckpt.read_meta(newest)
    assert meta["micro_step"] == 2 and meta["batch_in_epoch"] == 17
    run_child(
        str(ck),
        str(tmp_path / "resumed.safetensors"),
        "--accum",
        "3",
        "--epochs",
        "2",
        "--every",
        "0",
        "--resume",
    )
    assert_bit_identical(ref, tmp_path / "resumed.safetensors")


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted, caplog):
    ck = tmp_path / "ckpt"
    run_child(str(ck), str(tmp_path / "x"), "--kill-at", "52", expect_rc=-9)
    newest = ckpt.list_checkpoints(ck)[-1]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte: same size, wrong checksum
    weights.write_bytes(bytes(data))
    (ck / ".tmp-step-00000056-deadbeef").mkdir()  # an interrupted write is ignored too
    with caplog.at_level("WARNING"):
        found = ckpt.find_resumable(ck)
    assert found is not None and found.path.name == "step-00000042"
    assert "corrupt" in caplog.text and "step-00000049" in caplog.text
    # And a resumed run from the fallback still ends bit-identical to the uninterrupted one.
    run_child(str(ck), str(tmp_path / "resumed.safetensors"), "--resume")
    assert_bit_identical(uninterrupted, tmp_path / "resumed.safetensors")
