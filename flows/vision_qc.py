"""The vision_qc flow: images of parts to a served INT8 defect detector.

ingest (synthesise when asked) → validate (every file, manifest hash) → split → train →
evaluate (threshold on validation, metrics + plots on test) → compress (fp32 + INT8 ONNX) →
parity gate → register (INT8 directory, with lineage) → promote-if-better (mAP@.5 on the
test split, against the current production version) → serve (reload a running server).
Each task wraps one pipeline function; the flow holds no logic of its own beyond wiring.
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
    publish_metrics,
    publish_model_card,
    release,
    release_fields,
    run_root,
)
from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.deploy import DeployConfig
from pipelines.vision_qc.evaluate import EvalConfig
from pipelines.vision_qc.train import TrainConfig


@task(name="vqc-ingest", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest(synth: SynthConfig | None, root: str) -> str:
    """Synthesise the data set when asked and absent; returns the data root."""
    from pipelines.vision_qc.synth import write_dataset

    if synth is not None and not Path(root).exists():
        write_dataset(synth)
        get_run_logger().info("synthesised a data set at %s", root)
    return root


@task(name="vqc-validate", cache_policy=NO_CACHE)
def validate(data: DataConfig) -> dict[str, Any]:
    """Read and check every image and label; the manifest (hashes, counts) for lineage."""
    from pipelines.vision_qc.data import load_dataset, manifest

    m = manifest(load_dataset(data), data.root)
    return {k: v for k, v in m.items() if k != "files"}


@task(name="vqc-split", cache_policy=NO_CACHE)
def split(data: DataConfig) -> dict[str, int]:
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.train import partition

    return {k: len(v) for k, v in partition(load_dataset(data), data).items()}


@task(name="vqc-train", cache_policy=NO_CACHE)  # training never retries: a failure is a finding
def train(cfg: TrainConfig) -> dict[str, Any]:
    from pipelines.vision_qc.train import train as run

    result, out = run(cfg)
    return {"model_dir": str(out), "steps": result.global_step}


@task(name="vqc-evaluate", cache_policy=NO_CACHE)  # writes the threshold into the model
def evaluate(model_dir: str, cfg: EvalConfig) -> dict[str, Any]:
    from pipelines.vision_qc.evaluate import evaluate as run

    return run(model_dir, cfg).to_json()


@task(name="vqc-compress", cache_policy=NO_CACHE)
def compress(model_dir: str, data: DataConfig, cfg: DeployConfig) -> dict[str, Any]:
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.deploy import deploy
    from pipelines.vision_qc.train import partition

    parts = partition(load_dataset(data), data)
    return deploy(model_dir, parts["train"], parts["test"], cfg).to_json()


@task(name="vqc-parity-gate", cache_policy=NO_CACHE)
def parity_gate(report: dict[str, Any]) -> float:
    if not report["passed"]:
        raise ParityGateError(
            "; ".join(report["reasons"]),
            where="vision_qc parity gate",
            fix="try another calibration (DeployConfig.calibration) or train longer",
        )
    return report["map50_drop"]


def map50_metric(data: DataConfig) -> Any:
    """The promotion metric: mAP@.5 of a model directory on the data set's test split."""

    def metric(model_dir: Path) -> float:
        from pipelines.vision_qc.data import load_dataset
        from pipelines.vision_qc.evaluate import coco_map, detect_all
        from pipelines.vision_qc.predict import DefectDetector
        from pipelines.vision_qc.train import partition

        test = partition(load_dataset(data), data)["test"]
        dets = detect_all(DefectDetector(model_dir, tile=False), test)
        return coco_map(test, dets, tuple(data.classes))[1]

    return metric


