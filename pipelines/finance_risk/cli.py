"""``finance-risk``: the finance_risk command line.

Thin by rule: each command builds the config dataclasses a Python caller builds, calls the
pipeline function and reports. Errors print one line and exit 2. A typical session::

    finance-risk synth --out data/finance_risk/transactions.parquet --users 5000
    finance-risk validate my_export.csv --map user_id=customer --map amount=value
    finance-risk features data/finance_risk/transactions.parquet --out features.parquet
    finance-risk train --data data/finance_risk/transactions.parquet --out data/runs/finance_risk/model
    finance-risk evaluate data/runs/finance_risk/model --data data/finance_risk/transactions.parquet --out eval/
    finance-risk compress data/runs/finance_risk/model --data data/finance_risk/transactions.parquet
    finance-risk score data/runs/finance_risk/model today.csv --out scores.csv
    finance-risk serve data/runs/finance_risk/model --state data/runs/finance_risk/state
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import domain_app, exits_on_error, read_json_config

app = domain_app(
    "Fraud scoring on transaction streams: synthesise, validate, features, train, evaluate, compress, score, serve."
)

MapOpt = Annotated[
    list[str] | None,
    typer.Option("--map", help="CANONICAL=SOURCE column mapping, e.g. user_id=customer (repeat)"),
]
PresetOpt = Annotated[str | None, typer.Option(help="a public layout: kaggle_creditcard or paysim")]


def _ingest(mapping: list[str] | None, preset: str | None, timezone: str = "UTC"):
    from pipelines.finance_risk.config import IngestConfig, parse_mapping

    return IngestConfig(preset=preset, column_map=parse_mapping(mapping or []), timezone=timezone)


@app.command()
@exits_on_error
def synth(
    out: Annotated[Path | None, typer.Option(help="file to write (.parquet or .csv)")] = None,
    users: Annotated[int, typer.Option(help="account holders")] = 3000,
    days: Annotated[int, typer.Option(help="length of the stream")] = 120,
    fraud_users: Annotated[float, typer.Option(help="share of users hit by fraud")] = 0.02,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Write a seeded transaction stream with fraud scenarios and delayed labels."""
    from core.paths import data_root
    from pipelines.finance_risk.config import SynthConfig
    from pipelines.finance_risk.synth import write_dataset

    out = out or data_root() / "finance_risk" / "transactions.parquet"
    fmt = "csv" if out.suffix.lower() == ".csv" else "parquet"
    cfg = SynthConfig(n_users=users, days=days, fraud_users=fraud_users, seed=seed, format=fmt)
    path, df = write_dataset(out, cfg)
    print(f"{df.height} transactions ({int(df['label'].sum())} fraud) of {users} users in {path}")


@app.command()
@exits_on_error
def validate(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file")],
    mapping: MapOpt = None,
    preset: PresetOpt = None,
    timezone: Annotated[str, typer.Option(help="zone of timestamps without an offset")] = "UTC",
    quarantine: Annotated[Path | None, typer.Option(help="folder for rejected rows")] = None,
) -> None:
    """Check a file row by row; rejected rows go to a quarantine CSV with the reason."""
    from pipelines.finance_risk.data import read_transactions

    cfg = _ingest(mapping, preset, timezone)
    if quarantine:
        cfg.quarantine_dir = str(quarantine)
    tx = read_transactions(data, cfg)
    print(json.dumps(tx.summary(), indent=2))


