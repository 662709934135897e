"""``make demo``: the end-to-end job on the embedded defaults.

1. The training engine on real digits: SIGKILL mid-run, resume, bit-identical check
   (:mod:`core.reference.demo`).
2. The reference Prefect flow (embedded temporary Prefect server, ``PREFECT_HOME`` under the
   data root): train → evaluate → INT8 → parity gate → register → promote.
3. A summary table: metric, fp32 vs INT8 latency and size, registry version and alias.
4. The vision_qc flow on two synthetic surfaces: synthesise → validate → split → train →
   evaluate → INT8 → parity gate → register → promote, and its table (mAP, parity, rates).
5. The medical_ct flow on a few chest phantoms (DICOM series): synthesise → validate → train
   → evaluate → INT8 → parity gate → register → promote, and its table (Dice, CPM, parity).
6. The finance_risk flow on a generated transaction stream: synthesise → validate → features
   → train → evaluate → export → gate → register → promote, its table (PR-AUC, recall at 1%
   FPR, the alert budget), then a few events through the online scorer.
7. The nlp_service flow on generated messages: train (MiniLM fine-tuning) → evaluate (the
   hand-written set) → INT8 → gate → register → promote, its table, then a short
   conversation through the dialogue engine (state carried, corrected and referred back to).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_EPOCHS = 16  # 2 surfaces x 24 normal images, 4 per step: 192 steps (~2 min)
CT_DEMO_STEPS = 300  # 2 patches of 16x48x48 voxels on a 2.5 mm grid per step (~0.2 s each)


def main() -> None:
    from core.reference import demo as engine_demo

    engine_demo.main()
    from flows.reference import reference_flow

    Console().print(
        "[bold]reference flow[/]: ingest → train → evaluate → INT8 → gate → register → promote"
    )
    s = reference_flow(epochs=4)
    b = s["benchmark"]
    t = Table(title="DeepVerticals demo — digits reference flow")
    t.add_column("what")
    t.add_column("fp32", justify="right")
    t.add_column("INT8", justify="right")
    t.add_row("test accuracy", f"{s['fp32_accuracy']:.4f}", f"{s['int8_accuracy']:.4f}")
    for k in ("b1", "b8"):
        t.add_row(f"latency {k} (ms, ONNX Runtime)", f"{b['fp32'][k]:.3f}", f"{b['int8'][k]:.3f}")
    t.add_row(
        "size (KB)", f"{b['fp32']['size_bytes'] / 1e3:.1f}", f"{b['int8']['size_bytes'] / 1e3:.1f}"
    )
    t.add_row("registry", "", f"{s['model_name']} v{s['version']} ({s['alias']})")
    t.add_row("promotion", "", s["promotion_reason"])
    t.add_row("outputs", "", s["run_dir"])
    Console().print(t)
    vision_qc_demo()
    medical_ct_demo()
    finance_risk_demo()
    nlp_service_demo()


def vision_qc_demo() -> dict:
    """The vision_qc flow on small settings (two synthetic surfaces, a few minutes on 2 cores)."""
    from core.paths import data_root
    from core.train import TrainerConfig
    from flows.vision_qc import vision_qc_flow
    from pipelines.vision_qc.config import SynthConfig
    from pipelines.vision_qc.deploy import DeployConfig
    from pipelines.vision_qc.train import TrainConfig, default_trainer

    Console().print(
        "[bold]vision_qc flow[/]: synthesise → validate → split → train → evaluate → INT8 → "
        "gate → register → promote"
    )
    trainer: TrainerConfig = default_trainer()
    trainer.max_epochs, trainer.progress = DEMO_EPOCHS, "plain"
    s = vision_qc_flow(
        data_dir=str(data_root() / "vision_qc" / "demo"),
        synth=SynthConfig(surfaces=("brushed_metal", "pcb"), n_train_good=24),
        train_cfg=TrainConfig(trainer=trainer),
        # 26 test images (~30 boxes): one box moves mAP@.5 by ~3 points and box agreement by
        # ~3, so the demo's gate allows 3 points of mAP and 80% agreement (the product
        # defaults, 1 point and 90%, are for real test sets; see the benchmark). Measured: a
        # run that lost 1.2 points of mAP@.5 failed the 90% rule at 31 of 36 boxes, five
        # boxes whose scores sat at the threshold.
        deploy_cfg=DeployConfig(max_map50_drop=0.03, min_box_agreement=0.8),
    )
    t = Table(title="DeepVerticals demo — vision_qc flow (held-out synthetic test images)")
    t.add_column("what")
    t.add_column("value", justify="right")
    sp = s["split"]
    t.add_row("images train / val / test", f"{sp['train']} / {sp['val']} / {sp['test']}")
    t.add_row("mAP@.5 / mAP@[.5:.95] (fp32)", f"{s['map50']:.3f} / {s['map']:.3f}")
    p = s["parity"]
    t.add_row(
        "mAP@.5 torch / ONNX / INT8",
        f"{p['fp32_torch']:.3f} / {p['fp32_onnx']:.3f} / {p['int8_onnx']:.3f}",
    )
    t.add_row(
        "detection / false-alarm rate",
        f"{s['detection_rate']:.3f} / {s['false_alarm_rate']:.3f} (threshold {s['threshold']:.2f})",
    )
    t.add_row("anomaly AUROC", f"{s['anomaly_auroc']:.3f}" if s["anomaly_auroc"] else "-")
    t.add_row("registry", f"{s['model_name']} v{s['version']} ({s['alias']})")
    t.add_row("INT8 model", s["int8_dir"])
    Console().print(t)
    Console().print(
        "This is demo scale (two surfaces, 48 normal training images, a few minutes). The "
        "full-scale vision_qc benchmark (three surfaces, 510 test images, ~15 min on 2 cores; "
        "figures in README.md and benchmarks/results/vision_qc.json):\n"
        "  .venv/bin/python benchmarks/vision_qc.py"
    )
    _review_page("vision-qc", s["int8_dir"])
    return s


def _review_page(cli: str, model_dir: str) -> None:
    Console().print(
        f"Review it in the browser: .venv/bin/{cli} serve {model_dir}  "
        "then open http://127.0.0.1:8080/ui/"
    )


def medical_ct_demo() -> dict:
    """The medical_ct flow on small settings (4 training and 2 test phantom studies)."""
    from core.paths import data_root
    from flows.medical_ct import medical_ct_flow
    from pipelines.medical_ct.config import SynthConfig
    from pipelines.medical_ct.deploy import DeployConfig
    from pipelines.medical_ct.model import ModelConfig
    from pipelines.medical_ct.train import TrainConfig, default_trainer

    Console().print(
        "[bold]medical_ct flow[/]: synthesise DICOM → validate → train → evaluate → INT8 → "
        "gate → register → promote"
    )
    trainer = default_trainer()
    trainer.max_steps, trainer.progress, trainer.log_every_n_steps = CT_DEMO_STEPS, "plain", 50
    trainer.optimizer.lr = 1e-2
    # demo scale: a coarser grid (2.5 mm) and smaller patches than the product defaults
    # (1.5 mm, 32x64x64), so a model learns something in a minute on 2 cores
    model = ModelConfig(spacing_mm=(2.5, 2.5, 2.5), roi=(16, 48, 48))
    s = medical_ct_flow(
        data_dir=str(data_root() / "medical_ct" / "demo"),
        synth=SynthConfig(n_cases=4, shape=(128, 128), nodules=(3, 6), diameter_mm=(6.0, 25.0)),
        test_cases=2,
        train_cfg=TrainConfig(model=model, trainer=trainer),
        # 2 test studies: one nodule more or less moves the Dice by tens of points, so the
        # demo's gate only asks INT8 to agree with fp32 (the product gate is for real test sets)
        deploy_cfg=DeployConfig(calibration_patches=16, max_dice_drop=0.1, min_agreement=0.8),
    )

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    t = Table(title="DeepVerticals demo — medical_ct flow (test phantoms from other scanners)")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("studies train / test", f"{s['train']['cases']} / {s['test']['cases']}")
    t.add_row("nodules train / test", f"{s['train']['nodules']} / {s['test']['nodules']}")
    t.add_row("Dice (per case) / CPM (fp32)", f"{f(s['dice_mean'])} / {f(s['cpm'])}")
    t.add_row("sensitivity at 1 FP / FP per scan", f"{f(s['sensitivity_at_1fp'])} / "
              f"{s['fp_per_scan']:.1f}")  # fmt: skip
    p = s["parity"]
    t.add_row("Dice torch / ONNX / INT8", " / ".join(f(p[k]) for k in p))
    t.add_row("INT8 mask agreement / size ratio", f"{s['int8_agreement']:.3f} / "
              f"{s['size_ratio']:.2f}x")  # fmt: skip
    t.add_row("registry", f"{s['model_name']} v{s['version']} ({s['alias']})")
    t.add_row("INT8 model", s["int8_dir"])
    Console().print(t)
    Console().print(
        "This is demo scale (4 studies, 300 steps on a 2.5 mm grid: far from a usable model). "
        "The full-scale "
        "medical_ct benchmark (figures in README.md and benchmarks/results/medical_ct.json):\n"
        "  .venv/bin/python benchmarks/medical_ct.py"
    )
    _review_page("medical-ct", s["int8_dir"])
    return s


def finance_risk_demo() -> dict:
    """The finance_risk flow on a 4,000-user, 120-day stream (~0.6M transactions)."""
    import datetime as dt

    from core.paths import data_root
    from flows.finance_risk import finance_risk_flow
    from pipelines.finance_risk.config import SynthConfig
    from pipelines.finance_risk.predict import FraudScorer
    from pipelines.finance_risk.train import TrainConfig

    Console().print(
        "[bold]finance_risk flow[/]: synthesise → validate → features → train → evaluate → "
        "export → gate → register → promote"
    )
    data = data_root() / "finance_risk" / "demo.parquet"
    s = finance_risk_flow(
        data=str(data),
        synth=SynthConfig(n_users=4000, fraud_users=0.03),
        train_cfg=TrainConfig(trainer={"progress": "plain", "max_epochs": 6}),
    )
    r = s["test"]
    t = Table(title="DeepVerticals demo — finance_risk flow (the 21 days after training)")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("transactions (rejected)", f"{s['rows']} ({s['rejected']})")
    t.add_row("test frauds / days", f"{r['frauds']} / {r['days']:g}")
    t.add_row("PR-AUC / recall at 1% FPR", f"{r['pr_auc']:.3f} / {r['recall_at_1pct_fpr']:.3f}")
    t.add_row("precision / recall at the budget", f"{r['precision_at_budget']:.3f} / "
              f"{r['recall_at_budget']:.3f}")  # fmt: skip
    t.add_row("alerts per day (budget)", f"{r['alerts_per_day']:.1f} ({r['budget_per_day']:g})")
    t.add_row("money caught", f"{r['money_caught']:.1%}")
    t.add_row(
        "recall per scenario",
        ", ".join(f"{k} {v:.2f}" for k, v in r["per_scenario_recall"].items()),
    )
    t.add_row("registry", f"{s['model_name']} v{s['version']} ({s['alias']})")
    Console().print(t)
    import polars as pl

    scorer = FraudScorer(s["deployed_dir"])
    history = pl.read_parquet(data).filter(pl.col("user_id") == "u000001")
    for row in history.drop("label", "label_time", "scenario").to_dicts():  # the user's past
        scorer.score_event(row)
    last = history.row(-1, named=True)
    ev = {"transaction_id": "demo-1", "user_id": "u000001", "amount": 1450.0,
          "timestamp": last["timestamp"] + dt.timedelta(hours=2), "merchant_id": "m01999",
          "device_id": "new-phone", "country": "BR", "channel": "online"}  # fmt: skip
    d = scorer.score_event(ev)
    Console().print(
        f"online scorer: user u000001's {history.height} transactions replayed, then one of "
        f"{ev['amount']:g} from a new device in Brazil, two hours after the last: score "
        f"{d['score']:.3f}, alert {d['alert']}, top features "
        + ", ".join(f"{f['feature']} ({f['contribution']:+.2f})" for f in d["top_features"][:3])
    )
    Console().print(
        "Demo scale. The finance_risk benchmark (5M-row features against pandas, online "
        "latency, PR-AUC on own and held-out simulators; README.md and "
        "benchmarks/results/finance_risk.json):\n  .venv/bin/python benchmarks/finance_risk.py"
    )
    _review_page("finance-risk", s["deployed_dir"])
    return s


def nlp_service_demo() -> dict:
    """The nlp_service flow at demo scale (50 messages per intent, 2 epochs: ~2.5 min)."""
    from flows.nlp_service import nlp_service_flow
    from pipelines.nlp_service.config import SynthConfig, TrainConfig
    from pipelines.nlp_service.predict import DialogueEngine

    Console().print(
        "[bold]nlp_service flow[/]: generate → train → evaluate → INT8 → gate → register → promote"
    )
    s = nlp_service_flow(train_cfg=TrainConfig(synth=SynthConfig(per_intent=50), epochs=2))
    e, p = s["eval"], s["parity"]
    t = Table(title="DeepVerticals demo — nlp_service flow")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("intent accuracy, 146 hand-written messages", f"{e['accuracy_independent']:.3f}")
    t.add_row("intent accuracy, generated (another seed)", f"{e['accuracy_synthetic']:.3f}")
    t.add_row(
        "out-of-scope precision / recall", f"{e['oos_precision']:.3f} / {e['oos_recall']:.3f}"
    )
    t.add_row(
        "slot F1 / joint goal accuracy", f"{e['slot_f1']:.3f} / {e['joint_goal_accuracy']:.3f}"
    )
    t.add_row("INT8 vs fp32: cosine / speed-up", f"{p['cosine_mean']:.4f} / {p['speedup']:.2f}x")
    t.add_row("registry", f"{s['model_name']} v{s['version']} ({s['alias']})")
    Console().print(t)
    engine = DialogueEngine(s["deployed_dir"], Path(s["run_dir"]) / "demo_conversations.sqlite")
    cid = engine.start()
    for msg in (
        "hi there",
        "my order 4821339 never arrived",
        "sorry, I meant order 5550123",
        "no wait, the order I mentioned before",
        "can I talk to a real person?",
    ):
        r = engine.message(cid, msg)
        Console().print(f"  you> {msg}")
        Console().print(
            f"  bot> {r['reply']}  [dim]({r['intent']} {r['confidence']:.2f}; state "
            f"{r['state'] or '{}'}{'; escalate: ' + r['escalate_reason'] if r['escalate'] else ''})[/]"
        )
    engine.close()
    Console().print(
        "Demo scale. The nlp_service benchmark (hand-written and held-out messages, few-shot, "
        "state, INT8 serving; README.md and benchmarks/results/nlp_service.json):\n"
        "  .venv/bin/python benchmarks/nlp_service.py"
    )
    _review_page("nlp-service", s["deployed_dir"])
    return s


if __name__ == "__main__":
    main()
