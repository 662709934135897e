"""Sliding-window attention: the Triton kernel itself (interpreter on CPU), the chunked
reference and the global-token merge, all against the dense definition."""

from __future__ import annotations

import os

import pytest
import torch

from core.errors import ConfigError
from core.kernels.swa import (
    band_attention,
    band_attention_reference,
    dense_mask,
    sliding_window_attention,
    sliding_window_attention_chunked,
    sliding_window_attention_dense,
)

needs_interp = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton kernel runs on CPU only in interpreter mode (tests/conftest.py sets it)",
)


def qkv(b, h, n, d, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, n, d, generator=g, dtype=torch.float32).to(dtype).requires_grad_(grad)
        for _ in range(3)
    ]


def test_window_semantics_count_keys_exactly():
    m = dense_mask(10, 2, causal=False)[0, 0]
    assert m[5].sum() == 5 and m[0].sum() == 3  # |i - j| <= 2: 2W + 1 keys, clipped at the edge
    m = dense_mask(10, 2, causal=True)[0, 0]
    assert m[5].sum() == 3 and m[5, 3] and not m[5, 6]  # 0 <= i - j <= 2: W + 1 keys
    assert dense_mask(6, 0, causal=False)[0, 0].equal(torch.eye(6, dtype=torch.bool))
    assert dense_mask(6, 5, causal=False)[0, 0].all()
    g = dense_mask(8, 1, causal=True, global_idx=torch.tensor([3]))[0, 0]
    assert g[7, 3] and g[3, :4].all() and not g[3, 4:].any()  # causal still binds globals


CASES = [
    # (n, d, window, causal, padding, globals)
    (37, 16, 5, False, False, None),
    (37, 16, 5, True, False, None),
    (50, 32, 0, False, False, None),
    (50, 32, 1, True, True, None),
    (41, 64, 100, False, True, None),  # window >= N: full attention
    (33, 16, 3, False, True, [0, 17]),
    (33, 32, 4, True, False, [5, 30]),
    # W well beyond the (16 x 16 interpreter) tiles: edge blocks masked, inner blocks not
    (150, 16, 40, False, False, None),
    (150, 32, 40, True, True, None),
    (157, 16, 47, True, False, [3]),
]


def _padding(b, n, on, seed=1):
    if not on:
        return None
    g = torch.Generator().manual_seed(seed)
    kpm = torch.rand(b, n, generator=g) < 0.2
    kpm[:, -3:] = True  # trailing padding, the usual case
    return kpm


@pytest.mark.parametrize("n,d,window,causal,pad,glob", CASES)
def test_reference_and_kernel_match_the_dense_definition(n, d, window, causal, pad, glob):
    q, k, v = qkv(2, 2, n, d)
    kpm = _padding(2, n, pad)
    gi = torch.tensor(glob) if glob else None
    want = sliding_window_attention_dense(q, k, v, window, causal, gi, kpm)
    for backend in ("chunked", "reference", "triton"):
        got = sliding_window_attention(q, k, v, window, causal, gi, kpm, backend=backend)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=backend)


def test_the_kernel_returns_the_log_sum_exp_of_the_band():
    q, k, v = qkv(1, 2, 29, 16, seed=3)
    o_r, lse_r = band_attention_reference(q, k, v, 4, causal=True)
    o_t, lse_t = band_attention(q, k, v, 4, causal=True, backend="triton")
    torch.testing.assert_close(o_t, o_r, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse_t, lse_r, atol=2e-5, rtol=1e-5)


def test_rows_that_see_nothing_return_zeros_with_finite_gradients():
    q, k, v = qkv(1, 1, 20, 16, grad=True)
    kpm = torch.zeros(1, 20, dtype=torch.bool)
    kpm[0, 8:14] = True  # with window 1, queries 9..12 see only padding
    for backend in ("chunked", "reference", "triton"):
        out = sliding_window_attention(q, k, v, 1, key_padding_mask=kpm, backend=backend)
        assert out[0, 0, 9:13].abs().max() == 0
        out.sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
            t.grad = None


