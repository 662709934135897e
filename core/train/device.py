"""Run-time device choice: CUDA when present, CPU otherwise, overridable.

Nothing here runs at import time; ``torch.cuda`` is only queried when a device is asked for.
"""

from __future__ import annotations

import os

import torch

from core.errors import ConfigError


def select_device(preference: str = "auto", local_rank: int | None = None) -> torch.device:
    """Return the device to train on.

    Args:
        preference: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank: under torchrun, the process's local rank selects ``cuda:<local_rank>``.
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {preference!r} was requested but CUDA is not available",
                fix="use device='auto' or 'cpu'",
            )
        if preference == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device(preference)
    if preference == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {preference!r}", fix="use 'auto', 'cpu', 'cuda' or 'cuda:N'")
