"""Shared finance_risk fixtures: a small generated stream with the awkward cases added."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipelines.finance_risk.config import SynthConfig
from pipelines.finance_risk.synth import generate


def small_cfg(**kw) -> SynthConfig:
    base = dict(n_users=150, days=45, n_merchants=300, fraud_users=0.08)
    base.update(kw)
    return SynthConfig(**base)


def awkward(df: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """``df`` plus ties (one user, several transactions at one instant, at the same and at
    other merchants), single-transaction users, a user with a 40-day gap, missing optional
    values, then shuffled (out-of-order input)."""
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2024, 1, 10, 12, 0, tzinfo=dt.UTC)
    label_t = t0 + dt.timedelta(days=3)
    rows = []

    def add(tid, user, t, amount, merchant="m00001", device="dz", country="US", label=0):
        rows.append(
            {
                "transaction_id": tid,
                "user_id": user,
                "timestamp": t,
                "amount": amount,
                "merchant_id": merchant,
                "merchant_category": "grocery",
                "device_id": device,
                "country": country,
                "channel": "pos",
                "label": label,
                "label_time": t + dt.timedelta(days=2),
                "scenario": "none",
            }
        )

    for i in range(4):  # a tie: four at one instant, then one more
        add(f"tie{i}", "u_tie", t0, 10.0 * (i + 1), merchant=f"m0000{i % 2}", device=f"dt{i}")
    add("tie4", "u_tie", t0 + dt.timedelta(minutes=5), 7.0)
    add("tie5", "u_tie", t0 + dt.timedelta(minutes=5), 9.0, label=1)
    add("single1", "u_single1", t0, 42.0)
    add("single2", "u_single2", label_t, 13.0, merchant=None, device=None, country=None)
    for k, days in enumerate((0, 1, 41, 41.5, 42)):  # a gap longer than every window
        add(f"gap{k}", "u_gap", t0 + dt.timedelta(days=days), 20.0 + k)
    extra = pl.DataFrame(rows, schema=df.schema)
    out = pl.concat([df, extra])
    return out[rng.permutation(out.height)]


@pytest.fixture(scope="session")
def stream() -> pl.DataFrame:
    """A small generated stream (canonical columns) with the awkward cases, shuffled."""
    return awkward(generate(small_cfg()))


def tiny_train_cfg(data, out, **kw):
    """A training run that takes seconds: few boosting rounds, two GRU epochs, short split."""
    from pipelines.finance_risk.train import TrainConfig

    base = dict(
        data=str(data),
        out_dir=str(out),
        model={"boosting_iter": 40, "isolation_trees": 8, "gru_hidden": 8},
        split={"test_days": 15.0, "maturity_days": 8.0, "valid_days": 15.0, "burn_in_days": 10.0},
        trainer={"max_epochs": 2, "progress": "off"},
        alert_budget_per_day=5.0,
        max_negatives=20_000,
        max_sequence_rows=4_000,
    )
    base.update(kw)
    return TrainConfig(**base)


def stream_cfg(**kw) -> SynthConfig:
    """The trained fixture's stream: 70 days, enough frauds in every period."""
    base = dict(n_users=500, days=70, n_merchants=400, fraud_users=0.1, label_delay_days=(1.0, 6.0))
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small trained model directory and the stream it was trained on."""
    from pipelines.finance_risk.synth import write_dataset
    from pipelines.finance_risk.train import train

    root = tmp_path_factory.mktemp("fr_model")
    data, _ = write_dataset(root / "tx.parquet", stream_cfg())
    metrics, out = train(tiny_train_cfg(data, root / "model"))
    return {"data": data, "model": out, "metrics": metrics, "root": root}
