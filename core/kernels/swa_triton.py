"""Triton kernels for the band of sliding-window attention (see :mod:`core.kernels.swa`).

FlashAttention-2 structure: the forward keeps a running max and sum per query row (online
softmax) with fp32 accumulation and saves the log-sum-exp; the backward recomputes the
probabilities from it, with one kernel for dK/dV (a program per key block) and one for dQ (a
program per query block). Every program visits only the blocks its band can reach, so work
and memory grow as N·W. The log-sum-exp is a differentiable output (its gradient enters as
``delta -= dlse``), which lets the caller merge global tokens in by log-sum-exp arithmetic.

Each program splits its blocks in three runs: the band's edge blocks (masked), the blocks
wholly inside the band (no mask arithmetic at all — most of them once ``W`` exceeds the tile
sizes) and the far edge (masked). Scores are kept in base 2 (``sm_scale·log2 e`` folded into
one multiply, ``exp2``), as FlashAttention and FlexAttention do. Tile sizes, warps and
pipeline stages are autotuned on CUDA per (dtype, D, W, N rounded up to a power of two); the
interpreter runs one small configuration. ``python -m core.kernels.compile_check`` compiles
every configuration for sm_80 and sm_90 (registers, spills, shared memory) without a GPU.

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
def _runs(r0, lo, hi, a, b, N, C: tl.constexpr):
    """Split the blocks of size ``C`` starting in ``[lo, hi)`` (``lo`` a multiple of ``C``)
    into ``[lo, fs)`` masked, ``[fs, fe)`` wholly visible, ``[fe, hi)`` masked. A block
    start ``x`` is wholly visible iff ``a <= x <= b`` and ``x + C <= N``; the caller derives
    ``a`` and ``b`` from its own block ``r0`` and the window."""
    fs = ((tl.maximum(a, 0) + C - 1) // C) * C
    fs = tl.minimum(tl.maximum(fs, lo), hi)
    fe = tl.where(b >= 0, (tl.maximum(b, 0) // C) * C + C, 0)
    fe = tl.minimum(fe, (N // C) * C)
    fe = tl.minimum(tl.maximum(fe, fs), hi)
    return fs, fe


@triton.jit
def _query_major(pid_m, N, W, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a query block: the key blocks its band reaches, split as in :func:`_runs`."""
    m0 = pid_m * BLOCK_M
    lo = (tl.maximum(m0 - W, 0) // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M, N)
        b = m0 - BLOCK_N + 1  # every key at or before every query of the block
    else:
        hi = tl.minimum(m0 + BLOCK_M + W, N)
        b = m0 + W - BLOCK_N + 1
    fs, fe = _runs(m0, lo, hi, m0 + BLOCK_M - 1 - W, b, N, BLOCK_N)
    return lo, fs, fe, hi


@triton.jit
def _key_major(pid_n, N, W, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a key block: the query blocks that reach it, split as in :func:`_runs`."""
    n0 = pid_n * BLOCK_N
    if CAUSAL:
        lo = (n0 // BLOCK_M) * BLOCK_M
        a = n0 + BLOCK_N - 1  # every query at or after every key of the block
    else:
        lo = (tl.maximum(n0 - W, 0) // BLOCK_M) * BLOCK_M
        a = n0 + BLOCK_N - 1 - W
    hi = tl.minimum(n0 + BLOCK_N + W, N)
    fs, fe = _runs(n0, lo, hi, a, n0 + W - BLOCK_M + 1, N, BLOCK_M)
    return lo, fs, fe, hi


@triton.jit
def _rows(X, base, row0, N, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pointers to and mask of a ``(BLOCK_R, BLOCK_D)`` tile, rows ``row0..`` of one
    ``(N, HEAD_DIM)`` head (no column mask when ``HEAD_DIM`` is already a power of two)."""
    offs_r = row0 + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = X + base + offs_r[:, None] * HEAD_DIM + offs_d[None, :]
    if HEAD_DIM == BLOCK_D:
        mask = offs_r[:, None] < N
    else:
        mask = (offs_r[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    return ptrs, mask


@triton.jit
def _load(X, base, row0, N, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs, mask = _rows(X, base, row0, N, HEAD_DIM, BLOCK_R, BLOCK_D)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store(
    X, base, row0, N, val, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    ptrs, mask = _rows(X, base, row0, N, HEAD_DIM, BLOCK_R, BLOCK_D)
    tl.store(ptrs, val.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM: tl.constexpr):
    """Keys that exist and are not padding, ``(BLOCK_N,)``."""
    keep = offs_n < N
    if HAS_KPM:
        pad = tl.load(KPM + (pid_bh // H) * N + offs_n, mask=offs_n < N, other=1)
        keep = keep & (pad == 0)
    return keep


@triton.jit
def _mask(x, fill, offs_m, offs_n, keep, N, W, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
          MASKED: tl.constexpr):  # fmt: skip
    """``x`` with ``fill`` where the band (edge runs only) or the padding hides a key."""
    if MASKED:
        x = tl.where(_band(offs_m, offs_n, N, W, CAUSAL), x, fill)
    if HAS_KPM:
        x = tl.where(keep[None, :], x, fill)
    return x


@triton.jit
def _row_stats(LSE, DELTA, rbase, offs_m, N):
    """Per query row: the forward's log-sum-exp in base 2 (0 for rows that saw nothing) and
    ``delta = rowsum(dO * O) - dLSE``."""
    lse = tl.load(LSE + rbase + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + rbase + offs_m, mask=offs_m < N, other=0.0)
    return tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634), delta


@triton.jit
def _probs_and_ds(q, k, v, do, lse2, delta, keep, offs_m, offs_n, N, W, qk_scale,
                  CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """One tile of the backward: the recomputed probabilities P and dS = P * (dO Vᵀ - delta)."""
    p = tl.math.exp2(tl.dot(q, tl.trans(k)).to(tl.float32) * qk_scale - lse2[:, None])
    p = _mask(p, 0.0, offs_m, offs_n, keep, N, W, CAUSAL, HAS_KPM, MASKED)
    dp = tl.dot(do, tl.trans(v)).to(tl.float32)
    return p, p * (dp - delta[:, None])


# ---------------------------------------------------------------- tile configurations
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and head-dim class (D <= 64, D > 64).
# Chosen from a wider set by what ptxas reports for sm_90 (``python -m
# core.kernels.compile_check``): configurations that spilled registers were dropped, and
# every kernel keeps spill-free ones on sm_80 and sm_90 (the slow tests check this). The
# autotuner picks among them on the device. Large D needs narrower tiles or more warps: dK and dV
# accumulators alone take BLOCK_N x D x 8 bytes of registers.
TILES: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {
        64: [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 8, 3)],
        128: [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3)],
    },
    "kv": {
        64: [(128, 64, 8, 3), (64, 64, 8, 3), (32, 64, 4, 3), (64, 32, 4, 3)],
        128: [(32, 64, 8, 3), (32, 64, 8, 2), (16, 64, 4, 3), (32, 32, 4, 3)],
    },
    "q": {
        64: [(128, 64, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (128, 32, 8, 3)],
        128: [(32, 64, 8, 3), (64, 32, 8, 3), (16, 64, 4, 3), (32, 32, 4, 3), (64, 32, 4, 3)],
    },
}
_KEY = ["N_KEY", "W", "HEAD_DIM"]


def _config(t: tuple[int, int, int, int]) -> triton.Config:
    return triton.Config({"BLOCK_M": t[0], "BLOCK_N": t[1]}, num_warps=t[2], num_stages=t[3])


def configs_for(kernel: str, head_dim: int) -> list:
    """The configurations tried for ``kernel`` ("fwd", "kv", "q") at this head dim; one
    small tile in the interpreter."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [_config(t) for t in TILES[kernel][64 if head_dim <= 64 else 128]]


def _configs(kernel: str) -> list:
    if interpreting():
        return configs_for(kernel, 64)
    return [_config(t) for t in dict.fromkeys(t for ts in TILES[kernel].values() for t in ts)]


def _prune(kernel: str):
    def prune(configs: list, nargs: dict, **kwargs: object) -> list:
        keep = configs_for(kernel, int({**nargs, **kwargs}["HEAD_DIM"]))  # type: ignore[call-overload]
        return [c for c in configs if c in keep]

    return prune


# ---------------------------------------------------------------- forward
@triton.jit
def _fwd_blocks(
    acc, l_i, m_i, q, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, start, stop,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    for start_n in range(start, stop, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, base, start_n, N, HEAD_DIM, BLOCK_N, BLOCK_D)
        v = _load(V, base, start_n, N, HEAD_DIM, BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * qk_scale  # base-2 logits
        keep = _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)
        s = _mask(s, float("-inf"), offs_m, offs_n, keep, N, W, CAUSAL, HAS_KPM, MASKED)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _prune("fwd")}
)
@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE, KPM, sm_scale, N, H, W, N_KEY,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * HEAD_DIM
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q = _load(Q, base, m0, N, HEAD_DIM, BLOCK_M, BLOCK_D)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, fs, fe, hi = _query_major(pid_m, N, W, CAUSAL, BLOCK_M, BLOCK_N)
    # three runs: edge blocks masked, inner blocks not (no *args: Triton's compiler has none)
    acc, l_i, m_i = _fwd_blocks(
        acc, l_i, m_i, q, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, lo, fs,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_blocks(
        acc, l_i, m_i, q, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, fs, fe,
        CAUSAL, HAS_KPM, False, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_blocks(
        acc, l_i, m_i, q, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, fe, hi,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    # natural-log LSE for the caller: (m + log2 l) · ln 2
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    _store(Out, base, m0, N, out, HEAD_DIM, BLOCK_M, BLOCK_D)
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=offs_m < N)


# ---------------------------------------------------------------- backward
@triton.jit
def _kv_blocks(
    dk, dv, k, v, keep, Q, DO, LSE, DELTA, base, rbase, N, W, qk_scale, offs_n, start, stop,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    for start_m in range(start, stop, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load(Q, base, start_m, N, HEAD_DIM, BLOCK_M, BLOCK_D)
        do = _load(DO, base, start_m, N, HEAD_DIM, BLOCK_M, BLOCK_D)
        lse2, delta = _row_stats(LSE, DELTA, rbase, offs_m, N)
        p, ds = _probs_and_ds(
            q, k, v, do, lse2, delta, keep, offs_m, offs_n, N, W, qk_scale,
            CAUSAL, HAS_KPM, MASKED,
        )  # fmt: skip
        dv += tl.dot(tl.trans(p.to(do.dtype)), do).to(tl.float32)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q).to(tl.float32)
    return dk, dv


@triton.autotune(
    configs=_configs("kv"), key=_KEY, prune_configs_by={"early_config_prune": _prune("kv")}
)
@triton.jit
def _bwd_kv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KPM, sm_scale, N, H, W, N_KEY,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * HEAD_DIM
    rbase = pid_bh.to(tl.int64) * N
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = _load(K, base, n0, N, HEAD_DIM, BLOCK_N, BLOCK_D)
    v = _load(V, base, n0, N, HEAD_DIM, BLOCK_N, BLOCK_D)
    keep = _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    lo, fs, fe, hi = _key_major(pid_n, N, W, CAUSAL, BLOCK_M, BLOCK_N)
    dk, dv = _kv_blocks(
        dk, dv, k, v, keep, Q, DO, LSE, DELTA, base, rbase, N, W, qk_scale, offs_n, lo, fs,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_M, BLOCK_D,
    )  # fmt: skip
    dk, dv = _kv_blocks(
        dk, dv, k, v, keep, Q, DO, LSE, DELTA, base, rbase, N, W, qk_scale, offs_n, fs, fe,
        CAUSAL, HAS_KPM, False, HEAD_DIM, BLOCK_M, BLOCK_D,
    )  # fmt: skip
    dk, dv = _kv_blocks(
        dk, dv, k, v, keep, Q, DO, LSE, DELTA, base, rbase, N, W, qk_scale, offs_n, fe, hi,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_M, BLOCK_D,
    )  # fmt: skip
    _store(DK, base, n0, N, dk * sm_scale, HEAD_DIM, BLOCK_N, BLOCK_D)
    _store(DV, base, n0, N, dv, HEAD_DIM, BLOCK_N, BLOCK_D)


@triton.jit
def _q_blocks(
    dq, q, do, lse2, delta, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, start, stop,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    for start_n in range(start, stop, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, base, start_n, N, HEAD_DIM, BLOCK_N, BLOCK_D)
        v = _load(V, base, start_n, N, HEAD_DIM, BLOCK_N, BLOCK_D)
        keep = _not_padding(KPM, pid_bh, H, N, offs_n, HAS_KPM)
        _, ds = _probs_and_ds(
            q, k, v, do, lse2, delta, keep, offs_m, offs_n, N, W, qk_scale,
            CAUSAL, HAS_KPM, MASKED,
        )  # fmt: skip
        dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
    return dq


@triton.autotune(
    configs=_configs("q"), key=_KEY, prune_configs_by={"early_config_prune": _prune("q")}
)
@triton.jit
def _bwd_q_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KPM, sm_scale, N, H, W, N_KEY,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * HEAD_DIM
    rbase = pid_bh.to(tl.int64) * N
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q = _load(Q, base, m0, N, HEAD_DIM, BLOCK_M, BLOCK_D)
    do = _load(DO, base, m0, N, HEAD_DIM, BLOCK_M, BLOCK_D)
    lse2, delta = _row_stats(LSE, DELTA, rbase, offs_m, N)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, fs, fe, hi = _query_major(pid_m, N, W, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _q_blocks(
        dq, q, do, lse2, delta, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, lo, fs,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    dq = _q_blocks(
        dq, q, do, lse2, delta, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, fs, fe,
        CAUSAL, HAS_KPM, False, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    dq = _q_blocks(
        dq, q, do, lse2, delta, K, V, KPM, base, pid_bh, H, N, W, qk_scale, offs_m, fe, hi,
        CAUSAL, HAS_KPM, True, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    _store(DQ, base, m0, N, dq * sm_scale, HEAD_DIM, BLOCK_M, BLOCK_D)


# ---------------------------------------------------------------- launch
def block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def n_key(n: int) -> int:
    """The autotune key for N: sequence lengths vary per call, tiles need not (power of 2)."""
    return triton.next_power_of_2(max(n, 1024))


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
    pad, has = _kpm(kpm, q)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BLOCK_M"]), b * h)

    _fwd_kernel[grid](
        q, k, v, o, lse, pad, scale, n, h, window, n_key(n),
        CAUSAL=causal, HAS_KPM=has, HEAD_DIM=d, BLOCK_D=block_d(d),
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
    pad, has = _kpm(kpm, q)
    common = {"CAUSAL": causal, "HAS_KPM": has, "HEAD_DIM": d, "BLOCK_D": block_d(d)}
    # dK/dV: a program per key block (BLOCK_N keys), iterating over query blocks of BLOCK_M
    _bwd_kv_kernel[lambda m: (triton.cdiv(n, m["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv, pad, scale, n, h, window, n_key(n), **common
    )
    _bwd_q_kernel[lambda m: (triton.cdiv(n, m["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq, pad, scale, n, h, window, n_key(n), **common
    )
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
