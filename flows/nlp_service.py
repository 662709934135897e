"""The nlp_service flow: messages to a served, quantized dialogue model.

``nlp_service_flow``: data (a user's JSONL/CSV, else generated messages + the hand-written
seed set) → train (full fine-tuning, or few-shot) → evaluate (the hand-written independent
set, and messages from another generator seed) → compress (ONNX, dynamic INT8, parity) →
gate (INT8 must agree with fp32) → register → promote-if-better (accuracy on the
hand-written set against production) → reload a running server. Each task wraps one
pipeline function; the weekly deployment lives in ``flows/deployments.py``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.tasks import (
    ParityGateError,
    publish_metrics,
    publish_model_card,
    release,
    release_fields,
    run_root,
)
from pipelines.nlp_service.config import SynthConfig, TrainConfig

MIN_COSINE = 0.99  # INT8 vs fp32 sentence embeddings, mean over the parity messages
MIN_AGREEMENT = 0.97  # INT8 vs fp32 intent decisions


@task(name="nlp-train", cache_policy=NO_CACHE, persist_result=False)
def train(cfg: TrainConfig) -> dict[str, Any]:
    import json

    from pipelines.nlp_service.train import train as run

    out = run(cfg)
    return {"model_dir": str(out), **json.loads((out / "metrics.json").read_text())}


@task(name="nlp-evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(model_dir: str, out_dir: str, synth_seed: int) -> dict[str, Any]:
    import json

    from pipelines.nlp_service.data import independent_set
    from pipelines.nlp_service.evaluate import (
        confusion_plot,
        intent_report,
        joint_goal_accuracy,
        slot_scores,
    )
    from pipelines.nlp_service.model import Analyzer
    from pipelines.nlp_service.synth import dialogues, messages

    an = Analyzer(model_dir, prefer="torch")
    ind = intent_report(an, independent_set())
    held_cfg = SynthConfig(per_intent=15, dialogues=60, seed=synth_seed)
    held = messages(held_cfg)
    syn = intent_report(an, held)
    slots = slot_scores(an, [e for e in held if e.slots])
    jga = joint_goal_accuracy(an, dialogues(held_cfg))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "independent.json").write_text(json.dumps(ind, indent=2))
    (out / "synthetic.json").write_text(json.dumps(syn, indent=2))
    confusion_plot(ind, out / "confusion_independent.png")
    return {
        "accuracy_independent": ind["accuracy"],
        "macro_f1_independent": ind["macro_f1"],
        "oos_recall": ind["oos_recall"],
        "oos_precision": ind["oos_precision"],
        "accuracy_synthetic": syn["accuracy"],
        "slot_f1": slots["f1"],
        "joint_goal_accuracy": jga["joint_goal_accuracy"],
    }


@task(name="nlp-compress", cache_policy=NO_CACHE, persist_result=False)
def compress(model_dir: str, out_dir: str) -> dict[str, Any]:
    from pipelines.nlp_service.deploy import compress as run

    return {"out_dir": out_dir, **run(model_dir, out_dir, min_cosine=MIN_COSINE)}


@task(name="nlp-gate", cache_policy=NO_CACHE)
def gate(report: dict[str, Any]) -> dict[str, Any]:
    reasons = []
    if report["served"] != "int8":
        reasons.append(report.get("why", "INT8 not kept"))
    if report["intent_agreement"] < MIN_AGREEMENT:
        reasons.append(f"INT8 intent agreement {report['intent_agreement']:.3f} < {MIN_AGREEMENT}")
    if reasons:
        raise ParityGateError(
            "; ".join(reasons),
            where="nlp_service INT8 gate",
            fix="serve the fp32 ONNX model (nlp-service compress) or retrain",
        )
    return report


def independent_accuracy(model_dir: Path) -> float:
    """The promotion metric: accuracy on the hand-written set, of the served (ONNX) model."""
    from pipelines.nlp_service.data import independent_set
    from pipelines.nlp_service.evaluate import intent_report
    from pipelines.nlp_service.model import Analyzer

    return intent_report(Analyzer(model_dir), independent_set())["accuracy"]


@flow(name="nlp-service")
def nlp_service_flow(
    data: str | None = None,
    train_cfg: TrainConfig | None = None,
    run_dir: str | None = None,
    model_name: str = "nlp-service",
    promote_margin: float = 0.0,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Messages to a registered, promoted dialogue model; returns a summary."""
    log = get_run_logger()
    root = run_root("nlp_service", run_dir)
    cfg = train_cfg or TrainConfig()
    cfg.data = data or cfg.data
    cfg.out_dir = str(root / "model")
    trained = train(cfg)
    rep = evaluate(trained["model_dir"], str(root / "eval"), cfg.synth.seed + 1000)
    parity = gate(compress(trained["model_dir"], str(root / "deployed")))
    metrics = {
        "accuracy_independent": rep["accuracy_independent"],
        "accuracy_synthetic": rep["accuracy_synthetic"],
        "joint_goal_accuracy": rep["joint_goal_accuracy"],
        "int8_cosine": parity["cosine_mean"],
    }
    lineage = {"data": cfg.data or "generated", "config": asdict(cfg), "flow": "nlp-service"}
    version, decision, reload = release(
        model_name,
        parity["out_dir"],
        metrics,
        lineage,
        independent_accuracy,
        promote_margin,
        server_url,
    )
    summary = {
        "run_dir": str(root),
        "train": trained,
        "eval": rep,
        "parity": parity,
        "deployed_dir": parity["out_dir"],
        **release_fields(model_name, version, decision, reload),
    }
    rows = [
        {"what": "accuracy, hand-written set", "value": f"{rep['accuracy_independent']:.3f}"},
        {"what": "accuracy, generated (other seed)", "value": f"{rep['accuracy_synthetic']:.3f}"},
        {"what": "out-of-scope recall", "value": f"{rep['oos_recall']:.3f}"},
        {
            "what": "slot F1 / joint goal accuracy",
            "value": f"{rep['slot_f1']:.3f} / {rep['joint_goal_accuracy']:.3f}",
        },
        {
            "what": "INT8 cosine / speed-up",
            "value": f"{parity['cosine_mean']:.4f} / {parity['speedup']:.2f}x",
        },
        {"what": "registry", "value": f"{model_name} v{version} ({summary['alias']})"},
        {"what": "promotion", "value": decision.reason},
    ]
    publish_metrics("nlp-service-summary", rows, "nlp_service flow summary")
    publish_model_card("nlp-service-model-card", parity["out_dir"])
    log.info(
        "nlp-service v%s: accuracy %.3f on hand-written messages, %s",
        version,
        rep["accuracy_independent"],
        decision.reason,
    )
    return summary
