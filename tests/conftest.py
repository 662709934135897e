"""Suite-wide isolation: a private data root and Prefect home, one torch thread per xdist worker."""

from __future__ import annotations

import os
import tempfile

import pytest

_ROOT = tempfile.mkdtemp(prefix="dv-tests-")
os.environ["DV_DATA_ROOT"] = _ROOT
os.environ["PREFECT_HOME"] = os.path.join(_ROOT, "prefect")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers share two cores: keep each to one intra-op thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh DV_DATA_ROOT for one test."""
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"
