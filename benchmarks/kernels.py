"""Kernel benchmarks (results in benchmarks/results/kernels_<device>.json), each against a peer
in the same run.

CPU (always): the sliding-window path CPU tensors take (``sliding_window_attention``: the
fused chunked SDPA, O(N·W)) and the chunked reference loop (the kernel's oracle) vs
``scaled_dot_product_attention`` with a dense band mask at N = 16K: peak memory (RSS growth,
measured in a fresh subprocess per variant) and time.

GPU (when CUDA is present):
1. Sliding-window attention, bf16, D in {64, 128}, N in {4K, 16K, 64K}, W in {256, 1024}:
   forward and backward time and TFLOP/s counted on band FLOPs (4·N·(W+1)·D per head for
   causal, x2 for the backward's extra matmuls... see ``band_flops``), against FlexAttention
   (compiled, sliding-window block mask) and SDPA with a dense band mask (skipped where the
   N x N mask does not fit). Also the dense bf16 matmul ceiling of the device.
2. INT8 weight-only vs bf16 ``nn.Linear`` at M in {1, 16, 64}, K = N = 4096, timed per call
   (Python launch included) and replayed from a CUDA graph (the kernels alone).
3. The CUDA top-k sparsifier vs ``torch.topk`` on a 25M-element bucket at k = 1%.

Run: ``.venv/bin/python benchmarks/kernels.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_result

# ---------------------------------------------------------------- CPU: memory and time at 16K
_CPU_CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
from core.kernels.swa import band_attention_reference, sdpa_band_peer, sliding_window_attention
n, d, w, which = {n}, {d}, {w}, {which!r}
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 1, n, d, generator=g) for _ in range(3))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.inference_mode():
    for _ in range(3):
        t = time.perf_counter()
        if which == "chunked":
            sliding_window_attention(q, k, v, w)
        elif which == "reference":
            band_attention_reference(q, k, v, w, chunk=512)
        else:
            sdpa_band_peer(q, k, v, w)
        times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": sorted(times)[1], "peak_growth_mb": (peak - base) / 1024}}))
"""


def cpu_memory(n: int = 16384, d: int = 64, w: int = 256) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[1])
    out = {}
    for which in ("chunked", "reference", "sdpa_dense_mask"):
        code = _CPU_CHILD.format(root=root, n=n, d=d, w=w, which=which)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        out[which] = json.loads(res.stdout.strip().splitlines()[-1])
    out["memory_ratio"] = out["sdpa_dense_mask"]["peak_growth_mb"] / max(
        out["chunked"]["peak_growth_mb"], 1e-3
    )
    out["time_ratio"] = out["sdpa_dense_mask"]["seconds"] / out["chunked"]["seconds"]
    out.update(n=n, d=d, window=w)
    return out


