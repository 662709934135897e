"""vision_qc benchmark (results in benchmarks/results/vision_qc.json): accuracy, INT8 parity,
latency and training time, on data the detector never saw.

Data: a training set of the three default synthetic surfaces (brushed metal, wood grain, PCB;
normal images only: defects are pasted on them during training, uniformly over the five
classes) whose ``test/`` part is the validation set, and a separately seeded test set of 510
images at 256 px whose defect classes come in other proportions (per surface: crack 36,
dent 24, hole 20, stain 20, scratch 10, plus 60 good).

Claims measured (targets from issue 5):
1. mAP@.5 >= 0.90 and COCO mAP@[.5:.95] on the test set (fp32 PyTorch).
2. Defective-image detection rate >= 97% at a false-alarm rate <= 2%: the threshold is set on
   the validation set (false-alarm rule, 2%) and both rates are measured on the test set.
3. INT8 (ONNX Runtime, static, body + FPN) mAP@.5 drop <= 1 point, and box agreement.
4. CPU latency at batch 1, 2 threads, in one run: INT8 ONNX Runtime vs fp32 ONNX Runtime
   (target >= 1.5x) and vs eager PyTorch (target >= 2x): medians of 60 calls each, measured
   in 6 rounds of blocks of 10 in rotating order, so a slow spell hits all alike.
5. Training time to target on 2 CPU cores (<= 15 minutes): wall time until the validation
   mAP@.5 first reaches 0.90 (validation runs after each epoch and is counted).

Run: ``.venv/bin/python benchmarks/vision_qc.py [--quick]`` (``--quick``: a smoke run on
tiny data; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, print_table, write_result
from core.compress.report import interleaved_latency, ort_session
from core.train import Callback, TrainerConfig, bf16_is_fast
from pipelines.vision_qc.config import DEFECTS, DataConfig, SynthConfig
from pipelines.vision_qc.data import load_mvtec
from pipelines.vision_qc.deploy import DeployConfig, deploy
from pipelines.vision_qc.evaluate import (
    coco_map,
    detect_all,
    evaluate_detections,
    image_scores,
    set_threshold,
)
from pipelines.vision_qc.model import load_detector_net
from pipelines.vision_qc.train import TrainConfig, image_tensor, train

RESULT = RESULTS / "vision_qc.json"
TARGET_MAP50 = 0.90
TEST_COUNTS = {"crack": 36, "dent": 24, "hole": 20, "stain": 20, "scratch": 10}
SURF = SynthConfig().surfaces  # brushed_metal, wood_grain, pcb


class TimeToTarget(Callback):
    """Validation mAP@.5 after every epoch; records when it first reaches the target."""

    def __init__(self, val, size: int, target: float, t0: float) -> None:
        self.val, self.size, self.target, self.t0 = val, size, target, t0
        self.images = torch.stack([image_tensor(s.path, size) for s in val])
        self.history: list[tuple[int, float, float]] = []
        self.reached_s: float | None = None

    @torch.no_grad()
    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        model = trainer.model
        model.eval()
        dets = []
        for i in range(0, len(self.images), 16):
            outs = model(list(self.images[i : i + 16]))
            for d, smp in zip(outs, self.val[i : i + 16], strict=True):
                scale = np.array([smp.width, smp.height] * 2, np.float32) / self.size
                dets.append(
                    {
                        "boxes": d["boxes"].numpy() * scale,
                        "scores": d["scores"].numpy(),
                        "labels": d["labels"].numpy(),
                    }
                )
        model.train()
        m50 = coco_map(self.val, dets, DEFECTS)[1]
        elapsed = time.perf_counter() - self.t0
        self.history.append((epoch, round(elapsed, 1), round(m50, 4)))
        print(f"epoch {epoch}: val mAP@.5 {m50:.4f} at {elapsed:.0f} s", flush=True)
        if self.reached_s is None and m50 >= self.target:
            self.reached_s = elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    # 14 passes over 288 images: 1008 steps, the CLI's default length (1000 steps)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--reuse-model",
        action="store_true",
        help="keep the model trained in --workdir by an earlier run and its training figures "
        "(results file); re-measure evaluation, INT8 and latency only",
    )
    a = ap.parse_args()
    torch.set_num_threads(2)
    quick = a.quick
    work = Path(a.workdir or tempfile.mkdtemp(prefix="dv-bench-vqc-"))
    surfaces = SURF[:2] if quick else SURF
    train_root = SynthConfig(
        out_dir=str(work / "train"),
        surfaces=surfaces,
        n_train_good=8 if quick else 96,
        n_test_good=2 if quick else 20,
        n_test_per_defect=1 if quick else 3,
        seed=0,
    )
    test_cfg = SynthConfig(
        out_dir=str(work / "test"),
        surfaces=surfaces,
        n_train_good=0,
        n_test_good=4 if quick else 60,
        test_counts={k: (1 if quick else v) for k, v in TEST_COUNTS.items()},
        seed=1,
    )
    from pipelines.vision_qc.synth import write_dataset

    t = time.perf_counter()
    write_dataset(train_root)
    write_dataset(test_cfg)
    synth_s = time.perf_counter() - t
    trainset = load_mvtec(work / "train", DEFECTS)
    val, test = trainset.where("test"), load_mvtec(work / "test", DEFECTS).samples
    print(
        f"synthesised in {synth_s:.0f} s: {len(trainset.where('train'))} normal training "
        f"images, {len(val)} validation, {len(test)} test"
    )

    epochs = 2 if quick else a.epochs
    t0 = time.perf_counter()
    ttt = TimeToTarget(val, 256, TARGET_MAP50, t0)
    cfg = TrainConfig(
        data=DataConfig(root=str(work / "train")),
        trainer=TrainerConfig(
            max_epochs=epochs,
            batch_size=4,
            precision="bf16" if bf16_is_fast() else "fp32",
            progress="off",
            eval_every_n_epochs=0,
            grad_clip_norm=10.0,
            optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
            schedule={"name": "cosine", "warmup_steps": 50},
        ),
        out_dir=str(work / "model"),
    )
    earlier = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    if a.reuse_model:
        if not (work / "model" / "model.safetensors").is_file() or "train" not in earlier:
            raise SystemExit("--reuse-model needs --workdir of an earlier run and its results")
        model_dir, trained = work / "model", earlier["train"]
    else:
        result, model_dir = train(cfg, callbacks=[ttt])
        trained = {
            "epochs": epochs,
            "steps": result.global_step,
            "seconds": round(time.perf_counter() - t0, 1),
            "time_to_map50_target_s": ttt.reached_s,
            "val_history": ttt.history,
        }

    from pipelines.vision_qc.predict import DefectDetector

    det = DefectDetector(model_dir, tile=False)
    val_dets, test_dets = detect_all(det, val), detect_all(det, test)
    report = evaluate_detections(
        test,
        test_dets,
        DEFECTS,
        image_scores(val_dets),
        np.array([s.defective for s in val]),
        work / "eval",
        target_far=0.02,
        rule="far",
    )
    set_threshold(model_dir, report.threshold, report.threshold_rule)
    dep = deploy(
        model_dir, trainset.where("train"), test, DeployConfig(out_dir=str(work / "deploy"))
    )

    x = np.ascontiguousarray(image_tensor(test[0].path, 256)[None].numpy())
    net = load_detector_net(model_dir)
    xt = torch.from_numpy(x)
    fp32 = ort_session(Path(dep.fp32_dir) / "model.onnx", 2)
    int8 = ort_session(Path(dep.int8_dir) / "model.onnx", 2)
    with torch.inference_mode():
        lat = interleaved_latency(
            {
                "eager_torch": lambda: net(xt),
                "ort_fp32": lambda: fp32.run(None, {"input": x}),
                "ort_int8": lambda: int8.run(None, {"input": x}),
            }
        )

    v = {p.name: p for p in dep.variants}
    data = {
        "quick": quick,
        "images": {
            "train_normal": len(trainset.where("train")),
            "val": len(val),
            "test": len(test),
        },
        "test_counts_per_surface": TEST_COUNTS,
        "train": trained,
        "test": {
            "map50": report.map50,
            "map": report.map,
            "per_class_ap50": report.per_class_ap50,
            "per_class_ap_50_95": report.per_class_ap_50_95,
            "threshold": report.threshold,
            "threshold_rule": report.threshold_rule,
            "detection_rate": report.detection_rate,
            "false_alarm_rate": report.false_alarm_rate,
            "anomaly_auroc": report.anomaly_auroc,
        },
        "int8": {
            "map50_fp32_torch": v["fp32_torch"].map50,
            "map50_fp32_onnx": v["fp32_onnx"].map50,
            "map50_int8": v["int8_onnx"].map50,
            "map50_drop_points": round(100 * dep.map50_drop, 2),
            "box_agreement": v["int8_onnx"].box_agreement,
        },
        "latency_ms_b1": {k: round(t * 1e3, 2) for k, t in lat.items()},
        "speedup_int8_vs_ort_fp32": lat["ort_fp32"] / lat["ort_int8"],
        "speedup_int8_vs_eager": lat["eager_torch"] / lat["ort_int8"],
    }
    if not quick:  # benchmarks/vision_qc_heldout.py's part of the file stays
        write_result("vision_qc", {**data, **{k: earlier[k] for k in ("heldout",) if k in earlier}})
    reached = trained["time_to_map50_target_s"]
    ttt_s = f"{reached:.0f} s" if reached is not None else "not reached"
    print_table(
        "vision_qc (held-out synthetic test set)",
        ["claim", "measured", "target"],
        [
            ["mAP@.5 (fp32)", report.map50, ">= 0.90"],
            ["mAP@[.5:.95] (fp32)", report.map, "-"],
            ["detection rate", report.detection_rate, ">= 0.97"],
            ["false-alarm rate", report.false_alarm_rate, "<= 0.02"],
            ["INT8 mAP@.5 drop (points)", 100 * dep.map50_drop, "<= 1"],
            ["INT8 box agreement", v["int8_onnx"].box_agreement, "-"],
            ["INT8 ORT vs fp32 ORT (b1)", data["speedup_int8_vs_ort_fp32"], ">= 1.5x"],
            ["INT8 ORT vs eager PyTorch (b1)", data["speedup_int8_vs_eager"], ">= 2x"],
            ["training time to mAP@.5 0.90", ttt_s, "<= 900 s"],
        ],
    )


if __name__ == "__main__":
    main()
