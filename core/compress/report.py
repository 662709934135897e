"""Size and speed of a model, measured the same way for PyTorch modules and ONNX Runtime.

Parameters, bytes on disk, MACs (multiply-accumulates, from ``torch.utils.flop_counter``:
FLOPs / 2), and latency: median wall time after a warm-up, with a fixed thread count, at
batch 1 and batch N. :func:`compare` lays several variants side by side as a rich table and
JSON, with ratios against the first (the baseline).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass on ``example``."""
    from torch.utils.flop_counter import FlopCounterMode

    examples = example if isinstance(example, tuple) else (example,)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*examples)
    model.train(was)
    return counter.get_total_flops() // 2


def disk_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file, or of every file under a directory."""
    p = Path(path)
    return (
        p.stat().st_size
        if p.is_file()
        else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    )


def median_latency(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_latency(
    fns: dict[str, Callable[[], Any]], rounds: int = 6, block: int = 10, settle: int = 3
) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, measured in ``rounds`` that give every one a
    block of ``block`` timed calls (after ``settle`` untimed ones), in a rotating order. A slow
    spell of the machine then hits all peers alike instead of whichever ran during it, and the
    ratios between them are what a benchmark reports. Blocks, not single calls: each runtime
    keeps its worker threads spinning for a while after a call, which would slow the next
    peer's call (measured: alternating single calls made every peer 1.5-2x slower)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            for _ in range(settle):
                fn()
            for _ in range(block):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {n: statistics.median(t) for n, t in times.items()}


def torch_latency(
    model: nn.Module, example: torch.Tensor, threads: int | None = None, **kw: Any
) -> float:
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.inference_mode():
            return median_latency(lambda: model(example), **kw)
    finally:
        torch.set_num_threads(prev)


def ort_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with a fixed intra-op thread count."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_ort_session(
    path: str | os.PathLike[str], threads: int | None = None, fix: str = "re-export the model"
) -> Any:
    """:func:`ort_session` for serving: a corrupt or unreadable file is a ModelLoadError."""
    from core.artifacts import verify_model_files
    from core.errors import ModelLoadError

    verify_model_files(Path(path).parent, [Path(path).name])
    try:
        return ort_session(path, threads)
    except Exception as exc:  # ORT raises its own types for corrupt files
        raise ModelLoadError(
            f"model.onnx cannot be loaded ({str(exc)[:200]})", where=str(path), fix=fix
        ) from exc


def ort_latency(session: Any, example: np.ndarray, **kw: Any) -> float:
    name = session.get_inputs()[0].name
    return median_latency(lambda: session.run(None, {name: example}), **kw)


@dataclass
class VariantReport:
    """One model variant's measurements."""

    name: str
    params: int | None = None
    size_bytes: int | None = None
    macs: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # "b1", "b8", ...
    metrics: dict[str, float] = field(default_factory=dict)


def compare(variants: Sequence[VariantReport], title: str = "compression report") -> dict[str, Any]:
    """Print a rich table with ratios against the first variant; return the JSON form."""
    from rich.console import Console
    from rich.table import Table

    base = variants[0]
    table = Table(title=title)
    for col in ("variant", "params", "size MB", "MACs M", "latency ms", "metrics"):
        table.add_column(col)
    rows = []
    for v in variants:
        lat = ", ".join(
            f"{k} {ms:.3f}" + (f" ({base.latency_ms[k] / ms:.2f}x)" if k in base.latency_ms else "")
            for k, ms in v.latency_ms.items()
        )
        size = f"{v.size_bytes / 1e6:.2f}" if v.size_bytes else "-"
        if v.size_bytes and base.size_bytes and v is not base:
            size += f" ({base.size_bytes / v.size_bytes:.2f}x smaller)"
        macs = f"{v.macs / 1e6:.1f}" if v.macs else "-"
        if v.macs and base.macs and v is not base:
            macs += f" ({base.macs / v.macs:.2f}x fewer)"
        table.add_row(
            v.name,
            str(v.params or "-"),
            size,
            macs,
            lat,
            ", ".join(f"{k} {x:.4f}" for k, x in v.metrics.items()),
        )
        rows.append(asdict(v))
    Console().print(table)
    return {"title": title, "variants": rows}