def test_half_precision_cpu_path_keeps_rows_that_see_nothing_at_zero():
    # an fp16 mask fill of -1e30 would be -inf, and a row of -inf scores a NaN
    q, k, v = qkv(1, 2, 40, 16, dtype=torch.float16, seed=6)
    kpm = torch.zeros(1, 40, dtype=torch.bool)
    kpm[0, 8:14] = True
    gi = torch.tensor([10])  # a global token that is padding: its row sees all, no one sees it
    got = sliding_window_attention(q, k, v, 1, global_idx=gi, key_padding_mask=kpm)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert got[0, :, [9, 11, 12]].abs().max() == 0 and got[0, :, 10].abs().max() > 0
    want = sliding_window_attention_dense(q.float(), k.float(), v.float(), 1, False, gi, kpm)
    torch.testing.assert_close(got.float(), want, atol=5e-3, rtol=1e-2)


def test_half_precision_kernel_matches_within_fp16_rounding():
    q, k, v = qkv(1, 2, 40, 32, dtype=torch.float16, seed=5)
    want = sliding_window_attention_dense(q.float(), k.float(), v.float(), 6)
    got = sliding_window_attention(q, k, v, 6, backend="triton")
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=5e-3, rtol=1e-2)


GRAD_CASES = [
    (23, 16, 3, False, False, None),
    (23, 16, 3, True, True, None),
    (19, 32, 2, False, True, [4]),
    (19, 16, 30, True, False, [0, 9]),
    (150, 16, 40, False, True, None),
    (157, 16, 47, True, False, None),
]


@pytest.mark.parametrize("n,d,window,causal,pad,glob", GRAD_CASES)
def test_gradients_match_the_dense_definition(n, d, window, causal, pad, glob):
    kpm = _padding(1, n, pad, seed=2)
    gi = torch.tensor(glob) if glob else None
    q, k, v = qkv(1, 2, n, d, seed=7, grad=True)
    g = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(9))
    (sliding_window_attention_dense(q, k, v, window, causal, gi, kpm) * g).sum().backward()
    want = [t.grad.clone() for t in (q, k, v)]
    for backend in ("chunked", "reference", "triton"):
        for t in (q, k, v):
            t.grad = None
        (
            sliding_window_attention(q, k, v, window, causal, gi, kpm, backend=backend) * g
        ).sum().backward()
        for name, t, w in zip("qkv", (q, k, v), want, strict=True):
            torch.testing.assert_close(t.grad, w, atol=1e-4, rtol=1e-3, msg=f"{backend} d{name}")


def test_reference_gradients_pass_gradcheck_in_float64():
    q, k, v = (t.double().detach().requires_grad_() for t in qkv(1, 1, 9, 4, seed=11))
    kpm = torch.zeros(1, 9, dtype=torch.bool)
    kpm[0, -1] = True

    def f(q, k, v):
        return sliding_window_attention(
            q,
            k,
            v,
            2,
            causal=False,
            global_idx=torch.tensor([4]),
            key_padding_mask=kpm,
            backend="reference",
        )

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


def test_cpu_dispatch_uses_the_fused_chunked_path_and_bad_shapes_are_named():
    q, k, v = qkv(1, 2, 300, 16)
    gi, kpm = torch.tensor([0, 150, 299]), _padding(1, 300, True)
    o1 = sliding_window_attention(q, k, v, 20, global_idx=gi, key_padding_mask=kpm)
    o2 = sliding_window_attention_chunked(q, k, v, 20, global_idx=gi, key_padding_mask=kpm)
    assert torch.equal(o1, o2)  # CPU tensors: the fused chunked path, bit for bit
    o3 = sliding_window_attention(q, k, v, 20, False, gi, kpm, backend="reference")
    assert not torch.equal(o1, o3)  # a different computation ...
    torch.testing.assert_close(o1, o3, atol=2e-5, rtol=1e-4)  # ... of the same attention
    with pytest.raises(ConfigError, match="unknown backend"):
        sliding_window_attention(q, k, v, 2, backend="flash")
    with pytest.raises(ConfigError, match="window must be >= 0"):
        sliding_window_attention(q, k, v, -1)
    with pytest.raises(ConfigError, match=r"one \(B, H, N, D\) shape"):
        sliding_window_attention(q, k[:, :, :4], v, 2)
    with pytest.raises(ConfigError, match="key_padding_mask must be bool"):
        sliding_window_attention(q, k, v, 2, key_padding_mask=torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="repeated positions"):
        sliding_window_attention(q, k, v, 2, global_idx=torch.tensor([1, 1]))