# ---------------------------------------------------------------- GPU
def _cuda_time(fn, warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def band_flops(n: int, w: int, d: int, causal: bool) -> float:
    """Matmul FLOPs of the band per (batch x head): QK^T and PV, 2 FLOPs per MAC."""
    keys = (
        sum(min(i, w) + 1 for i in range(n))
        if causal
        else sum(min(n - 1, i + w) - max(0, i - w) + 1 for i in range(n))
    )
    return 4.0 * keys * d


def matmul_ceiling() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = _cuda_time(lambda: a @ a)
    return 2 * 8192**3 / t / 1e12


def _swa_row(d: int, n: int, w: int, flex: Any) -> dict[str, Any]:
    from torch.nn.attention.flex_attention import create_block_mask

    from core.kernels.swa import sdpa_band_peer, sliding_window_attention

    b, h = 1, 16 if n <= 16384 else 4
    q, k, v = (
        torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    do = torch.randn_like(q)

    def win(b_: Any, h_: Any, qi: Any, ki: Any) -> Any:
        return ((qi - ki) >= 0) & ((qi - ki) <= w)

    bm = create_block_mask(win, None, None, n, n, device="cuda")
    variants = {
        "ours": lambda: sliding_window_attention(q, k, v, w, causal=True),
        "flex": lambda: flex(q, k, v, block_mask=bm),
    }
    row: dict[str, Any] = {"d": d, "n": n, "w": w, "batch_heads": b * h}
    fl = band_flops(n, w, d, True) * b * h
    for name, f in variants.items():
        row[f"{name}_fwd_ms"] = _cuda_time(f) * 1e3
        out = f()
        row[f"{name}_bwd_ms"] = (
            _cuda_time(lambda out=out: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            * 1e3
        )
        row[f"{name}_fwd_tflops"] = fl / (row[f"{name}_fwd_ms"] / 1e3) / 1e12
        # the backward does 2.5x the forward's matmul work (5 matmuls vs 2)
        row[f"{name}_bwd_tflops"] = 2.5 * fl / (row[f"{name}_bwd_ms"] / 1e3) / 1e12
    if n <= 16384:
        with torch.no_grad():
            row["sdpa_mask_fwd_ms"] = (
                _cuda_time(lambda: sdpa_band_peer(q, k, v, w, causal=True)) * 1e3
            )
        row["speedup_vs_sdpa_mask_fwd"] = row["sdpa_mask_fwd_ms"] / row["ours_fwd_ms"]
    row["fwd_vs_flex"] = row["flex_fwd_ms"] / row["ours_fwd_ms"]
    row["bwd_vs_flex"] = row["flex_bwd_ms"] / row["ours_bwd_ms"]
    return row


def gpu_swa(quick: bool) -> list[dict[str, Any]]:
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    shapes = (
        [(64, 4096, 256)]
        if quick
        else [(d, n, w) for d in (64, 128) for n in (4096, 16384, 65536) for w in (256, 1024)]
    )
    rows = []
    for d, n, w in shapes:
        rows.append(_swa_row(d, n, w, flex))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    return rows


def _graph_time(fn, calls: int = 20) -> float:
    """Seconds per call with ``calls`` calls captured in one CUDA graph and replayed: the
    kernels alone, as a decode loop under CUDA graphs runs them (no Python launch cost)."""
    fn()  # autotune and compile before capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return _cuda_time(g.replay, reps=20) / calls


def _int8_row(lin: Any, q: Any, m: int) -> dict[str, Any]:
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        tb = _cuda_time(lambda: lin(x), reps=50)
        ti = _cuda_time(lambda: q(x), reps=50)
        ref = lin(x).float()
        err = float((q(x).float() - ref).norm() / ref.norm())
        row = {"m": m, "bf16_us": tb * 1e6, "int8_us": ti * 1e6, "speedup": tb / ti}
        try:
            gb, gi = _graph_time(lambda: lin(x)), _graph_time(lambda: q(x))
            row.update(bf16_graph_us=gb * 1e6, int8_graph_us=gi * 1e6, graph_speedup=gb / gi)
        except RuntimeError as exc:  # capture can fail on old drivers: keep the eager figures
            row["graph_error"] = str(exc)[:200]
    return row | {"rel_err": err}


def gpu_int8() -> list[dict[str, Any]]:
    from torch import nn

    from core.kernels.int8_linear import Int8Linear

    rows = []
    lin = nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    q = Int8Linear.from_float(lin, mode="weight_only")
    for m in (1, 16, 64):
        rows.append(_int8_row(lin, q, m))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def gpu_sparsify() -> dict[str, Any]:
    from core.kernels.sparsify import sparsify_ef, sparsify_ef_reference

    n, k = 25_000_000, 250_000
    g = torch.randn(n, device="cuda")
    r1, r2 = torch.zeros_like(g), torch.zeros_like(g)
    tk = _cuda_time(lambda: sparsify_ef_reference(g, r1, k))
    tc = _cuda_time(lambda: sparsify_ef(g, r2, k, backend="cuda"))
    return {"n": n, "k": k, "torch_topk_ms": tk * 1e3, "cuda_ms": tc * 1e3, "speedup": tk / tc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    data: dict[str, Any] = {"cpu_swa_16k": cpu_memory(4096 if a.quick else 16384)}
    c = data["cpu_swa_16k"]
    print_table(
        f"CPU sliding-window attention, N={c['n']}, W={c['window']}, D={c['d']}",
        ["variant", "time (s)", "peak memory growth (MB)"],
        [
            ["fused chunked (ours)", c["chunked"]["seconds"], c["chunked"]["peak_growth_mb"]],
            ["chunked reference loop", c["reference"]["seconds"], c["reference"]["peak_growth_mb"]],
            ["SDPA + dense band mask", c["sdpa_dense_mask"]["seconds"], c["sdpa_dense_mask"]["peak_growth_mb"]],
            ["ratio (SDPA / ours)", c["time_ratio"], c["memory_ratio"]],
        ],
    )  # fmt: skip
    name = "kernels_cpu"
    if torch.cuda.is_available():
        data["device"] = torch.cuda.get_device_name()
        data["matmul_ceiling_bf16_tflops"] = matmul_ceiling()
        data["swa"] = gpu_swa(a.quick)
        data["int8_linear"] = gpu_int8()
        data["sparsify"] = gpu_sparsify()
        name = "kernels_" + data["device"].lower().replace(" ", "_")
    if not a.quick:
        write_result(name, data)
    else:
        print(json.dumps(data, indent=1)[:2000])


if __name__ == "__main__":
    main()