@app.command()
@exits_on_error
def features(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file")],
    out: Annotated[Path, typer.Option(help="features file to write (.parquet)")],
    mapping: MapOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Point-in-time features of every transaction (polars), written as Parquet."""
    from core.atomic import atomic_file
    from pipelines.finance_risk.data import read_transactions
    from pipelines.finance_risk.features import compute_features

    tx = read_transactions(data, _ingest(mapping, preset))
    feats = compute_features(tx.frame, extra=tx.extra_features)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        feats.write_parquet(tmp)
    print(f"{feats.height} rows x {feats.width} columns -> {out}")


@app.command()
@exits_on_error
def train(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file with labels")],
    out: Annotated[Path, typer.Option(help="model directory to write")],
    config: Annotated[Path | None, typer.Option(help="JSON with TrainConfig fields")] = None,
    budget: Annotated[float | None, typer.Option(help="alerts per day")] = None,
    mapping: MapOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Train boosting, the sequence GRU, the isolation forest and the stacking head."""
    from pipelines.finance_risk.train import TrainConfig
    from pipelines.finance_risk.train import train as run

    fields = read_json_config(config)
    fields.update(data=str(data), out_dir=str(out))
    if budget is not None:
        fields["alert_budget_per_day"] = budget
    cfg = TrainConfig(**fields)
    if mapping or preset:
        cfg.ingest = _ingest(mapping, preset)
    metrics, path = run(cfg)
    print(f"validation PR-AUC {metrics['valid_pr_auc']:.3f} -> {path}")


@app.command()
@exits_on_error
def evaluate(
    model: Annotated[Path, typer.Argument(help="model directory")],
    data: Annotated[Path, typer.Option(help="CSV or Parquet file with labels")],
    out: Annotated[Path, typer.Option(help="folder for metrics.json and plots")],
    mapping: MapOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Metrics on the period after the model's training data: PR-AUC, recall at 1% FPR,
    the alert budget, money caught, per-scenario recall, feature drift; plots."""
    from pipelines.finance_risk.data import read_transactions
    from pipelines.finance_risk.deploy import Ensemble, evaluate_model, model_features
    from pipelines.finance_risk.evaluate import write_plots

    tx = read_transactions(data, _ingest(mapping, preset))
    feats = model_features(Ensemble(model), tx.frame)
    report, scored = evaluate_model(model, feats)
    report.write(out)
    write_plots(scored, report, out)
    print(json.dumps(report.summary(), indent=2))


@app.command()
@exits_on_error
def compress(
    model: Annotated[Path, typer.Argument(help="model directory")],
    data: Annotated[Path, typer.Option(help="CSV or Parquet file with labels (test period)")],
    out: Annotated[Path | None, typer.Option(help="deployment directory")] = None,
) -> None:
    """INT8 for the GRU where it pays, parity of every export, the gate; exits 1 on failure."""
    from pipelines.finance_risk.data import read_transactions
    from pipelines.finance_risk.deploy import Ensemble, deploy, model_features

    tx = read_transactions(data, _ingest(None, None))
    feats = model_features(Ensemble(model), tx.frame)
    report = deploy(model, feats, out or model.with_name(model.name + "_deployed"))
    print(json.dumps(report.summary(), indent=2))
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@exits_on_error
def score(
    model: Annotated[Path, typer.Argument(help="model directory")],
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file of transactions")],
    out: Annotated[Path, typer.Option(help="scores file (.csv or .parquet)")],
    state: Annotated[Path | None, typer.Option(help="scorer state folder (continues it)")] = None,
    mapping: MapOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Score a file event by event, through the same code as the online scorer (progress)."""
    from pipelines.finance_risk.predict import FraudScorer

    scorer = FraudScorer(model, state)
    try:
        result = scorer.score_file(
            data, out, _ingest(mapping, preset) if (mapping or preset) else None
        )
    finally:
        scorer.close()
    print(json.dumps(result, indent=2))


@app.command()
@exits_on_error
def serve(
    model_dir: Annotated[Path | None, typer.Argument(help="model directory to serve")] = None,
    state: Annotated[
        Path | None, typer.Option(help="folder for the scorer's state and event log")
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="serve this registered model's alias instead")
    ] = None,
    alias: Annotated[str, typer.Option(help="registry alias to follow")] = "production",
    name: Annotated[str | None, typer.Option(help="model name in URLs")] = None,
    reviews: Annotated[
        Path | None,
        typer.Option(
            help="alert queue and decisions (SQLite); default STATE/reviews.sqlite, "
            "else DATA_ROOT/finance_risk/reviews.sqlite"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
) -> None:
    """Serve the online scorer: POST /v1/models/NAME/predict with one event (JSON), a list
    ``{"events": [...]}``, or a label ``{"type": "label", ...}``; the alert queue at
    /v1/alerts and its review page at /ui/."""
    from core.paths import data_root
    from core.serve import ServeConfig
    from core.serve.app import app_for
    from core.serve.server import serve as run_server
    from pipelines.finance_risk.serve import ROUTES, UI, RiskPredictor

    if reviews is None:  # decisions must outlive the server, with or without a state folder
        reviews = (state or data_root() / "finance_risk") / "reviews.sqlite"
    cfg = ServeConfig(max_body_bytes=2 * 2**20, max_batch_size=64)
    application = app_for(
        lambda path, n, version: RiskPredictor(path, n, version, state_dir=state, reviews=reviews),
        cfg,
        model_dir,
        registry,
        name,
        alias=alias,
        watch_interval_s=10.0,
        routes=ROUTES,
        ui=UI,
    )
    typer.echo(f"review page: http://{host}:{port}/ui/")
    run_server(application, host, port)


if __name__ == "__main__":
    app()
