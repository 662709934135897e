"""Fraud metrics on a time split: ranking, the alert budget, money, scenarios, and drift.

- ``pr_auc`` (average precision) and ``recall_at_1pct_fpr`` (the best recall whose false
  positive rate is at most 1%) rank the scores;
- at the model's own thresholds: precision, recall, alerts per day against the budget (mean
  and worst day), money caught (the share of fraud amount alerted on) and recall per
  scenario when the data says which scenario a fraud belongs to;
- ``psi``: the population stability index of each feature between a reference period (the
  training data) and recent data, with deciles of the reference (NaN its own bin). Above
  ``0.2`` a feature has drifted; the scheduled flow retrains on that.

Plots (``write_plots``): the PR curve, score distributions, alerts per day against the budget
and drift per feature. Not here: the scores themselves (``predict.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.atomic import atomic_write_text
from core.errors import DataError
from pipelines.finance_risk.features import profile, psi_against

PSI_DRIFT = 0.2  # a feature above this has drifted (the usual rule of thumb)


def pr_auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score))


def recall_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float = 0.01) -> float:
    """The highest recall among thresholds whose false positive rate is at most ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(y, score)
    ok = f <= fpr
    return float(t[ok].max()) if ok.any() else 0.0


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of one feature (deciles of ``reference``; NaN a bin)."""
    return psi_against(profile(reference, bins), recent)


def drift(profiles: dict[str, dict[str, list[float]]], recent: pl.DataFrame) -> dict[str, float]:
    """PSI of every profiled feature of a recent features frame."""
    if recent.height == 0:
        raise DataError("drift needs recent rows", fix="give a non-empty period")
    return {n: round(psi_against(p, recent[n].to_numpy()), 5) for n, p in profiles.items()}


@dataclass
class EvalReport:
    """What ``evaluate`` measured on one scored period."""

    rows: int
    frauds: int
    days: float
    pr_auc: float
    recall_at_1pct_fpr: float
    precision_at_budget: float
    recall_at_budget: float
    alerts_per_day: float
    alerts_per_day_max: float
    budget_per_day: float
    money_caught: float  # share of fraud amount alerted on
    per_scenario_recall: dict[str, float] = field(default_factory=dict)
    per_segment_alerts_per_day: dict[str, float] = field(default_factory=dict)
    drift_psi: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "metrics.json", json.dumps(self.summary(), indent=2))
        return out / "metrics.json"


def evaluate_scores(
    scored: pl.DataFrame,
    budget_per_day: float,
    segment_by: str | None = None,
    drift_psi: dict[str, float] | None = None,
) -> EvalReport:
    """Metrics of a scored frame: columns ``label``, ``score`` (probability), ``alert``,
    ``amount``, ``timestamp``, optionally ``scenario`` and the segment column."""
    s = scored.filter(pl.col("label").is_not_null())
    if s.height == 0:
        raise DataError("no labelled rows to evaluate", fix="evaluate on data with labels")
    y = s["label"].to_numpy().astype(np.int64)
    if y.sum() == 0 or y.sum() == len(y):
        raise DataError(
            f"evaluation needs frauds and legitimate rows ({int(y.sum())} of {len(y)} are fraud)",
            fix="evaluate a longer period",
        )
    p = s["score"].to_numpy()
    alert = s["alert"].to_numpy().astype(bool)
    amount = s["amount"].to_numpy()
    ts = s["timestamp"]
    days = max((ts.max() - ts.min()).total_seconds() / 86400, 1.0)
    per_day = s.group_by(pl.col("timestamp").dt.date()).agg(pl.col("alert").sum())["alert"]
    tp = int((alert & (y == 1)).sum())
    per_scenario = {}
    if "scenario" in s.columns:
        for name, g in s.filter(pl.col("label") == 1).group_by("scenario"):
            per_scenario[str(name[0])] = round(float(g["alert"].mean()), 4)
    per_segment = {}
    if segment_by and segment_by in s.columns:
        for name, g in s.group_by(segment_by):
            per_segment[str(name[0])] = round(float(g["alert"].sum()) / days, 3)
    d = drift_psi or {}
    return EvalReport(
        rows=len(y),
        frauds=int(y.sum()),
        days=round(days, 2),
        pr_auc=round(pr_auc(y, p), 5),
        recall_at_1pct_fpr=round(recall_at_fpr(y, p, 0.01), 5),
        precision_at_budget=round(tp / max(int(alert.sum()), 1), 5),
        recall_at_budget=round(tp / int(y.sum()), 5),
        alerts_per_day=round(float(alert.sum()) / days, 3),
        alerts_per_day_max=float(per_day.max() or 0),
        budget_per_day=budget_per_day,
        money_caught=round(float(amount[alert & (y == 1)].sum() / amount[y == 1].sum()), 5),
        per_scenario_recall=dict(sorted(per_scenario.items())),
        per_segment_alerts_per_day=dict(sorted(per_segment.items())),
        drift_psi=d,
        drifted=sorted(k for k, v in d.items() if v > PSI_DRIFT),
    )


def write_plots(
    scored: pl.DataFrame, report: EvalReport, out_dir: str | os.PathLike[str]
) -> list[Path]:
    """PR curve, score distributions, alerts per day against the budget, drift per feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = scored.filter(pl.col("label").is_not_null())
    y, p = s["label"].to_numpy(), s["score"].to_numpy()
    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec)
    ax.set(xlabel="recall", ylabel="precision", title=f"PR curve (AP {report.pr_auc:.3f})")
    paths.append(_save(fig, out / "pr_curve.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins, alpha=0.6, label="legitimate", density=True, log=True)
    ax.hist(p[y == 1], bins, alpha=0.6, label="fraud", density=True, log=True)
    ax.set(xlabel="score", title="score distributions")
    ax.legend()
    paths.append(_save(fig, out / "scores.png"))
    per_day = (
        s.group_by(pl.col("timestamp").dt.date().alias("day"))
        .agg(pl.col("alert").sum())
        .sort("day")
    )
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(per_day.height), per_day["alert"].to_numpy())
    ax.axhline(report.budget_per_day, color="red", label="budget")
    ax.set(xlabel="day", ylabel="alerts", title="alerts per day")
    ax.legend()
    paths.append(_save(fig, out / "alerts_per_day.png"))
    if report.drift_psi:
        fig, ax = plt.subplots(figsize=(6, 0.22 * len(report.drift_psi) + 1))
        names = list(report.drift_psi)
        ax.barh(names, [report.drift_psi[n] for n in names])
        ax.axvline(PSI_DRIFT, color="red")
        ax.set(xlabel="PSI", title="feature drift")
        paths.append(_save(fig, out / "drift.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
