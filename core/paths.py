"""Where DeepVerticals reads and writes by default.

The data root is ``$DV_DATA_ROOT`` when set, else ``./data`` relative to the working
directory. Generated data sets, run outputs, the local MLflow store and Prefect's home live
under it (all git-ignored). This is the only place that reads ``DV_DATA_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The default data root (``$DV_DATA_ROOT`` or ``./data``), created if missing."""
    root = Path(os.environ.get("DV_DATA_ROOT", "data")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_tracking_uri() -> str:
    """MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else a local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = data_root() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def default_artifact_location() -> str:
    """Where a local MLflow store keeps artifacts (under the data root)."""
    path = data_root() / "mlflow" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()
