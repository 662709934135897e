"""Top-k gradient sparsification with error feedback: a CUDA kernel and its reference.

``sparsify_ef(grad, residual, k)`` sends about ``k`` entries of ``acc = grad + residual``
(1-D buckets) and keeps the rest in ``residual`` (updated in place) for the next step.

* CUDA (``csrc/topk_ef.cu``, built with ``torch.utils.cpp_extension`` on first use when
  CUDA and nvcc are present): the DGC recipe — estimate the magnitude threshold of the top
  ``k`` from a strided sample (``torch.topk`` on ~``sample`` values), then ONE pass over the
  bucket adds the residual, emits ``(index, value)`` above the threshold into ``k`` slots and
  writes the new residual. No sort and no second pass over the full bucket. Selected entries
  beyond the ``k`` slots stay in the residual (error feedback sends them later); unused slots
  are ``(0, 0.0)``, which decode to nothing.
* Elsewhere: :func:`sparsify_ef_reference`, exact ``torch.topk`` on ``|acc|``.

Both return ``(indices int32 (k,), values (k,), residual)``, the payload layout of the
``topk`` DDP hook (:mod:`core.train.comm_hooks`), which uses the kernel on GPU.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from core.errors import DependencyError

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "topk_ef.cu"


def sparsify_ef_reference(
    grad: torch.Tensor, residual: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact: the ``k`` largest ``|grad + residual|`` are sent; ``residual`` keeps the rest."""
    acc = grad + residual
    n = acc.numel()
    if k >= n:
        idx64 = torch.arange(n, device=acc.device)
    else:
        idx64 = torch.topk(acc.abs(), k, sorted=False).indices
    values = acc[idx64]
    acc[idx64] = 0
    residual.copy_(acc)
    return idx64.to(torch.int32), values, residual


def build_extension(build_dir: str | os.PathLike[str] | None = None, verbose: bool = False) -> Any:
    """Compile and load ``csrc/topk_ef.cu`` (needs nvcc and a CUDA build of PyTorch)."""
    from torch.utils.cpp_extension import load

    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        raise DependencyError(
            "nvcc not found; the CUDA sparsifier cannot be built",
            fix="install the CUDA toolkit (nvcc) or use the torch.topk fallback",
        )
    kw: dict[str, Any] = {}
    if build_dir is not None:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        kw["build_directory"] = str(build_dir)
    return load(
        name="dv_topk_ef",
        sources=[str(SOURCE)],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        verbose=verbose,
        **kw,
    )


@functools.cache
def _extension() -> Any | None:
    try:
        return build_extension()
    except Exception as exc:  # no toolkit, no GPU arch, compiler error: fall back, once
        log.warning("CUDA sparsifier unavailable (%s); using torch.topk", str(exc)[:200])
        return None


def sampled_threshold(acc_sample: torch.Tensor, ratio: float) -> float:
    """The magnitude above which a ``ratio`` share of the sample lies (DGC's estimate)."""
    ks = max(1, math.ceil(ratio * acc_sample.numel()))
    return float(torch.topk(acc_sample.abs().float(), ks, sorted=False).values.min())


def sparsify_ef(
    grad: torch.Tensor,
    residual: torch.Tensor,
    k: int,
    sample: int = 65536,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See the module docstring; ``backend``: auto (CUDA kernel on GPU), cuda or reference."""
    n = grad.numel()
    use_cuda = backend == "cuda" or (backend == "auto" and grad.is_cuda and k < n)
    ext = _extension() if use_cuda and grad.is_cuda else None
    if ext is None:
        return sparsify_ef_reference(grad, residual, k)
    stride = max(1, n // sample)
    thr = sampled_threshold(grad[::stride] + residual[::stride], k / n)
    idx, val, _count = ext.topk_ef(grad.contiguous(), residual, thr, k)
    return idx, val, residual