@flow(name="vision-qc")  # no log_prints: pycocotools prints its tables
def vision_qc_flow(
    data_dir: str | None = None,
    data_format: str = "mvtec",
    synthesize: bool = True,
    synth: SynthConfig | None = None,
    train_cfg: TrainConfig | None = None,
    deploy_cfg: DeployConfig | None = None,
    threshold_rule: str = "f1",
    run_dir: str | None = None,
    model_name: str = "vision-qc",
    promote_margin: float = 0.0,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Data to a registered, promoted INT8 detector; returns a summary."""
    log = get_run_logger()
    root = run_root("vision_qc", run_dir)
    data_path = data_dir or str(data_root() / "vision_qc" / "synth")
    synth_cfg = (synth or SynthConfig()) if synthesize else None
    if synth_cfg is not None:
        synth_cfg.out_dir = data_path
    tcfg = train_cfg or TrainConfig()
    data = DataConfig(**{**asdict(tcfg.data), "root": data_path, "format": data_format})
    tcfg.data, tcfg.out_dir = data, str(root / "model")
    tcfg.model.num_classes = len(data.classes)
    dcfg = deploy_cfg or DeployConfig()
    dcfg.out_dir = str(root / "deploy")

    ingest(synth_cfg, data_path)
    man = validate(data)
    sizes = split(data)
    trained = train(tcfg)
    rep = evaluate(
        trained["model_dir"],
        EvalConfig(
            data=data, out_dir=str(root / "eval"), rule=threshold_rule, write_threshold=True
        ),
    )
    parity = compress(trained["model_dir"], data, dcfg)
    drop = parity_gate(parity)
    int8 = {v["name"]: v for v in parity["variants"]}["int8_onnx"]
    lineage = {
        "dataset_hash": man["dataset_hash"],
        "data": data_path,
        "config": {"train": asdict(tcfg), "deploy": asdict(dcfg)},
        "flow": "vision-qc",
    }
    metrics = {
        "test_map50": int8["map50"],
        "test_map": int8["map"],
        "fp32_map50": rep["map50"],
        "detection_rate": rep["detection_rate"],
        "false_alarm_rate": rep["false_alarm_rate"],
    }
    version, decision, reload = release(
        model_name,
        parity["int8_dir"],
        metrics,
        lineage,
        map50_metric(data),
        promote_margin,
        server_url,
    )
    summary = {
        "run_dir": str(root),
        "dataset_hash": man["dataset_hash"],
        "images": man["images"],
        "split": sizes,
        "train_steps": trained["steps"],
        "map50": rep["map50"],
        "map": rep["map"],
        "per_class_ap50": rep["per_class_ap50"],
        "per_class_ap_50_95": rep["per_class_ap_50_95"],
        "threshold": rep["threshold"],
        "detection_rate": rep["detection_rate"],
        "false_alarm_rate": rep["false_alarm_rate"],
        "anomaly_auroc": rep["anomaly_auroc"],
        "parity": {v["name"]: v["map50"] for v in parity["variants"]},
        "int8_map50_drop": drop,
        "box_agreement": int8["box_agreement"],
        "int8_dir": parity["int8_dir"],
        **release_fields(model_name, version, decision, reload),
    }
    rows = [
        {
            "what": "images (train / val / test)",
            "value": f"{sizes['train']} / {sizes['val']} / {sizes['test']}",
        },
        {
            "what": "mAP@.5 fp32 torch / ONNX / INT8",
            "value": " / ".join(f"{v:.4f}" for v in summary["parity"].values()),
        },
        {
            "what": "detection / false-alarm rate",
            "value": f"{rep['detection_rate']:.3f} / {rep['false_alarm_rate']:.3f}",
        },
        {"what": "registry", "value": f"{model_name} v{version} ({summary['alias']})"},
        {"what": "promotion", "value": decision.reason},
    ]
    publish_metrics("vision-qc-summary", rows, "vision_qc flow summary")
    publish_model_card("vision-qc-model-card", parity["int8_dir"])
    log.info(
        "vision-qc v%s: mAP@.5 %.4f (INT8 %.4f), %s",
        version,
        rep["map50"],
        int8["map50"],
        decision.reason,
    )
    return summary
