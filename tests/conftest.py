"""Suite-wide isolation: a private data root and Prefect home, one torch thread per xdist worker,
Triton in interpreter mode and `gpu` tests skipped where there is no CUDA."""

from __future__ import annotations

import os
import tempfile

import pytest

_ROOT = tempfile.mkdtemp(prefix="dv-tests-")
os.environ["DV_DATA_ROOT"] = _ROOT
os.environ["PREFECT_HOME"] = os.path.join(_ROOT, "prefect")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("MPLBACKEND", "Agg")
import torch  # noqa: E402

import flows  # noqa: E402, F401  (Prefect defaults: start-up timeout, no telemetry, progress logs)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton kernels run in the interpreter on CPU tensors; it must be chosen before
    # anything imports triton (DESIGN: every kernel is tested this way on CPU).
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers share two cores: keep each to one intra-op thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh DV_DATA_ROOT for one test."""
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"
