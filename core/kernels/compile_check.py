"""Compile every Triton kernel for real NVIDIA targets on any machine — no GPU needed.

The interpreter tests (``TRITON_INTERPRET=1``) check what the kernels compute; they cannot
check that a kernel lowers to a GPU at all (``tl.dot`` shapes and dtypes, bf16 atomics, int8
MMA), nor what it costs in registers and shared memory. This module runs Triton's own
ahead-of-time pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the ``ptxas`` Triton
ships) for ``sm_80`` (A100) and ``sm_90a`` (H100/H200), in the launch configurations the
dispatchers use, and reads back per kernel: registers per thread, spill bytes, shared memory
(against the architecture's per-block limit) and the tensor-core instructions used.

Run: ``python -m core.kernels.compile_check [--arch 90 --arch 80] [--json out.json]``.
It must run with ``TRITON_INTERPRET`` unset (it re-executes itself without it if needed);
the test suite calls it in a subprocess (``tests/core/kernels/test_compile_check.py``).
Exit status 1 when a configuration fails to compile, or when a kernel has no configuration
that is free of spills and fits in shared memory (see :func:`verdict`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# usable shared memory per block (bytes) and the cards they stand for
ARCHS: dict[int, tuple[str, int]] = {80: ("A100", 163 * 1024), 90: ("H100/H200", 227 * 1024)}
_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_TUNED = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K")


@dataclass
class Spec:
    """One kernel in one launch configuration."""

    name: str
    fn: Any  # a triton JITFunction
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3

    def group(self) -> str:
        """The kernel and its specialisation, without the tunable tile sizes."""
        fixed = {k: v for k, v in self.constexprs.items() if k not in _TUNED}
        dt = self.signature.get("Q") or self.signature.get("X")
        return f"{self.name}[{dt} " + " ".join(f"{k}={v}" for k, v in fixed.items()) + "]"

    def label(self) -> str:
        keys = (
            "CAUSAL",
            "HAS_KPM",
            "W8A8",
            "HEAD_DIM",
            "BLOCK_M",
            "BLOCK_N",
            "BLOCK_K",
            "BLOCK_D",
            "SPLIT_K",
        )
        parts = [f"{k}={self.constexprs[k]}" for k in keys if k in self.constexprs]
        dt = self.signature.get("Q") or self.signature.get("X")
        return f"{self.name}[{dt} {' '.join(parts)} w{self.num_warps}s{self.num_stages}]"


@dataclass
class Build:
    kernel: str
    arch: int
    ok: bool
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    shared_limit: int | None = None
    mma: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    group: str = ""

    @property
    def problems(self) -> list[str]:
        if not self.ok:
            return [f"does not compile: {self.error}"]
        out = []
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes")
        if self.shared_bytes and self.shared_limit and self.shared_bytes > self.shared_limit:
            out.append(f"needs {self.shared_bytes} B shared memory > {self.shared_limit} B")
        return out


# ---------------------------------------------------------------- the kernels, as dispatched
def swa_specs(
    dtypes: tuple[str, ...] = ("bfloat16", "float16"), dims: tuple[int, ...] = (64, 128)
) -> list[Spec]:
    """The three band kernels in every autotune configuration, causal without padding and
    non-causal with padding (the two mask paths), per dtype and head dim."""
    from core.kernels import swa_triton as S

    specs = []
    for dtype in dtypes:
        t = _TYPES[dtype]
        common = {"KPM": "*u8", "sm_scale": "fp32", "N": "i32", "H": "i32", "W": "i32"}
        common["N_KEY"] = "i32"
        qkv = {"Q": f"*{t}", "K": f"*{t}", "V": f"*{t}"}
        grad = {"DO": f"*{t}", "LSE": "*fp32", "DELTA": "*fp32"}
        kernels = (
            ("swa_fwd", S._fwd_kernel, {**qkv, "Out": f"*{t}", "LSE": "*fp32", **common}),
            ("swa_bwd_kv", S._bwd_kv_kernel, {**qkv, **grad, "DK": f"*{t}", "DV": f"*{t}", **common}),
            ("swa_bwd_q", S._bwd_q_kernel, {**qkv, **grad, "DQ": f"*{t}", **common}),
        )  # fmt: skip
        for d in dims:
            for causal, kpm in ((True, False), (False, True)):
                for name, tuner, sig in kernels:
                    for c in S.configs_for(name.removeprefix("swa_").removeprefix("bwd_"), d):
                        const = {"CAUSAL": causal, "HAS_KPM": kpm, "HEAD_DIM": d}
                        const["BLOCK_D"] = S.block_d(d)
                        const.update(c.kwargs)
                        fn = tuner.fn
                        specs.append(Spec(name, fn, sig, const, c.num_warps, c.num_stages))
    return specs


def int8_specs(
    dtypes: tuple[str, ...] = ("bfloat16", "float16"), every: bool = False
) -> list[Spec]:
    """The INT8 GEMM: every autotune configuration for weight-only in each dtype when
    ``every``, else the corners of the space; W8A8 likewise."""
    from core.kernels import int8_triton as I

    configs = I._configs()
    if not every:  # smallest and largest tiles, with and without split-K
        size = [c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] for c in configs]
        lo, hi = min(size), max(size)
        configs = [c for c, s in zip(configs, size, strict=True) if s in (lo, hi)]
    specs = []
    for w8a8 in (False, True):
        for dtype in ("int8",) if w8a8 else dtypes:
            t = "i8" if w8a8 else _TYPES[dtype]
            out = "bf16" if w8a8 else t
            sig = {"X": f"*{t}", "Wq": "*i8", "S": "*fp32", "B": f"*{out}", "Y": f"*{out}"}
            sig.update({"M": "i32", "N": "i32", "K": "i32", "XS": "*fp32"})
            for c in configs:
                const = {"HAS_BIAS": True, "W8A8": w8a8, **c.kwargs}
                specs.append(
                    Spec("int8_gemm", I._w8_kernel.fn, sig, const, c.num_warps, c.num_stages)
                )
    return specs


# ---------------------------------------------------------------- compile one
def _ptxas_report(ptx: str, arch: int) -> tuple[int | None, int | None]:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src,
             "-o", os.path.join(tmp, "k.o")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spill = re.findall(r"(\d+) bytes spill (?:stores|loads)", res.stderr)
    return (int(regs.group(1)) if regs else None, sum(int(s) for s in spill) if spill else 0)


def compile_spec(spec: Spec, arch: int) -> Build:
    import triton
    from triton.backends.compiler import GPUTarget

    t0 = time.perf_counter()
    build = Build(spec.label(), arch, ok=False, shared_limit=ARCHS[arch][1], group=spec.group())
    try:
        sig = dict(spec.signature)
        for k in spec.constexprs:
            sig[k] = "constexpr"
        src = triton.compiler.ASTSource(fn=spec.fn, signature=sig, constexprs=spec.constexprs)
        opts = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    except Exception as exc:  # compile errors are the finding, reported per kernel
        lines = [ln for ln in str(exc).splitlines() if ln.strip() and ln.strip() != "^"]
        build.error = f"{type(exc).__name__}: " + " | ".join(lines[:1] + lines[-2:])[:400]
        build.seconds = time.perf_counter() - t0
        return build
    build.ok = True
    build.shared_bytes = int(k.metadata.shared)
    ptx = k.asm["ptx"]
    build.mma = sorted({m.group(0) for m in re.finditer(r"\b(wgmma\.mma_async|mma\.sync)", ptx)})
    build.registers, build.spill_bytes = _ptxas_report(ptx, arch)
    build.seconds = time.perf_counter() - t0
    return build


def run(
    archs: list[int],
    which: tuple[str, ...] = ("swa", "int8"),
    every: bool = False,
    quick: bool = False,
) -> list[Build]:
    """``quick``: bf16 only, the causal attention path (what training uses) and head dim 128
    (the one that presses hardest on registers and shared memory) — the subset the test
    suite compiles."""
    dtypes = ("bfloat16",) if quick else ("bfloat16", "float16")
    specs: list[Spec] = []
    if "swa" in which:
        dims = (128,) if quick else (64, 128)
        specs += [s for s in swa_specs(dtypes, dims) if not quick or s.constexprs["CAUSAL"]]
    if "int8" in which:
        specs += int8_specs(dtypes, every=every)
    return [compile_spec(s, a) for a in archs for s in specs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, action="append", choices=sorted(ARCHS))
    ap.add_argument("--kernels", choices=["swa", "int8", "all"], default="all")
    ap.add_argument("--every-config", action="store_true", help="whole INT8 autotune space")
    ap.add_argument("--quick", action="store_true", help="bf16, causal, head dim 128 only")
    ap.add_argument("--json", help="write the builds here")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter replaces triton.jit
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "core.kernels.compile_check", *(argv or sys.argv[1:])]
        return subprocess.run(cmd, env=env).returncode
    which = ("swa", "int8") if a.kernels == "all" else (a.kernels,)
    builds = run(a.arch or [90, 80], which, a.every_config, a.quick)
    for b in builds:
        state = "; ".join(b.problems) or "ok"
        print(
            f"sm_{b.arch} {b.kernel:<72} regs {b.registers!s:>4} smem {b.shared_bytes!s:>6}"
            f" {','.join(b.mma) or '-':<18} {b.seconds:5.1f}s {state}"
        )
    failures = verdict(builds)
    for line in failures:
        print("FAIL", line)
    if a.json:
        with open(a.json, "w") as f:
            rows = [asdict(b) | {"problems": b.problems} for b in builds]
            json.dump({"builds": rows, "failures": failures}, f, indent=1)
    return 1 if failures else 0


def verdict(builds: list[Build]) -> list[str]:
    """What fails the check: any configuration that does not compile, and any kernel
    specialisation none of whose configurations is free of spills and fits in shared memory
    (one bad configuration in an autotune space is only a slow or skipped candidate)."""
    out = [f"sm_{b.arch} {b.kernel}: {b.error}" for b in builds if not b.ok]
    groups: dict[tuple[int, str], list[Build]] = {}
    for b in builds:
        groups.setdefault((b.arch, b.group), []).append(b)
    for (arch, group), bs in groups.items():
        if all(b.problems for b in bs):
            out.append(f"sm_{arch} {group}: no clean configuration ({bs[0].problems[0]})")
    return out


if __name__ == "__main__":
    sys.exit(main())
