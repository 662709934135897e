"""Training: the time split respects the label delay; the model directory, its parity and its
thresholds; models from elsewhere and corrupt files are refused."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from core.artifacts import write_manifest
from core.errors import DataError, ModelLoadError
from pipelines.finance_risk.config import FeatureConfig
from pipelines.finance_risk.deploy import Ensemble, evaluate_model, model_features
from pipelines.finance_risk.features import compute_features
from pipelines.finance_risk.synth import generate
from pipelines.finance_risk.train import SplitConfig, TrainConfig, _thresholds, time_split
from tests.pipelines.finance_risk.conftest import stream_cfg

pytestmark = pytest.mark.xdist_group("finance_risk_model")


def test_time_split_uses_only_labels_known_on_the_training_day():
    feats = compute_features(generate(stream_cfg(n_users=200)), FeatureConfig())
    cfg = SplitConfig(test_days=15, maturity_days=8, valid_days=15, burn_in_days=10)
    sp = time_split(feats, cfg)
    ts, lt = feats["timestamp"], feats["label_time"]
    fit = np.concatenate([sp.train, sp.valid])
    assert (lt.gather(fit) <= sp.as_of).all()  # no label from the future trains anything
    assert ts.gather(sp.valid).min() >= sp.valid_start
    assert ts.gather(sp.valid).max() < sp.as_of - dt.timedelta(days=8)  # maturity gap
    assert ts.gather(sp.train).max() < sp.valid_start
    assert ts.gather(sp.train).min() >= ts.min() + dt.timedelta(days=10)  # burn-in
    assert ts.gather(sp.test).min() >= sp.as_of
    # rows whose labels were still unknown on as_of are left out, not taken as legitimate
    late = feats.filter((pl.col("timestamp") < sp.as_of) & (pl.col("label_time") > sp.as_of))
    assert late.height > 0 and not set(late["transaction_id"]) & set(
        feats["transaction_id"].gather(fit)
    )


def test_split_refuses_streams_without_labels_or_too_short():
    feats = compute_features(generate(stream_cfg(n_users=100, days=30)), FeatureConfig())
    with pytest.raises(DataError, match="training period has 0 labelled rows"):
        time_split(feats, SplitConfig())
    with pytest.raises(DataError, match="no labels"):
        time_split(feats.with_columns(label=pl.lit(None, pl.Int8)), SplitConfig())


def test_trained_directory_parity_and_per_segment_thresholds(trained):
    model = trained["model"]
    for f in (
        "boosting.onnx",
        "isolation.onnx",
        "sequence.onnx",
        "sequence.safetensors",
        "config.json",
    ):
        assert (model / f).is_file(), f
    m = trained["metrics"]
    assert max(m["export_parity_max_abs"].values()) <= 1e-4
    assert m["valid_pr_auc"] > 0.3  # well above the fraud rate (~1%): the models learned
    config = json.loads((model / "config.json").read_text())
    thr = config["head"]["thresholds"]
    assert set(thr) >= {"pos", "online", "*"} and len(set(thr.values())) > 1  # not one cut-off
    report, scored = evaluate_model(
        model, model_features(Ensemble(model), pl.read_parquet(trained["data"]))
    )
    assert report.rows == scored.height > 0 and 0 < report.pr_auc <= 1
    assert report.per_segment_alerts_per_day  # every segment reports its alert rate


def test_thresholds_spend_the_budget():
    rng = np.random.default_rng(0)
    s = rng.random(3000)
    seg = np.where(rng.random(3000) < 0.5, "a", "b").astype(object)
    p = s * np.where(seg == "a", 1.0, 0.5)  # segment a's scores are worth more
    cfg = TrainConfig(alert_budget_per_day=10.0)
    thr = _thresholds(s, p, seg, 10.0, cfg)
    alerts = sum(int((s[seg == k] >= thr[k]).sum()) for k in ("a", "b"))
    assert alerts == 100
    assert (s[seg == "a"] >= thr["a"]).sum() > (s[seg == "b"] >= thr["b"]).sum()
    fixed = TrainConfig(alert_budget_per_day=10.0, segment_budgets={"a": 2.0, "b": 8.0})
    thr = _thresholds(s, p, seg, 10.0, fixed)
    assert (s[seg == "a"] >= thr["a"]).sum() == 20 and (s[seg == "b"] >= thr["b"]).sum() == 80


def test_models_from_elsewhere_and_corrupt_files_are_refused(trained, tmp_path):
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(trained["model"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "task": "vision_qc"}))
    write_manifest(bad)  # a well-formed directory of another task
    with pytest.raises(ModelLoadError, match="not a finance_risk model"):
        Ensemble(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    write_manifest(bad)
    data = bytearray((bad / "boosting.onnx").read_bytes())
    data[200] ^= 0xFF
    (bad / "boosting.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"boosting\.onnx is corrupt"):
        Ensemble(bad)
    (bad / "isolation.onnx").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        Ensemble(bad)
