"""Whether Triton kernels can run: on CUDA with Triton installed, or on CPU under
``TRITON_INTERPRET=1`` (set before ``import triton``; the test suite does so when no GPU is
present). ``DV_KERNELS=reference`` turns every kernel off (debugging, A/B checks)."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (slow; correctness only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_enabled() -> bool:
    """Kernels may be dispatched (the caller still checks that its tensors are on CUDA)."""
    return triton_installed() and os.environ.get("DV_KERNELS", "auto") != "reference"


def wants_triton(x: Any, backend: str, supported: bool = True) -> bool:
    """The dispatch rule every kernel shares: ``backend="triton"`` forces the kernel (CPU
    tensors need ``TRITON_INTERPRET=1``), ``"reference"`` the PyTorch reference, ``"auto"``
    the kernel for CUDA tensors when Triton is enabled and the shape is ``supported``."""
    if backend not in ("auto", "triton", "reference"):
        from core.errors import ConfigError

        raise ConfigError(f"unknown backend {backend!r}", fix="use auto, triton or reference")
    return backend == "triton" or (
        backend == "auto" and supported and x.is_cuda and triton_enabled()
    )
