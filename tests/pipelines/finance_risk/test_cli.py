"""The finance-risk CLI end to end on a small stream; one-line errors and exit 2."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from pipelines.finance_risk.cli import app
from tests.pipelines.finance_risk.conftest import stream_cfg, tiny_train_cfg

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("finance_risk_model")


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


@pytest.mark.slow
def test_synth_validate_features_train_evaluate_compress_score(tmp_path):
    data = tmp_path / "tx.parquet"
    c = stream_cfg()
    r = runner.invoke(
        app,
        [
            "synth",
            "--out",
            str(data),
            "--users",
            str(c.n_users),
            "--days",
            str(c.days),
            "--fraud-users",
            str(c.fraud_users),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["validate", str(data)])
    assert r.exit_code == 0 and _json(r.output)["rejected"] == 0
    r = runner.invoke(app, ["features", str(data), "--out", str(tmp_path / "f.parquet")])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "f.parquet")["count_30d"].max() > 0
    cfg = tiny_train_cfg(data, tmp_path / "model")
    fields = {
        "model": {"boosting_iter": 40, "isolation_trees": 8, "gru_hidden": 8},
        "split": cfg.split.__dict__,
        "trainer": {"max_epochs": 2, "progress": "off"},
        "max_sequence_rows": 4000,
    }
    (tmp_path / "train.json").write_text(json.dumps(fields))
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "model"),
            "--config",
            str(tmp_path / "train.json"),
            "--budget",
            "5",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "validation PR-AUC" in r.output
    r = runner.invoke(
        app,
        ["evaluate", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "eval")],
    )
    assert r.exit_code == 0, r.output
    rep = _json(r.output)
    assert rep["budget_per_day"] == 5.0 and (tmp_path / "eval" / "pr_curve.png").is_file()
    r = runner.invoke(
        app,
        ["compress", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "dep")],
    )
    assert r.exit_code == 0, r.output
    dep = _json(r.output)
    assert dep["passed"] and dep["sequence_variant"] in ("fp32", "int8")
    assert dep["int8_speedup"] is not None and (tmp_path / "dep" / "deploy.json").is_file()
    small = tmp_path / "small.csv"
    pl.read_parquet(data).head(300).with_columns(
        pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        pl.col("label_time").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ).write_csv(small)
    r = runner.invoke(
        app, ["score", str(tmp_path / "dep"), str(small), "--out", str(tmp_path / "s.csv")]
    )
    assert r.exit_code == 0, r.output
    assert _json(r.output)["scored"] == 300 == pl.read_csv(tmp_path / "s.csv").height


def test_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["validate", str(tmp_path / "x.csv")])
    assert r.exit_code == 2
    assert "required columns" in r.output and "--map" in r.output
    r = runner.invoke(app, ["validate", str(tmp_path / "x.csv"), "--map", "user_id"])
    assert r.exit_code == 2 and "CANONICAL=SOURCE" in r.output
    r = runner.invoke(
        app, ["score", str(tmp_path), str(tmp_path / "x.csv"), "--out", str(tmp_path / "o.csv")]
    )
    assert r.exit_code == 2
