"""Per-layer quantization sensitivity, mixed precision, and accuracy-aware quantization.

* :func:`layer_sensitivity` quantizes one layer at a time (Conv/Gemm/MatMul nodes of the ONNX
  graph, everything else in float) and measures the metric drop against fp32: the layers
  whose INT8 version costs the most.
* :func:`mixed_precision` keeps the ``k`` most sensitive layers in float.
* :func:`quantize_to_target` searches for a quantization that meets a tolerable metric loss:
  first calibration method x weight granularity (cheapest first), then, from the best of
  those, layers are returned to float in order of sensitivity until the target is met. A
  trial whose model is byte-identical to an earlier one reuses that evaluation
  (``same_model_as``). It reports every trial and what was chosen; if nothing meets the target it raises
  :class:`AccuracyTargetError` naming the best it found.

``evaluate(path) -> float`` scores an ONNX model on held-out data (higher is better).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import sha256_file
from core.compress.quantize import Int8StaticConfig, QuantizedModel, _preprocess, quantize
from core.errors import DVError

Evaluate = Callable[[Path], float]
QUANTIZABLE = ("Conv", "Gemm", "MatMul")


class AccuracyTargetError(DVError):
    """No quantization within the search met the accuracy target."""


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    metric: float
    drop: float  # fp32 metric minus the metric with only this layer in INT8


def quantizable_nodes(onnx_path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the graph's Conv/Gemm/MatMul nodes, in graph order."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [(n.name, n.op_type) for n in graph.node if n.op_type in QUANTIZABLE]


def layer_sensitivity(
    onnx_path: str | os.PathLike[str],
    calibration: list[np.ndarray],
    evaluate: Evaluate,
    config: Int8StaticConfig | None = None,
) -> list[LayerSensitivity]:
    """Sensitivity of every quantizable layer, most sensitive first."""
    config = config or Int8StaticConfig()
    with tempfile.TemporaryDirectory(prefix="dv-sens-") as tmpd:
        tmp = Path(tmpd)
        pre = _preprocess(Path(onnx_path), tmp / "pre.onnx")
        base = evaluate(pre)
        out = []
        for name, op in quantizable_nodes(pre):
            cfg = dataclasses.replace(config, include_nodes=(name,), exclude_nodes=())
            q = quantize(pre, cfg, out=tmp / "one.onnx", calibration=calibration)
            m = evaluate(q.path)
            out.append(LayerSensitivity(name, op, m, base - m))
    return sorted(out, key=lambda s: s.drop, reverse=True)


def mixed_precision(
    config: Int8StaticConfig, sensitivity: list[LayerSensitivity], keep_float: int
) -> Int8StaticConfig:
    """``config`` with the ``keep_float`` most sensitive layers excluded from quantization."""
    keep = tuple(s.node for s in sensitivity[:keep_float])
    return dataclasses.replace(
        config, exclude_nodes=tuple(dict.fromkeys(config.exclude_nodes + keep))
    )


@dataclass
class AccuracyAwareResult:
    """The chosen quantization and the search that found it."""

    model: QuantizedModel
    config: Int8StaticConfig
    fp32_metric: float
    metric: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def relative_drop(self) -> float:
        return (self.fp32_metric - self.metric) / max(abs(self.fp32_metric), 1e-12)


def quantize_to_target(
    onnx_path: str | os.PathLike[str],
    calibration: Iterable[Any],
    evaluate: Evaluate,
    *,
    out: str | os.PathLike[str],
    max_relative_drop: float = 0.01,
    max_float_layers: int | None = None,
) -> AccuracyAwareResult:
    """Find a static INT8 quantization whose metric is within ``max_relative_drop`` of fp32."""
    calibration = list(calibration)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="dv-aaq-") as tmpd:
        tmp = Path(tmpd)
        pre = _preprocess(Path(onnx_path), tmp / "pre.onnx")
        fp32 = evaluate(pre)
        floor = fp32 - max_relative_drop * abs(fp32)
        trials: list[dict[str, Any]] = []

        seen: dict[str, int] = {}  # model digest -> index of the trial that evaluated it

        def trial(cfg: Int8StaticConfig, stage: str) -> tuple[float, Path]:
            path = tmp / f"trial{len(trials)}.onnx"
            q = quantize(pre, cfg, out=path, calibration=calibration)
            digest = sha256_file(q.path)
            same = seen.get(digest)
            # two configurations that give the same bytes need one evaluation, not two
            m = trials[same]["metric"] if same is not None else evaluate(q.path)
            seen.setdefault(digest, len(trials))
            trials.append(
                {
                    "stage": stage,
                    "calibration": cfg.calibration,
                    "per_channel": cfg.per_channel,
                    "float_layers": list(cfg.exclude_nodes),
                    "metric": m,
                    "meets_target": m >= floor,
                    "same_model_as": same,
                }
            )
            return m, q.path

        def done(cfg: Int8StaticConfig, m: float, path: Path) -> AccuracyAwareResult:
            os.replace(path, out)
            model = QuantizedModel(
                out, dataclasses.asdict(cfg), cfg.resolved_reduce_range(), list(cfg.exclude_nodes)
            )
            return AccuracyAwareResult(model, cfg, fp32, m, trials)

        best: tuple[float, Int8StaticConfig, Path] | None = None
        for per_channel in (True, False):
            for method in ("minmax", "mse", "percentile", "entropy"):
                cfg = Int8StaticConfig(calibration=method, per_channel=per_channel)
                m, path = trial(cfg, "calibration")
                if m >= floor:
                    return done(cfg, m, path)
                if best is None or m > best[0]:
                    best = (m, cfg, path)
        assert best is not None
        sens = (
            layer_sensitivity(pre, calibration, evaluate, best[1]) if max_float_layers != 0 else []
        )
        limit = len(sens) if max_float_layers is None else min(max_float_layers, len(sens))
        for k in range(1, limit + 1):
            cfg = mixed_precision(best[1], sens, k)
            m, path = trial(cfg, "mixed precision")
            if m >= floor:
                return done(cfg, m, path)
            if m > best[0]:
                best = (m, cfg, path)
    raise AccuracyTargetError(
        f"no INT8 quantization met the target: best metric {best[0]:.4f} vs fp32 {fp32:.4f} "
        f"(allowed drop {max_relative_drop:.1%}) after {len(trials)} trials",
        where=str(onnx_path),
        fix="allow a larger drop, add calibration data, or fine-tune with QAT",
    )
