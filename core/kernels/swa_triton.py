"""Triton kernels for the band of sliding-window attention (see :mod:`core.kernels.swa`).

FlashAttention-2 structure: the forward keeps a running max and sum per query row (online
softmax) with fp32 accumulation and saves the log-sum-exp; the backward recomputes the
probabilities from it, with one kernel for dK/dV (a program per key block) and one for dQ (a
program per query block). Every program visits only the blocks its band can reach, so work
and memory grow as N·W. The log-sum-exp is a differentiable output (its gradient enters as
``delta -= dlse``), which lets the caller merge global tokens in by log-sum-exp arithmetic.

Tensors: contiguous ``(B, H, N, D)``; fp16 / bf16 / fp32 on CUDA; fp32 / fp16 under
``TRITON_INTERPRET=1`` on CPU (the tests). ``D`` is padded to a power of two >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.kernels._triton import interpreting


@triton.jit
def _band(offs_m, offs_n, N, W, CAUSAL: tl.constexpr):
    d = offs_m[:, None] - offs_n[None, :]
    if CAUSAL:  # noqa: SIM108 (Triton: constexpr branches)
        vis = (d >= 0) & (d <= W)
    else:
        vis = (d <= W) & (d >= -W)
    return vis & (offs_n[None, :] < N) & (offs_m[:, None] < N)


@triton.jit
def _key_range(pid_m, N, W, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the key positions a query block's band can reach, lo aligned to BLOCK_N."""
    lo = tl.maximum(pid_m * BLOCK_M - W, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M, N)
    else:
        hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M + W, N)
    return lo, hi


@triton.jit
def _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM: tl.constexpr):
    """Keys that exist and are not padding, ``(BLOCK_N,)``."""
    keep = offs_n < N
    if HAS_KPM:
        pad = tl.load(KPM + (pid_bh // H) * N + offs_n, mask=offs_n < N, other=1)
        keep = keep & (pad == 0)
    return keep


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE, KPM, sm_scale, N, H, W, D,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    q = tl.load(
        Q + base + offs_m[:, None] * D + offs_d[None, :],
        mask=(offs_m[:, None] < N) & dmask,
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(pid_m, N, W, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < N) & dmask
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale
        vis = _band(offs_m, offs_n, N, W, CAUSAL)
        vis = vis & _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)[None, :]
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(seen, m_i + tl.log(l_safe), float("-inf"))
    tl.store(
        Out + base + offs_m[:, None] * D + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=(offs_m[:, None] < N) & dmask,
    )
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=offs_m < N)


@triton.jit
def _bwd_kv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KPM, sm_scale, N, H, W, D,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * D
    rbase = pid_bh.to(tl.int64) * N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    kv_mask = (offs_n[:, None] < N) & dmask
    k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    keep = _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if CAUSAL:  # noqa: SIM108
        lo = pid_n * BLOCK_N
    else:
        lo = tl.maximum(pid_n * BLOCK_N - W, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N + W, N)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_mask = (offs_m[:, None] < N) & dmask
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + rbase + offs_m, mask=offs_m < N, other=0.0)
        delta = tl.load(DELTA + rbase + offs_m, mask=offs_m < N, other=0.0)
        lse = tl.where(lse == float("-inf"), 0.0, lse)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale
        vis = _band(offs_m, offs_n, N, W, CAUSAL) & keep[None, :]
        p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do).to(tl.float32)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q).to(tl.float32)
    dk = dk * sm_scale
    tl.store(
        DK + base + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask
    )
    tl.store(
        DV + base + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask
    )


@triton.jit
def _bwd_q_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KPM, sm_scale, N, H, W, D,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * D
    rbase = pid_bh.to(tl.int64) * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    q_mask = (offs_m[:, None] < N) & dmask
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + rbase + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + rbase + offs_m, mask=offs_m < N, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(pid_m, N, W, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < N) & dmask
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale
        vis = _band(offs_m, offs_n, N, W, CAUSAL)
        vis = vis & _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)[None, :]
        p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
    dq = dq * sm_scale
    tl.store(
        DQ + base + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask
    )


def _blocks(d: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps): small tiles in the interpreter (speed of tests)."""
    bd = max(16, triton.next_power_of_2(d))
    if interpreting():
        return 16, 16, bd, 1
    return (128, 64, bd, 8) if bd <= 64 else (64, 64, bd, 4)


def _kpm(kpm: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if kpm is None:
        return torch.zeros(1, dtype=torch.uint8, device=q.device), False
    return kpm.to(torch.uint8).contiguous(), True


def band_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kpm: torch.Tensor | None,
    window: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((b, h, n), dtype=torch.float32, device=q.device)
    bm, bn, bd, warps = _blocks(d)
    pad, has = _kpm(kpm, q)
    grid = (triton.cdiv(n, bm), b * h)
    _fwd_kernel[grid](
        q, k, v, o, lse, pad, scale, n, h, window, d,
        CAUSAL=causal, HAS_KPM=has, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return o, lse


def band_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    kpm: torch.Tensor | None,
    window: int,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    delta = (do.float() * o.float()).sum(-1)
    if dlse is not None:
        delta = delta - torch.where(torch.isinf(lse), torch.zeros_like(dlse), dlse)
    delta = delta.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    bm, bn, bd, warps = _blocks(d)
    pad, has = _kpm(kpm, q)
    # dK/dV: a program per key block (BLOCK_N keys), iterating over query blocks of BLOCK_M
    _bwd_kv_kernel[(triton.cdiv(n, bn), b * h)](
        q, k, v, do, lse, delta, dk, dv, pad, scale, n, h, window, d,
        CAUSAL=causal, HAS_KPM=has, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    _bwd_q_kernel[(triton.cdiv(n, bm), b * h)](
        q, k, v, do, lse, delta, dq, pad, scale, n, h, window, d,
        CAUSAL=causal, HAS_KPM=has, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return dq, dk, dv


class BandAttention(torch.autograd.Function):
    """``(out, lse)`` of the band, with the Triton backward; both outputs differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, kpm, window, causal, scale):  # type: ignore[override]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = band_forward(q, k, v, kpm, window, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.kpm, ctx.window, ctx.causal, ctx.scale = kpm, window, causal, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = band_backward(
            q, k, v, o, lse, do.contiguous(), dlse, ctx.kpm, ctx.window, ctx.causal, ctx.scale
        )
        return dq, dk, dv, None, None, None, None
