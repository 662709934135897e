"""Triton GEMMs for :mod:`core.kernels.int8_linear`.

``weight_only_gemm``: ``x (M, K)`` fp16/bf16/fp32 times int8 ``w (N, K)``; each int8 tile
is converted to the activation dtype in registers, the fp32 accumulator is multiplied by
the per-channel scale and the bias added before the single store (dequantization fused).
Small M (decode) is memory-bound: the grid is laid out over N with a split over K when
there are too few N tiles to fill the GPU. ``w8a8_gemm``: int8 x int8 -> int32 ``tl.dot``,
then per-token and per-channel scales. The result is written once, in the activation dtype
(no fp32 buffer, no cast kernel); split-K configurations add their partial sums atomically
into an output their pre-hook zeroes (so the low bits of a split-K result depend on the order
the partial sums land in). Autotuned on CUDA; one small fixed configuration under
``TRITON_INTERPRET=1``. ``python -m core.kernels.compile_check --kernels int8`` compiles the
autotune space for sm_80 / sm_90 without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.kernels._triton import interpreting
from core.kernels.int8_ref import quantize_per_token


def _zero_y(nargs: dict) -> None:
    nargs["Y"].zero_()


def _config(bm: int, bn: int, bk: int, split_k: int, warps: int, stages: int) -> triton.Config:
    """One tile; split-K configurations zero the output before their atomic adds."""
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k}
    hook = _zero_y if split_k > 1 else None
    return triton.Config(kw, num_warps=warps, num_stages=stages, pre_hook=hook)


def interpreter_config(split_k: int) -> triton.Config:
    """The small tile the interpreter runs (tests pass ``config=`` to reach split-K)."""
    return _config(16, 16, 32, split_k, 1, 1)


def _configs() -> list:
    if interpreting():
        return [interpreter_config(1)]
    return [
        _config(bm, bn, bk, sk, 8 if bm * bn * bk >= 64 * 64 * 128 else 4, 3)
        for bm in (16, 64)
        for bn in (32, 64, 128)
        for bk in (64, 128, 256)
        # 64 x 128 x 256 spills thousands of bytes on sm_80 and sm_90 (compile_check)
        if bm * bn * bk <= 64 * 64 * 256
        for sk in (1, 4)
    ]


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def _w8_kernel(
    X, Wq, S, B, Y, M, N, K,
    HAS_BIAS: tl.constexpr, W8A8: tl.constexpr, XS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if W8A8:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        kk = k0 + offs_k
        x = tl.load(
            X + offs_m[:, None] * K + kk[None, :],
            mask=(offs_m[:, None] < M) & (kk[None, :] < K),
            other=0,
        )
        w = tl.load(
            Wq + offs_n[:, None] * K + kk[None, :],
            mask=(offs_n[:, None] < N) & (kk[None, :] < K),
            other=0,
        )
        if W8A8:
            acc += tl.dot(x, tl.trans(w), out_dtype=tl.int32)
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype))).to(tl.float32)
    scale = tl.load(S + offs_n, mask=offs_n < N, other=0.0)
    y = acc.to(tl.float32) * scale[None, :]
    if W8A8:
        xs = tl.load(XS + offs_m, mask=offs_m < M, other=0.0)
        y = y * xs[:, None]
    if HAS_BIAS:  # noqa: SIM102 (constexpr, then a runtime test)
        if pid_k == 0:
            y += tl.load(B + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    ptrs = Y + offs_m[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(ptrs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ptrs, y.to(Y.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor,
    wq: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    xs: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: triton.Config | None = None,
) -> torch.Tensor:
    m, k = x.shape
    n = wq.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)  # split-K configs zero it first

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    args = (
        x.contiguous(), wq.contiguous(), scale.float().contiguous(),
        bias if bias is not None else scale, y, m, n, k,
    )  # fmt: skip
    kw = {
        "HAS_BIAS": bias is not None,
        "W8A8": xs is not None,
        "XS": xs if xs is not None else scale,
    }
    if config is None:
        _w8_kernel[grid](*args, **kw)
        return y
    # a pinned configuration: what the autotuner would do with it, without the tuning
    if config.pre_hook is not None:
        config.pre_hook({"Y": y})
    _w8_kernel.fn[grid(config.kwargs)](
        *args, **kw, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
    )
    return y


def weight_only_gemm(
    x: torch.Tensor,
    wq: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """``config`` pins one configuration instead of autotuning."""
    return _launch(x, wq, scale, bias, None, x.dtype, config)


def w8a8_gemm(
    x: torch.Tensor,
    wq: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    xq, xs = quantize_per_token(x)
    return _launch(xq, wq, scale, bias, xs.contiguous(), x.dtype, config)
