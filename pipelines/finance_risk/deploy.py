"""The ensemble in ONNX Runtime, batch scoring of a features frame, INT8 and the deployment gate.

A model directory (``train.py``) holds ``boosting.onnx``, ``isolation.onnx``,
``sequence.onnx`` (optional) and the head in ``config.json``. :class:`Ensemble` opens them in
ONNX Runtime and scores feature rows: base scores -> stacked score -> calibrated probability ->
the segment's decision, plus per-feature contributions (below). :func:`score_frame` scores a
whole features frame (batch); the online scorer (``predict.py``) calls the same
:meth:`Ensemble.score` on one row.

Contributions explain the boosting model, the ensemble's main input: feature ``j``'s
contribution is the change of the boosting logit when ``j`` is replaced by its training
median (one ONNX call of ``1 + n_features`` rows). Positive means it pushed toward fraud.

:func:`deploy` quantizes the GRU (dynamic INT8 of its MatMul/Gemm weights, ONNX Runtime),
keeps it only where it pays (faster per event on this machine and the test PR-AUC within
``max_pr_auc_drop``), and writes a deployment directory with the parity report. Not here:
training, metrics, the HTTP predictor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.artifacts import read_config, verify_model_files, write_manifest, write_model_dir
from core.compress.report import load_ort_session
from core.errors import ConfigError, DataError, ModelLoadError
from pipelines.finance_risk.config import FeatureConfig
from pipelines.finance_risk.evaluate import PSI_DRIFT, EvalReport, drift, evaluate_scores
from pipelines.finance_risk.features import (
    compute_features,
    event_vectors,
    gather_sequences,
    sequence_index,
)
from pipelines.finance_risk.model import Head, isolation_input, logit
from pipelines.finance_risk.train import with_segment

log = logging.getLogger(__name__)
FILES = ("boosting.onnx", "isolation.onnx")


def feature_config(config: dict[str, Any]) -> FeatureConfig:
    return FeatureConfig(**config["feature_config"])


class Ensemble:
    """The ONNX Runtime sessions of a model directory and its head."""

    def __init__(self, model_dir: str | os.PathLike[str], threads: int | None = 1) -> None:
        self.model_dir = Path(model_dir)
        config = read_config(self.model_dir)
        if config.get("task") != "finance_risk":
            raise ModelLoadError(
                f"this is not a finance_risk model (task {config.get('task')!r})",
                where=str(self.model_dir),
                fix="point to a directory written by finance-risk train",
            )
        self.config = config
        self.names: list[str] = list(config["features"])
        self.feature_cfg = feature_config(config)
        self.head = Head.from_json(config["head"])
        self.medians = np.array([np.nan if m is None else m for m in config["medians"]], np.float32)
        seq_file = config.get("sequence_file", "sequence.onnx")
        files = [*FILES, *([seq_file] if "sequence" in self.head.used else [])]
        missing = [f for f in files if not (self.model_dir / f).is_file()]
        if missing:
            raise ModelLoadError(
                f"model files missing: {missing}", where=str(self.model_dir), fix="re-run train"
            )
        verify_model_files(self.model_dir, files)
        self.boosting = load_ort_session(self.model_dir / "boosting.onnx", threads)
        self.isolation = load_ort_session(self.model_dir / "isolation.onnx", threads)
        self.sequence = (
            load_ort_session(self.model_dir / seq_file, threads)
            if "sequence" in self.head.used
            else None
        )

    @property
    def segment_by(self) -> str | None:
        return self.head.segment_by

    def base_scores(self, x: np.ndarray, seq: np.ndarray | None) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        out = {
            "boosting": logit(self.boosting.run(None, {"input": x})[1][:, 1]),
            "isolation": -np.asarray(
                self.isolation.run(None, {"input": isolation_input(x)})[1], np.float64
            ).ravel(),
        }
        if self.sequence is not None:
            if seq is None:
                raise ValueError("this model needs the event sequences")
            out["sequence"] = np.asarray(
                self.sequence.run(None, {"input": seq})[0], np.float64
            ).ravel()
        return out

    def score(
        self, x: np.ndarray, seq: np.ndarray | None, segments: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(probability, stacked score, alert)`` of feature rows ``x`` ``(n, F)``."""
        base = self.base_scores(x, seq)
        s = self.head.stack(base)
        return self.head.probability(base, segments), s, self.head.decide(s, segments)

    def contributions(self, x: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` features of one row by their effect on the boosting logit."""
        row = np.asarray(x, np.float32).reshape(1, -1)
        probes = np.repeat(row, len(self.names) + 1, axis=0)
        idx = np.arange(len(self.names))
        probes[idx + 1, idx] = self.medians
        z = logit(self.boosting.run(None, {"input": probes})[1][:, 1])
        delta = z[0] - z[1:]
        order = np.argsort(-np.abs(delta))[:top]
        return [(self.names[i], round(float(delta[i]), 4)) for i in order if delta[i] != 0]


def model_features(ens: Ensemble, frame: pl.DataFrame) -> pl.DataFrame:
    """A canonical transactions table's features by the model's own definitions, with the
    model's segment column joined (what :func:`score_frame` takes)."""
    feats = compute_features(frame, ens.feature_cfg, tuple(ens.config.get("extra_features", ())))
    return with_segment(feats, frame, ens.segment_by)


def score_frame(ens: Ensemble, feats: pl.DataFrame, batch: int = 65536) -> pl.DataFrame:
    """Score every row of a features frame (``compute_features`` output, plus the segment
    column when the model has one): adds ``score``, ``stack`` and ``alert``."""
    x = feats.select(ens.names).to_numpy()
    seq_vec = seq_idx = None
    if ens.sequence is not None:
        seq_vec = event_vectors(x, ens.names)
        seq_idx = sequence_index(feats, ens.feature_cfg.sequence_length)
    seg_col = ens.segment_by
    segs = (
        feats[seg_col].cast(pl.String).fill_null("").to_numpy()
        if seg_col and seg_col in feats.columns
        else None
    )
    prob, stack, alert = [], [], []
    for i in range(0, feats.height, batch):
        rows = np.arange(i, min(i + batch, feats.height))
        seq = gather_sequences(seq_vec, seq_idx, rows) if seq_vec is not None else None
        p, s, a = ens.score(x[rows], seq, segs[rows] if segs is not None else None)
        prob.append(p)
        stack.append(s)
        alert.append(a)
    cat = lambda xs: np.concatenate(xs) if xs else np.empty(0)  # noqa: E731
    return feats.with_columns(
        score=pl.Series(cat(prob)),
        stack=pl.Series(cat(stack)),
        alert=pl.Series(cat(alert).astype(bool)),
    )


def test_rows(
    feats: pl.DataFrame, config: dict[str, Any], since: dt.datetime | None = None
) -> pl.DataFrame:
    """The rows of a features frame after the model's training data: from ``since``, by
    default from the model's ``as_of`` (the first instant whose labels it did not know)."""
    if since is None:
        since = dt.datetime.fromisoformat(config["train_metrics"]["split"]["as_of"])
    return feats.filter(pl.col("timestamp") >= since)


def evaluate_model(
    model_dir: str | os.PathLike[str],
    feats: pl.DataFrame,
    since: dt.datetime | None = None,
) -> tuple[EvalReport, pl.DataFrame]:
    """Score the rows of ``feats`` from ``since`` (default: the model's as_of) and measure
    them, with feature drift against the model's training data."""
    ens = Ensemble(model_dir)
    # the whole frame is scored: a test row's event sequence reaches back before ``since``
    scored = test_rows(score_frame(ens, feats), ens.config, since)
    if scored.height == 0:
        raise DataError(
            "no rows after the model's training period",
            where=str(model_dir),
            fix="give newer data or pass since",
        )
    psi = drift(ens.config.get("drift_reference", {}), scored)
    report = evaluate_scores(scored, ens.head.budget_per_day, ens.head.segment_by, psi)
    return report, scored


def retrain_decision(
    model_dir: str | os.PathLike[str],
    feats: pl.DataFrame,
    recent_days: float = 7.0,
    min_new_frauds: int = 50,
) -> dict[str, Any]:
    """Whether new data calls for retraining the model: a feature of the last
    ``recent_days`` drifted (PSI over ``PSI_DRIFT`` against the training data), or at least
    ``min_new_frauds`` fraud labels became known after the model's ``as_of`` (a new label
    window). Returns the decision with its reasons and figures."""
    config = read_config(model_dir)
    end = feats["timestamp"].max()
    recent = feats.filter(pl.col("timestamp") >= end - dt.timedelta(days=recent_days))
    psi = drift(config.get("drift_reference", {}), recent)
    drifted = sorted(k for k, v in psi.items() if v > PSI_DRIFT)
    as_of = dt.datetime.fromisoformat(config["train_metrics"]["split"]["as_of"])
    new = (
        feats.filter(
            (pl.col("label") == 1) & (pl.col("label_time") > as_of) & (pl.col("label_time") <= end)
        ).height
        if "label_time" in feats.columns
        else 0
    )
    reasons = []
    if drifted:
        reasons.append(f"drift in {', '.join(drifted[:5])}")
    if new >= min_new_frauds:
        reasons.append(f"{new} new fraud labels since {as_of:%Y-%m-%d}")
    return {
        "retrain": bool(reasons),
        "reason": "; ".join(reasons) or f"no drift, {new} new fraud labels (< {min_new_frauds})",
        "drifted": drifted,
        "new_fraud_labels": new,
        "psi": psi,
    }


@dataclass
class DeployConfig:
    """Quantization of the GRU and the gate."""

    max_pr_auc_drop: float = 0.005  # INT8 may lose at most this much test PR-AUC
    min_speedup: float = 1.1  # INT8 must be at least this much faster per event to be kept
    threads: int = 1  # ONNX Runtime intra-op threads when timing
    max_parity: float = 1e-4  # largest ONNX-vs-source difference of any exported model

    def __post_init__(self) -> None:
        if self.max_pr_auc_drop < 0 or self.min_speedup <= 0:
            raise ConfigError("max_pr_auc_drop >= 0 and min_speedup > 0", fix="use the defaults")


@dataclass
class DeployReport:
    out_dir: str
    sequence_variant: str  # "fp32" or "int8"
    int8_speedup: float | None
    int8_pr_auc_drop: float | None
    int8_max_abs_diff: float | None
    parity: dict[str, float] = field(default_factory=dict)
    fp32: dict[str, Any] = field(default_factory=dict)
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def _per_event_ms(sess: Any, x: np.ndarray, n: int = 300) -> float:
    for i in range(20):
        sess.run(None, {"input": x[i % len(x) : i % len(x) + 1]})
    t = time.perf_counter()
    for i in range(n):
        sess.run(None, {"input": x[i % len(x) : i % len(x) + 1]})
    return (time.perf_counter() - t) / n * 1e3


def deploy(
    model_dir: str | os.PathLike[str],
    feats: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    cfg: DeployConfig | None = None,
    since: dt.datetime | None = None,
) -> DeployReport:
    """Quantize the GRU where it pays, check parity and the gate on the rows of ``feats``
    (a labelled features frame) from ``since`` (default: the model's as_of), write the
    deployment directory."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cfg = cfg or DeployConfig()
    src = Path(model_dir)
    out = Path(out_dir)
    ens = Ensemble(src)
    ref, _ = evaluate_model(src, feats, since)
    metrics = json.loads((src / "metrics.json").read_text())
    report = DeployReport(
        out_dir=str(out),
        sequence_variant="fp32",
        int8_speedup=None,
        int8_pr_auc_drop=None,
        int8_max_abs_diff=None,
        parity=metrics.get("export_parity_max_abs", {}),
        fp32={"pr_auc": ref.pr_auc, "recall_at_1pct_fpr": ref.recall_at_1pct_fpr},
    )
    with write_model_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.name != "checksums.json":
                shutil.copy2(f, tmp / f.name)
        config = dict(ens.config)
        if ens.sequence is not None:
            quantize_dynamic(
                str(src / "sequence.onnx"),
                str(tmp / "sequence.int8.onnx"),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "GRU"],
            )
            from core.compress.report import ort_session

            head_rows = test_rows(feats, ens.config, since).head(2000)
            x = gather_sequences(
                event_vectors(head_rows.select(ens.names).to_numpy(), ens.names),
                sequence_index(head_rows, ens.feature_cfg.sequence_length),
                np.arange(head_rows.height),
            )
            s32 = ort_session(src / "sequence.onnx", cfg.threads)
            s8 = ort_session(tmp / "sequence.int8.onnx", cfg.threads)
            diff = float(
                np.abs(s32.run(None, {"input": x})[0] - s8.run(None, {"input": x})[0]).max()
            )
            speed = _per_event_ms(s32, x) / _per_event_ms(s8, x)
            (tmp / "config.json").write_text(
                json.dumps({**config, "sequence_file": "sequence.int8.onnx"})
            )
            write_manifest(tmp)  # the candidate is read like any model directory
            int8, _ = evaluate_model(tmp, feats, since)
            drop = ref.pr_auc - int8.pr_auc
            report.int8_speedup = round(speed, 3)
            report.int8_pr_auc_drop = round(drop, 5)
            report.int8_max_abs_diff = diff
            if speed >= cfg.min_speedup and drop <= cfg.max_pr_auc_drop:
                report.sequence_variant = "int8"
                config["sequence_file"] = "sequence.int8.onnx"
            else:
                (tmp / "sequence.int8.onnx").unlink()
                log.info(
                    "INT8 GRU not kept: %.2fx per event, PR-AUC drop %.4f (needs >= %.2fx and <= %.4f)",
                    speed,
                    drop,
                    cfg.min_speedup,
                    cfg.max_pr_auc_drop,
                )
        worst = max(report.parity.values(), default=0.0)
        if worst > cfg.max_parity:
            report.passed = False
            report.reasons.append(
                f"an export differs from its source by {worst:.3g} (> {cfg.max_parity:g})"
            )
        config["deploy"] = report.summary()
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "deploy.json").write_text(json.dumps(report.summary(), indent=2))
    return report
