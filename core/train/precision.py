"""Mixed precision: autocast contexts and the fp16 dynamic loss scaler.

``fp32`` runs without autocast. ``bf16`` autocasts without scaling (its exponent range
matches fp32). ``fp16`` autocasts and scales the loss with ``torch.amp.GradScaler``, which
skips an optimizer step whose unscaled gradients hold inf/NaN and halves the scale. The
Trainer counts such steps, logs them with the loss scale and gradient norm, and stops the run
after ``max_nonfinite_steps`` in a row (see ``Trainer``).
"""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
