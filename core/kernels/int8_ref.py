"""PyTorch references of the INT8 GEMMs: per-channel / per-token quantization and the two
matmuls the Triton kernels (:mod:`core.kernels.int8_triton`) compute.

A leaf module: the kernels and the dispatching layer (:mod:`core.kernels.int8_linear`) both
import it, and neither imports the other at module level. Not here: kernels, dispatch,
``Int8Linear``.
"""

from __future__ import annotations

import torch


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, K)`` float weights -> int8 ``(N, K)`` and fp32 scales ``(N,)`` (symmetric)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, K)`` activations -> int8 ``(M, K)`` and fp32 per-row scales ``(M,)``."""
    x = x.float()
    scale = x.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def weight_only_matmul_reference(
    x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x (M, K) @ dequant(wq) (N, K)^T (+ bias)``, accumulated in fp32, returned in x's dtype."""
    y = (x.float() @ wq.float().t()) * scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w8a8_matmul_reference(
    x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-token INT8 activations times INT8 weights, int32-exact accumulation."""
    xq, xs = quantize_per_token(x)
    # int8 products summed in float64 are exact for K < 2**37 / 127**2, like int32 accumulation
    acc = xq.double() @ wq.double().t()
    y = acc.float() * xs[:, None] * scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
