"""Mixed precision: autocast contexts and the fp16 dynamic loss scaler.

``fp32`` runs without autocast. ``bf16`` autocasts without scaling (its exponent range
matches fp32); :func:`bf16_is_fast` says where it pays (a bf16 GPU, or a CPU with AMX or
AVX512-BF16 units). ``fp16`` autocasts and scales the loss with ``torch.amp.GradScaler``, which
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


def bf16_is_fast(device: torch.device | str | None = None) -> bool:
    """Whether bf16 autocast speeds training up on ``device`` (default: CUDA when present, else
    the CPU): a GPU with bf16 support, or a CPU with native bf16 units (Intel AMX or
    AVX512-BF16), where oneDNN runs bf16 convolutions and matmuls about twice as fast as fp32.
    On other CPUs bf16 is emulated and slower than fp32, so this is False."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)
