"""INT8 linear (weight-only and W8A8, the Triton GEMM in interpreter mode) and the top-k
sparsifier with error feedback (reference; the CUDA source compiles with nvcc)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.kernels.int8_linear import (
    Int8Linear,
    quantize_linears,
    quantize_per_channel,
    w8a8_matmul,
    w8a8_matmul_reference,
    weight_only_matmul,
    weight_only_matmul_reference,
)
from core.kernels.sparsify import sampled_threshold, sparsify_ef, sparsify_ef_reference


def _lin(k=96, n=40, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def test_per_channel_quantization_round_trips_within_half_a_step():
    w = torch.randn(40, 96)
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (40,) and q.abs().max() == 127
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("m", [1, 5, 33])
def test_weight_only_error_is_within_the_stated_bound(m):
    lin = _lin()
    x = torch.randn(m, 96)
    q = Int8Linear.from_float(lin, mode="weight_only")
    y = q(x)
    want = lin(x).detach()
    bound = x.abs() @ (q.weight_scale / 2).expand(96, -1)  # sum_k |x_k| * scale_n / 2
    assert ((y - want).abs() <= bound + 1e-5).all()
    assert (y - want).abs().max() > 0  # it really is quantized


def test_w8a8_error_is_within_the_stated_bound():
    lin = _lin(seed=1)
    x = torch.randn(300, 96)
    q = Int8Linear.from_float(lin)  # auto: 300 rows >= 256 -> W8A8
    y = q(x)
    want = lin(x).detach()
    xs = x.abs().amax(1, keepdim=True) / 127
    wdq = q.weight_int8.float() * q.weight_scale[:, None]
    # activation rounding (|w| * xs / 2) plus weight rounding (|x| * ws / 2), summed over k
    ws = q.weight_scale[None, :]
    bound = (
        (xs / 2) * wdq.abs().sum(1)[None, :]  # activation rounding
        + x.abs() @ (q.weight_scale / 2).expand(96, -1)  # weight rounding
        + 96 * (xs / 2) * (ws / 2)  # their product
    )
    assert ((y - want).abs() <= bound + 1e-5).all()
    torch.testing.assert_close(
        y, w8a8_matmul_reference(x, q.weight_int8, q.weight_scale, q.bias), atol=0, rtol=0
    )


@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (7, 96, 40), (20, 130, 33)])
def test_triton_gemms_match_their_references(m, k, n):
    torch.manual_seed(m)
    x = torch.randn(m, k)
    wq, s = quantize_per_channel(torch.randn(n, k))
    b = torch.randn(n)
    torch.testing.assert_close(
        weight_only_matmul(x, wq, s, b, backend="triton"),
        weight_only_matmul_reference(x, wq, s, b),
        atol=1e-4,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        w8a8_matmul(x, wq, s, None, backend="triton"),
        w8a8_matmul_reference(x, wq, s, None),
        atol=1e-4,
        rtol=1e-5,
    )


@pytest.mark.parametrize("split_k", [2, 3])
def test_split_k_adds_partial_sums_into_a_zeroed_output(split_k):
    # the configurations that split K accumulate atomically into the output their pre-hook
    # zeroes; K = 130 leaves the last split a partial tile
    from core.kernels.int8_triton import interpreter_config, w8a8_gemm, weight_only_gemm

    torch.manual_seed(split_k)
    x = torch.randn(9, 130)
    wq, s = quantize_per_channel(torch.randn(24, 130))
    b = torch.randn(24)
    cfg = interpreter_config(split_k)
    assert cfg.pre_hook is not None
    got = weight_only_gemm(x, wq, s, b, config=cfg)
    torch.testing.assert_close(got, weight_only_matmul_reference(x, wq, s, b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        w8a8_gemm(x, wq, s, b, config=cfg),
        w8a8_matmul_reference(x, wq, s, b),
        atol=1e-4,
        rtol=1e-5,
    )


def test_quantize_linears_swaps_every_linear_and_keeps_the_model_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(4, 32)
    want = model(x).detach()
    assert quantize_linears(model, skip=("2",)) == ["0"]
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear)
    rel = (model(x) - want).norm() / want.norm()
    assert 0 < rel < 0.02
    sd = model.state_dict()
    assert sd["0.weight_int8"].dtype == torch.int8  # saved as int8: a quarter of fp32 bytes
    with pytest.raises(ConfigError, match="unknown mode"):
        Int8Linear(4, 4, mode="int4")


def test_sparsify_reference_sends_the_top_k_and_keeps_the_rest():
    g = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 0.5])
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    idx, val, res = sparsify_ef_reference(g, r, 2)
    assert sorted(idx.tolist()) == [1, 3] and idx.dtype == torch.int32
    assert res is r and r.tolist() == pytest.approx([0.1, 0.0, 0.2, 0.0, 0.95, 0.5])
    # nothing is lost: sent + kept == grad + old residual
    acc = r.clone()
    acc[idx.long()] += val
    assert acc.tolist() == pytest.approx((g + torch.tensor([0, 0, 0, 0, 1.0, 0])).tolist())


def test_sampled_threshold_selects_about_the_requested_share():
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    thr = sampled_threshold(x[::100], 0.01)
    share = float((x.abs() >= thr).float().mean())
    assert 0.007 < share < 0.013
    # on CPU the dispatcher uses the exact reference
    r = torch.zeros_like(x)
    idx, _, _ = sparsify_ef(x, r, 10_000)
    assert (
        idx.numel() == 10_000
        and float(x.abs()[idx.long()].min()) >= float(x.abs().kthvalue(990_001).values) - 1e-6
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_the_cuda_sparsifier_source_compiles_with_nvcc(tmp_path):
    import subprocess

    import torch.utils.cpp_extension as ext

    from core.kernels.sparsify import SOURCE

    inc = [f"-I{p}" for p in ext.include_paths(device_type="cuda")]
    obj = tmp_path / "topk_ef.o"
    cmd = [
        "nvcc", "-c", str(SOURCE), "-o", str(obj), "-std=c++20", "-O3", "--expt-relaxed-constexpr",
        "-Xcompiler", "-fPIC", "-DTORCH_EXTENSION_NAME=dv_topk_ef", "-D_GLIBCXX_USE_CXX11_ABI=1",
        "-gencode=arch=compute_90,code=sm_90", *inc,
    ]  # fmt: skip
    import sysconfig

    cmd.append(f"-I{sysconfig.get_paths()['include']}")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert obj.stat().st_size > 10_000


@pytest.mark.gpu
def test_gpu_sparsifier_matches_the_top_k_and_conserves_the_gradient():
    g = torch.randn(2_000_000, device="cuda")
    r = torch.randn(2_000_000, device="cuda") * 0.1
    before = g + r
    idx, val, res = sparsify_ef(g, r, 20_000, backend="cuda")
    sent = torch.zeros_like(g)
    sent[idx.long()] += val
    torch.testing.assert_close(sent + res, before)
    assert 0.9 * 20_000 <= int((val != 0).sum()) <= 20_000
