"""The finance_risk flows: a transaction file to a served fraud scorer, and the daily check.

``finance_risk_flow``: ingest (synthesise when asked) → validate (per-row, quarantine) →
features (one process, or a Dask cluster through prefect-dask: partitions by user hash, the
cross-user features on the joined result) → train → evaluate (the period after the training
data) → export (INT8 GRU where it pays, parity) → gate → register → promote-if-better
(test PR-AUC against production) → reload a running server.

``finance_risk_daily``: reads the latest data, asks the production model whether it needs
retraining (``deploy.retrain_decision``: feature drift or a new window of fraud labels) and
runs ``finance_risk_flow`` only then. Each task wraps one pipeline function.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.paths import data_root
from flows.tasks import (
    IO_RETRIES,
    ParityGateError,
    publish_metrics,
    publish_model_card,
    release,
    release_fields,
    run_root,
)
from pipelines.finance_risk.config import FeatureConfig, IngestConfig, SynthConfig
from pipelines.finance_risk.deploy import DeployConfig
from pipelines.finance_risk.train import TrainConfig

DEFAULT_DATA = "finance_risk/transactions.parquet"


@task(name="fr-ingest", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest(synth: SynthConfig | None, path: str) -> str:
    """Synthesise ``synth`` at ``path`` when asked and absent; returns the path."""
    from pipelines.finance_risk.synth import write_dataset

    if synth is not None and not Path(path).exists():
        _, df = write_dataset(path, synth)
        get_run_logger().info("synthesised %d transactions at %s", df.height, path)
    return path


@task(name="fr-validate", cache_policy=NO_CACHE, persist_result=False)
def validate(path: str, cfg: IngestConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    from pipelines.finance_risk.data import read_transactions

    tx = read_transactions(path, cfg)
    get_run_logger().info(
        "validated %s: %s", path, {k: v for k, v in tx.summary().items() if k != "source"}
    )
    return tx.frame, {**tx.summary(), "extra_features": list(tx.extra_features)}


@task(name="fr-partition-features", cache_policy=NO_CACHE, persist_result=False)
def partition_features(part: pl.DataFrame, cfg: FeatureConfig) -> pl.DataFrame:
    from pipelines.finance_risk.features import user_features

    return user_features(part, cfg)


@flow(name="finance-risk-features")
def features_flow(
    frame: pl.DataFrame, cfg: FeatureConfig, extra: tuple[str, ...] = (), partitions: int = 1
) -> pl.DataFrame:
    """The features of ``frame``; with ``partitions > 1`` the per-user part runs as one task
    per user-hash partition on this flow's task runner (a Dask cluster when the caller sets
    ``task_runner=DaskTaskRunner(...)``)."""
    from pipelines.finance_risk.features import (
        combine_partitions,
        compute_features,
        partition_by_user,
    )

    if partitions <= 1:
        return compute_features(frame, cfg, extra)
    parts = partition_by_user(frame, partitions)
    futures = [partition_features.submit(p, cfg) for p in parts]
    get_run_logger().info("features: %d partitions by user hash", len(parts))
    return combine_partitions([f.result() for f in futures], cfg, extra)


def dask_features(
    frame: pl.DataFrame,
    cfg: FeatureConfig,
    extra: tuple[str, ...] = (),
    partitions: int = 4,
    address: str | None = None,
    n_workers: int = 2,
) -> pl.DataFrame:
    """:func:`features_flow` on a Dask cluster: ``address`` of a running scheduler, or a
    ``distributed.LocalCluster`` of ``n_workers`` started for the call."""
    from prefect_dask import DaskTaskRunner

    runner = (
        DaskTaskRunner(address=address)
        if address
        else DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": n_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    )
    return features_flow.with_options(task_runner=runner)(frame, cfg, extra, partitions)


@task(name="fr-train", cache_policy=NO_CACHE, persist_result=False)
def train(
    cfg: TrainConfig, feats: pl.DataFrame, frame: pl.DataFrame, ingest_summary: dict[str, Any]
) -> dict[str, Any]:
    from pipelines.finance_risk.train import train as run
    from pipelines.finance_risk.train import with_segment

    extra = tuple(
        f"x_{c}" if not c.startswith("x_") else c for c in ingest_summary.get("extra_features", [])
    )
    metrics, out = run(
        cfg, features=(with_segment(feats, frame, cfg.segment_by), extra, ingest_summary)
    )
    return {"model_dir": str(out), **{k: v for k, v in metrics.items() if k.startswith("valid_")}}


@task(name="fr-evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(model_dir: str, frame: pl.DataFrame, out_dir: str) -> dict[str, Any]:
    from pipelines.finance_risk.deploy import Ensemble, evaluate_model, model_features
    from pipelines.finance_risk.evaluate import write_plots

    report, scored = evaluate_model(model_dir, model_features(Ensemble(model_dir), frame))
    report.write(out_dir)
    write_plots(scored, report, out_dir)
    return report.summary()


@task(name="fr-export", cache_policy=NO_CACHE, persist_result=False)
def export(model_dir: str, frame: pl.DataFrame, out_dir: str, cfg: DeployConfig) -> dict[str, Any]:
    from pipelines.finance_risk.deploy import Ensemble, deploy, model_features

    return deploy(model_dir, model_features(Ensemble(model_dir), frame), out_dir, cfg).summary()


@task(name="fr-gate", cache_policy=NO_CACHE)
def gate(report: dict[str, Any]) -> dict[str, Any]:
    if not report["passed"]:
        raise ParityGateError(
            "; ".join(report["reasons"]),
            where="finance_risk export gate",
            fix="re-export; check the skl2onnx / ONNX Runtime versions",
        )
    return report


def pr_auc_metric(frame: pl.DataFrame) -> Any:
    """The promotion metric: PR-AUC of a model directory on the period after its training."""

    def metric(model_dir: Path) -> float:
        from pipelines.finance_risk.deploy import Ensemble, evaluate_model, model_features

        ens = Ensemble(model_dir)
        return evaluate_model(model_dir, model_features(ens, frame))[0].pr_auc

    return metric


@flow(name="finance-risk")
def finance_risk_flow(
    data: str | None = None,
    synthesize: bool = True,
    synth: SynthConfig | None = None,
    ingest_cfg: IngestConfig | None = None,
    train_cfg: TrainConfig | None = None,
    deploy_cfg: DeployConfig | None = None,
    dask_partitions: int = 0,
    dask_address: str | None = None,
    run_dir: str | None = None,
    model_name: str = "finance-risk",
    promote_margin: float = 0.0,
    server_url: str | None = None,
) -> dict[str, Any]:
    """A transactions file to a registered, promoted fraud scorer; returns a summary.

    ``dask_partitions > 0`` computes the per-user features on Dask (``dask_address`` of a
    scheduler, else a local cluster of two workers)."""
    log = get_run_logger()
    root = run_root("finance_risk", run_dir)
    path = data or str(data_root() / DEFAULT_DATA)
    icfg = ingest_cfg or IngestConfig()
    tcfg = train_cfg or TrainConfig()
    tcfg.data, tcfg.out_dir, tcfg.ingest = path, str(root / "model"), icfg
    dcfg = deploy_cfg or DeployConfig()

    ingest((synth or SynthConfig()) if synthesize else None, path)
    frame, summary_in = validate(path, icfg)
    extra = tuple(f"x_{c}" if not c.startswith("x_") else c for c in summary_in["extra_features"])
    if dask_partitions > 0:
        feats = dask_features(frame, tcfg.features, extra, dask_partitions, dask_address)
    else:
        feats = features_flow(frame, tcfg.features, extra)
    trained = train(tcfg, feats, frame, summary_in)
    rep = evaluate(trained["model_dir"], frame, str(root / "eval"))
    exported = gate(export(trained["model_dir"], frame, str(root / "deployed"), dcfg))
    lineage = {
        "data": path,
        "rows": summary_in["accepted"],
        "config": {"train": asdict(tcfg), "deploy": asdict(dcfg)},
        "flow": "finance-risk",
    }
    metrics = {
        "test_pr_auc": rep["pr_auc"],
        "test_recall_at_1pct_fpr": rep["recall_at_1pct_fpr"],
        "valid_pr_auc": trained["valid_pr_auc"],
    }
    version, decision, reload = release(
        model_name,
        exported["out_dir"],
        metrics,
        lineage,
        pr_auc_metric(frame),
        promote_margin,
        server_url,
    )
    summary = {
        "run_dir": str(root),
        "rows": summary_in["accepted"],
        "rejected": summary_in["rejected"],
        "valid_pr_auc": trained["valid_pr_auc"],
        "test": rep,
        "sequence_variant": exported["sequence_variant"],
        "deployed_dir": exported["out_dir"],
        **release_fields(model_name, version, decision, reload),
    }
    rows = [
        {
            "what": "transactions (rejected)",
            "value": f"{summary_in['accepted']} ({summary_in['rejected']})",
        },
        {
            "what": "test PR-AUC / recall at 1% FPR",
            "value": f"{rep['pr_auc']:.3f} / {rep['recall_at_1pct_fpr']:.3f}",
        },
        {
            "what": "precision / recall at the budget",
            "value": f"{rep['precision_at_budget']:.3f} / {rep['recall_at_budget']:.3f}",
        },
        {
            "what": "alerts per day (budget)",
            "value": f"{rep['alerts_per_day']:.1f} ({rep['budget_per_day']:g})",
        },
        {"what": "GRU variant", "value": exported["sequence_variant"]},
        {"what": "registry", "value": f"{model_name} v{version} ({summary['alias']})"},
        {"what": "promotion", "value": decision.reason},
    ]
    publish_metrics("finance-risk-summary", rows, "finance_risk flow summary")
    publish_model_card("finance-risk-model-card", exported["out_dir"])
    log.info("finance-risk v%s: test PR-AUC %.3f, %s", version, rep["pr_auc"], decision.reason)
    return summary


@task(name="fr-retrain-decision", cache_policy=NO_CACHE, persist_result=False)
def retrain_decision(model_dir: str, frame: pl.DataFrame) -> dict[str, Any]:
    from pipelines.finance_risk.deploy import Ensemble, model_features
    from pipelines.finance_risk.deploy import retrain_decision as decide

    return decide(model_dir, model_features(Ensemble(model_dir), frame))


@flow(name="finance-risk-daily")
def finance_risk_daily(
    data: str | None = None,
    model_name: str = "finance-risk",
    alias: str = "production",
    train_cfg: TrainConfig | None = None,
    server_url: str | None = None,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """Retrain only when the production model says the data moved: drift or new labels.
    Without a production model yet, it trains one."""
    from core.registry import ModelRegistry

    log = get_run_logger()
    path = data or str(data_root() / DEFAULT_DATA)
    current = ModelRegistry().find(model_name, alias)
    if current is None:
        log.info("no %s model at alias %s: training one", model_name, alias)
        return {
            "retrained": True,
            "reason": "no production model",
            **finance_risk_flow(
                path,
                synthesize=False,
                train_cfg=train_cfg,
                model_name=model_name,
                server_url=server_url,
                run_dir=run_dir,
            ),
        }
    frame, _ = validate(path, IngestConfig())
    decision = retrain_decision(str(current.path), frame)
    log.info("retrain: %s (%s)", decision["retrain"], decision["reason"])
    if not decision["retrain"]:
        return {"retrained": False, "reason": decision["reason"], "drifted": decision["drifted"]}
    out = finance_risk_flow(
        path,
        synthesize=False,
        train_cfg=train_cfg,
        model_name=model_name,
        server_url=server_url,
        run_dir=run_dir,
    )
    return {"retrained": True, "reason": decision["reason"], **out}
