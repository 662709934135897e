"""The medical_ct flow: folders of labelled CT studies to a served INT8 nodule segmenter.

ingest (synthesise a training and a differently configured test set when asked) → validate
(every case read and checked, data-set hash) → train → evaluate (per-case Dice, FROC, CPM on
the test cases; eval.json and froc.png) → compress (fp32 + INT8 ONNX) → parity gate →
register (INT8 directory, with lineage) → promote-if-better (CPM on the test cases, against
the current production version) → reload a running server. Each task wraps one pipeline
function; the flow holds no logic of its own beyond wiring.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.paths import data_root
from flows.tasks import (
    IO_RETRIES,
    ParityGateError,
    hash_dataset_task,
    publish_metrics,
    publish_model_card,
    release,
    release_fields,
    run_root,
)
from pipelines.medical_ct.config import SynthConfig
from pipelines.medical_ct.deploy import DeployConfig
from pipelines.medical_ct.train import TrainConfig


@task(name="ct-ingest", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest(synth: SynthConfig | None, root: str) -> str:
    """Synthesise ``synth`` at ``root`` when asked and absent; returns the folder."""
    from pipelines.medical_ct.synth import write_dataset

    if synth is not None and not Path(root).exists():
        write_dataset(synth)
        get_run_logger().info("synthesised %d studies at %s", synth.n_cases, root)
    return root


@task(name="ct-validate", cache_policy=NO_CACHE)
def validate(root: str) -> dict[str, Any]:
    """Read and check every case (image, mask on its grid, nodule list): counts per folder."""
    from pipelines.medical_ct.train import load_cases

    cases = load_cases(root)
    return {
        "cases": len(cases),
        "nodules": sum(len(c.truth) for c in cases),
        "slices": sum(c.volume.shape[0] for c in cases),
    }


@task(name="ct-train", cache_policy=NO_CACHE)  # training never retries: a failure is a finding
def train(cfg: TrainConfig) -> dict[str, Any]:
    from pipelines.medical_ct.train import train as run

    result, out = run(cfg)
    return {"model_dir": str(out), "steps": result.global_step}


@task(name="ct-evaluate", cache_policy=NO_CACHE)
def evaluate(model_dir: str, test_dir: str, out_dir: str) -> dict[str, Any]:
    from pipelines.medical_ct.deploy import load_deployed
    from pipelines.medical_ct.evaluate import evaluate_cases, write_report
    from pipelines.medical_ct.train import load_cases

    seg = load_deployed(model_dir)
    rep = evaluate_cases(load_cases(test_dir), lambda v: seg(v)[:2])
    write_report(rep, out_dir)
    return rep.summary()


@task(name="ct-compress", cache_policy=NO_CACHE)
def compress(model_dir: str, train_dir: str, test_dir: str, cfg: DeployConfig) -> dict[str, Any]:
    from pipelines.medical_ct.deploy import deploy
    from pipelines.medical_ct.train import load_cases

    return deploy(model_dir, load_cases(train_dir), load_cases(test_dir), cfg).to_json()


@task(name="ct-parity-gate", cache_policy=NO_CACHE)
def parity_gate(report: dict[str, Any]) -> float:
    if not report["passed"]:
        raise ParityGateError(
            "; ".join(report["reasons"]),
            where="medical_ct parity gate",
            fix="try another calibration (DeployConfig.calibration) or raise int8_min_channels",
        )
    return report["dice_drop"]


def cpm_metric(test_dir: str) -> Any:
    """The promotion metric: LUNA16 CPM of a model directory on the test cases."""

    def metric(model_dir: Path) -> float:
        from pipelines.medical_ct.deploy import load_deployed
        from pipelines.medical_ct.evaluate import evaluate_cases
        from pipelines.medical_ct.train import load_cases

        seg = load_deployed(model_dir)
        return evaluate_cases(load_cases(test_dir), lambda v: seg(v)[:2]).cpm

    return metric


@flow(name="medical-ct")
def medical_ct_flow(
    data_dir: str | None = None,
    test_dir: str | None = None,
    synthesize: bool = True,
    synth: SynthConfig | None = None,
    test_cases: int = 3,
    train_cfg: TrainConfig | None = None,
    deploy_cfg: DeployConfig | None = None,
    run_dir: str | None = None,
    model_name: str = "medical-ct",
    promote_margin: float = 0.0,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Labelled studies to a registered, promoted INT8 segmenter; returns a summary.

    ``data_dir`` / ``test_dir``: folders of case folders (``dicom/`` or ``image.nii.gz`` plus
    ``mask.nii.gz`` each). With ``synthesize``, missing folders are generated: ``synth`` for
    training and :func:`~pipelines.medical_ct.synth.test_config` of it (``test_cases``
    studies, other seed and scanners) for testing."""
    from pipelines.medical_ct.synth import test_config

    log = get_run_logger()
    root = run_root("medical_ct", run_dir)
    train_path = data_dir or str(data_root() / "medical_ct" / "synth")
    test_path = test_dir or str(Path(train_path).parent / (Path(train_path).name + "_test"))
    synth_cfg = (synth or SynthConfig()) if synthesize else None
    test_synth = None
    if synth_cfg is not None:
        synth_cfg.out_dir = train_path
        test_synth = test_config(synth_cfg, test_path, test_cases)
    tcfg = train_cfg or TrainConfig()
    tcfg.data, tcfg.out_dir = train_path, str(root / "model")
    dcfg = deploy_cfg or DeployConfig()
    dcfg.out_dir = str(root / "deploy")

    ingest(synth_cfg, train_path)
    ingest(test_synth, test_path)
    train_counts, test_counts = validate(train_path), validate(test_path)
    dataset_hash = hash_dataset_task(directory=train_path)
    trained = train(tcfg)
    rep = evaluate(trained["model_dir"], test_path, str(root / "eval"))
    parity = compress(trained["model_dir"], train_path, test_path, dcfg)
    drop = parity_gate(parity)
    int8 = {v["name"]: v for v in parity["variants"]}["int8_onnx"]
    lineage = {
        "dataset_hash": dataset_hash,
        "data": train_path,
        "test": test_path,
        "config": {"train": asdict(tcfg), "deploy": asdict(dcfg)},
        "flow": "medical-ct",
    }
    metrics = {
        "test_cpm": int8["cpm"],
        "test_dice_mean": int8["dice_mean"] or 0.0,
        "fp32_cpm": rep["cpm"],
        "fp32_sensitivity_at_1fp": rep["sensitivity_at_1fp"],
    }
    version, decision, reload = release(
        model_name,
        parity["int8_dir"],
        metrics,
        lineage,
        cpm_metric(test_path),
        promote_margin,
        server_url,
    )
    summary = {
        "run_dir": str(root),
        "dataset_hash": dataset_hash,
        "train": train_counts,
        "test": test_counts,
        "train_steps": trained["steps"],
        "dice_mean": rep["dice_mean"],
        "cpm": rep["cpm"],
        "sensitivity_at_1fp": rep["sensitivity_at_1fp"],
        "fp_per_scan": rep["fp_per_scan"],
        "diameter_mae_mm": rep["diameter_mae_mm"],
        "parity": {v["name"]: v["dice_mean"] for v in parity["variants"]},
        "parity_cpm": {v["name"]: v["cpm"] for v in parity["variants"]},
        "int8_dice_drop": drop,
        "int8_agreement": int8["agreement"],
        "size_ratio": parity["size_ratio"],
        "int8_dir": parity["int8_dir"],
        **release_fields(model_name, version, decision, reload),
    }

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        {
            "what": "studies (train / test)",
            "value": f"{train_counts['cases']} / {test_counts['cases']}",
        },
        {
            "what": "nodules (train / test)",
            "value": f"{train_counts['nodules']} / {test_counts['nodules']}",
        },
        {
            "what": "Dice fp32 torch / ONNX / INT8",
            "value": " / ".join(fmt(v) for v in summary["parity"].values()),
        },
        {
            "what": "CPM / sensitivity at 1 FP",
            "value": f"{fmt(rep['cpm'])} / {fmt(rep['sensitivity_at_1fp'])}",
        },
        {"what": "registry", "value": f"{model_name} v{version} ({summary['alias']})"},
        {"what": "promotion", "value": decision.reason},
    ]
    publish_metrics("medical-ct-summary", rows, "medical_ct flow summary")
    publish_model_card("medical-ct-model-card", parity["int8_dir"])
    log.info(
        "medical-ct v%s: CPM %.3f (INT8 %.3f), %s",
        version,
        rep["cpm"],
        int8["cpm"],
        decision.reason,
    )
    return summary
