"""The finance_risk flows: features on a Dask LocalCluster equal one process exactly; a real
flow run registers and promotes; the daily flow retrains only when the data says so."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from core.registry import ModelRegistry
from flows.finance_risk import (
    dask_features,
    finance_risk_daily,
    finance_risk_flow,
    gate,
    retrain_decision,
)
from flows.tasks import ParityGateError
from pipelines.finance_risk.config import FeatureConfig
from pipelines.finance_risk.features import compute_features
from pipelines.finance_risk.synth import generate
from tests.pipelines.finance_risk.conftest import awkward, small_cfg, stream_cfg, tiny_train_cfg


def test_gate_names_what_failed():
    assert gate.fn({"passed": True, "reasons": []})["passed"]
    with pytest.raises(ParityGateError, match="differs from its source"):
        gate.fn({"passed": False, "reasons": ["an export differs from its source by 0.1"]})


@pytest.mark.slow
@pytest.mark.multiprocess
def test_features_on_a_dask_cluster_equal_one_process(prefect_harness):
    frame = awkward(generate(small_cfg(n_users=120, days=40)))
    cfg = FeatureConfig()
    one = compute_features(frame, cfg)
    many = dask_features(frame, cfg, partitions=3, n_workers=2)
    assert many.equals(one)  # same rows, same order, same bits


@pytest.mark.slow
def test_flow_registers_promotes_and_daily_retrains_only_on_change(
    prefect_harness, tmp_path, monkeypatch
):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    data = tmp_path / "tx.parquet"
    tcfg = tiny_train_cfg(data, tmp_path / "unused")
    s = finance_risk_flow(
        data=str(data),
        synth=stream_cfg(),
        train_cfg=tcfg,
        run_dir=str(tmp_path / "run"),
        model_name="fr-test",
    )
    assert s["alias"] == "production" and s["version"] == "1"
    assert 0 < s["test"]["pr_auc"] <= 1 and s["rows"] == pl.read_parquet(data).height
    mv = ModelRegistry().find("fr-test")
    assert mv is not None and (mv.path / "boosting.onnx").is_file()
    # the daily check: unchanged data shows no drift in amounts; a week of amounts five times
    # larger does, and the daily flow then retrains and registers a new version
    frame = pl.read_parquet(data)
    same = retrain_decision.fn(str(mv.path), frame)
    assert "amount" not in same["drifted"] and same["new_fraud_labels"] > 0
    end = frame["timestamp"].max()
    shifted = frame.with_columns(
        amount=pl.when(pl.col("timestamp") > end - dt.timedelta(days=7))
        .then(pl.col("amount") * 5)
        .otherwise(pl.col("amount"))
    )
    moved = retrain_decision.fn(str(mv.path), shifted)
    assert "amount" in moved["drifted"] and moved["retrain"]
    shifted.write_parquet(tmp_path / "moved.parquet")
    d = finance_risk_daily(
        data=str(tmp_path / "moved.parquet"),
        model_name="fr-test",
        train_cfg=tcfg,
        run_dir=str(tmp_path / "run2"),
    )
    assert d["retrained"] and "drift in" in d["reason"] and d["version"] == "2"
