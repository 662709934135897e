"""Fraud metrics on constructed scores whose answers are known."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from core.errors import DataError
from pipelines.finance_risk.evaluate import (
    drift,
    evaluate_scores,
    profile,
    psi,
    recall_at_fpr,
    write_plots,
)


def test_recall_at_one_percent_fpr():
    y = np.r_[np.ones(10), np.zeros(1000)]
    s = np.r_[np.linspace(0.9, 0.5, 10), np.linspace(0.0, 0.6, 1000)]
    # 0.5..0.6 holds 16 legitimate scores (1.6% FPR) above the lowest fraud: not all reachable
    r = recall_at_fpr(y, s, 0.01)
    assert 0.6 <= r < 1.0
    assert recall_at_fpr(y, np.r_[np.ones(10), np.zeros(1000)], 0.01) == 1.0


def test_psi_is_zero_for_the_same_distribution_and_flags_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, rng.normal(size=20_000)) < 0.01
    assert psi(ref, rng.normal(0.8, 1, 20_000)) > 0.2
    with_nan = np.where(rng.random(20_000) < 0.3, np.nan, rng.normal(size=20_000))
    assert psi(ref, with_nan) > 0.2  # a column that starts missing has drifted
    prof = {"a": profile(ref), "b": profile(ref)}
    recent = pl.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(3, 1, 5000)})
    d = drift(prof, recent)
    assert d["a"] < 0.05 < 0.2 < d["b"]
    with pytest.raises(DataError, match="recent rows"):
        drift(prof, recent.head(0))


def _scored(n_days=10):
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for d in range(n_days):
        for i in range(100):
            fraud = i < 2
            rows.append(
                {
                    "timestamp": t0 + dt.timedelta(days=d, minutes=i),
                    "label": int(fraud),
                    "score": 0.9 if fraud else i / 1000,
                    "alert": fraud or i == 99,
                    "amount": 100.0 if fraud else 10.0,
                    "scenario": "card_testing"
                    if fraud and i == 0
                    else ("bust_out" if fraud else "none"),
                    "channel": "pos" if i % 2 else "online",
                }
            )
    return pl.DataFrame(rows)


def test_budget_money_and_scenario_figures(tmp_path):
    s = _scored()
    r = evaluate_scores(
        s, budget_per_day=3.0, segment_by="channel", drift_psi={"x": 0.5, "y": 0.01}
    )
    assert r.frauds == 20 and r.rows == 1000 and r.pr_auc == 1.0
    assert r.precision_at_budget == pytest.approx(20 / 30, abs=1e-5) and r.recall_at_budget == 1.0
    assert r.alerts_per_day == pytest.approx(30 / r.days, abs=1e-3) and r.alerts_per_day_max == 3
    assert r.money_caught == 1.0 and r.per_scenario_recall == {"bust_out": 1.0, "card_testing": 1.0}
    assert r.drifted == ["x"] and set(r.per_segment_alerts_per_day) == {"online", "pos"}
    paths = write_plots(s, r, tmp_path)
    assert {p.name for p in paths} == {
        "pr_curve.png",
        "scores.png",
        "alerts_per_day.png",
        "drift.png",
    }
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(DataError, match="frauds and legitimate rows"):
        evaluate_scores(s.with_columns(label=pl.lit(0)), 3.0)