@pytest.mark.parametrize("causal", [False, True])
def test_chunk_size_changes_nothing_even_when_globals_straddle_chunks(causal):
    # globals at chunk edges and inside neighbours' bands, padding that differs per sequence,
    # a last chunk that is mostly padding: every chunk size gives the dense definition
    q, k, v = qkv(2, 3, 131, 16, seed=4)
    kpm = _padding(2, 131, True, seed=5)
    gi = torch.tensor([0, 6, 7, 8, 63, 64, 130])
    want = sliding_window_attention_dense(q, k, v, 9, causal, gi, kpm)
    for chunk in (1, 7, 64, 131, 500):
        got = sliding_window_attention_chunked(q, k, v, 9, causal, gi, kpm, chunk=chunk)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=f"chunk {chunk}")


def test_the_reused_masks_follow_padding_globals_and_inference_mode():
    # the layers of one forward reuse one set of masks; a call that differs only in the
    # padding, in a global position changed in place, or in inference mode must not get them
    q, k, v = qkv(1, 2, 90, 16, seed=8)
    gi = torch.tensor([0, 45])
    kpm = torch.zeros(1, 90, dtype=torch.bool)
    for step in range(3):
        if step == 1:
            kpm[0, 60:] = True  # same shape, same tensor object, other padding
        if step == 2:
            gi[1] = 70  # same tensor, changed in place
        want = sliding_window_attention_dense(q, k, v, 4, False, gi, kpm)
        for _ in range(2):
            got = sliding_window_attention(q, k, v, 4, global_idx=gi, key_padding_mask=kpm)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=f"step {step}")
    kpm[0, 20:30] = True  # queries 24 and 25 see only padding: their zeroing mask is saved too
    with torch.inference_mode():
        sliding_window_attention(q, k, v, 4, key_padding_mask=kpm)
    qg = q.clone().requires_grad_()
    sliding_window_attention(qg, k, v, 4, key_padding_mask=kpm).sum().backward()
    assert torch.isfinite(qg.grad).all()


def test_chunked_reference_memory_grows_with_window_not_length():
    # the largest score block is chunk x (chunk + 2W), whatever N is: check via a tiny chunk
    q, k, v = qkv(1, 1, 300, 16)
    a, _ = band_attention_reference(q, k, v, 5, chunk=7)
    b, _ = band_attention_reference(q, k, v, 5, chunk=300)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_16k_token_conversation_runs_on_cpu_in_band_memory():
    # a dense 16K x 16K fp32 score matrix alone would be 1 GiB; the chunked band never holds
    # more than 512 x (512 + 512) scores (peak memory is measured in benchmarks/kernels.py)
    n, d = 16384, 32
    q, k, v = qkv(1, 1, n, d)
    out, _ = band_attention_reference(q, k, v, 256, chunk=512)
    assert out.shape == (1, 1, n, d) and torch.isfinite(out).all()
    # a dense N x N fp32 score matrix alone would be 1 GiB; spot-check rows against the definition
    for i in (0, 5000, n - 1):
        lo, hi = max(0, i - 256), min(n, i + 257)
        s = (q[0, 0, i] @ k[0, 0, lo:hi].T) / d**0.5
        ref = torch.softmax(s, 0) @ v[0, 0, lo:hi]
        torch.testing.assert_close(out[0, 0, i], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_kernel_matches_reference_at_real_sizes(dtype):
    q, k, v = (t.cuda().requires_grad_() for t in qkv(2, 4, 4096, 64, dtype=dtype))
    out = sliding_window_attention(q, k, v, 256, causal=True)
    ref, _ = band_attention_reference(q.float(), k.float(), v.float(), 256, causal=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
