"""vision_qc metrics: COCO mAP, per-class AP, and image-level detection / false-alarm rates.

* Box metrics: COCO mAP@[.5:.95] and mAP@.5 and per-class AP (``pycocotools``), on original
  image coordinates.
* Image level: an image's defect score is its highest detection score. The operating
  threshold is chosen on *validation* data: F1-optimal when validation has defective and
  good images, or with ``rule="far"`` the lowest threshold whose expected false-alarm rate
  on new good images is at most ``target_far`` (:func:`far_threshold`), moved midway up to
  the lowest defective score above it (the same validation detection rate, with a margin
  against false alarms on new images); that rule also serves
  when validation has no defective images (anomalib's known failure); with no good images, the
  lowest defective score. At that threshold, the detection rate on defective images and the
  false-alarm rate on good images.
* Plots beside the metrics: PR curves per class (IoU 0.5), the image-level confusion matrix
  and a grid of predictions drawn on images (PNG).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from pipelines.vision_qc.config import DataConfig
from pipelines.vision_qc.data import Sample
from pipelines.vision_qc.predict import DefectDetector


@dataclass
class EvalReport:
    map: float
    map50: float
    per_class_ap_50_95: dict[str, float]  # COCO AP@[.5:.95] per class
    per_class_ap50: dict[str, float]  # AP@.5 per class
    threshold: float
    threshold_rule: str  # how the threshold was chosen (or why the stored one was kept)
    detection_rate: float  # defective images with a detection above the threshold
    false_alarm_rate: float  # good images with a detection above the threshold
    images: int
    plots: list[str] = field(default_factory=list)
    anomaly_auroc: float | None = None  # image-level AUROC of the patch anomaly score

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def coco_map(
    samples: list[Sample], detections: list[dict[str, np.ndarray]], classes: tuple[str, ...]
) -> tuple[float, float, dict[str, float], np.ndarray | None]:
    """(mAP@[.5:.95], mAP@.5, per-class AP, COCOeval precision array) for xyxy pixel boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (s, d) in enumerate(zip(samples, detections, strict=True)):
        images.append({"id": i, "width": s.width, "height": s.height})
        for b, lab in zip(s.boxes, s.labels, strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": classes.index(lab) + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
        for b, sc, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(lab),
                    "score": float(sc),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                }
            )
    if not anns:
        return 0.0, 0.0, dict.fromkeys(classes, 0.0), None
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return 0.0, 0.0, dict.fromkeys(classes, 0.0), None
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxdets)
    per_class = {}
    for k, c in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[c] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return float(max(ev.stats[0], 0.0)), float(max(ev.stats[1], 0.0)), per_class, precision


def per_class_ap50(precision: np.ndarray | None, classes: tuple[str, ...]) -> dict[str, float]:
    """AP@.5 per class from COCOeval's precision array (IoU index 0 is 0.5)."""
    out = {}
    for k, c in enumerate(classes):
        p = precision[0, :, k, 0, -1] if precision is not None else np.array([-1.0])
        out[c] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return out


def image_scores(detections: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.array([float(d["scores"].max()) if len(d["scores"]) else 0.0 for d in detections])


def choose_threshold(
    scores: np.ndarray, defective: np.ndarray, target_far: float = 0.05, rule: str = "f1"
) -> tuple[float, str]:
    """Operating threshold on validation data (see module docstring); returns (threshold, rule).

    ``rule="f1"``: F1-optimal; ``rule="far"``: the lowest threshold whose expected false-alarm
    rate on new good images is at most ``target_far`` (:func:`far_threshold`)."""
    if rule not in ("f1", "far"):
        raise ConfigError(f"unknown threshold rule {rule!r}", fix="use f1 or far")
    scores, defective = np.asarray(scores, float), np.asarray(defective, bool)
    if len(scores) == 0:
        return 0.5, "default 0.5 (no validation images)"
    good, bad = scores[~defective], scores[defective]
    if len(bad) == 0 or (rule == "far" and len(good)):
        thr, why = far_threshold(good, target_far)
        above = bad[bad >= thr]
        if len(above):
            # the validation detection rate stays the same up to the lowest defective score
            # above the threshold: midway there leaves a margin on both sides for new images
            thr = (thr - 1e-6 + float(above.min())) / 2
            why += ", midway to the lowest defective score above"
        return thr, why + (" (validation has no defects)" if len(bad) == 0 else "")
    if len(good) == 0:
        return float(bad.min()), "lowest defective score (validation has no good images)"
    uniq = np.unique(scores)
    best_i, best_f1 = 0, -1.0
    for i, t in enumerate(uniq):
        tp = (bad >= t).sum()
        fp = (good >= t).sum()
        fn = (bad < t).sum()
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best_f1:
            best_i, best_f1 = i, f1
    # midway to the next lower validation score: the same F1 on validation, more margin on new data
    thr = float(uniq[best_i] if best_i == 0 else (uniq[best_i] + uniq[best_i - 1]) / 2)
    return thr, f"F1-optimal (F1 {best_f1:.3f})"


def far_threshold(good: np.ndarray, target_far: float) -> tuple[float, str]:
    """The lowest threshold whose *expected* false-alarm rate on new good images is at most
    ``target_far``, from ``n`` good validation scores. If ``k`` of them lie above the threshold,
    a new good image lies above it with probability ``(k + 1) / (n + 1)`` (order statistics),
    not ``k / n``: the plain quantile would let through about one good image in ``n`` more
    than the target. With too few good images even the highest score is not enough; the
    threshold then sits just above it and the reason says how many images are needed."""
    g = np.sort(np.asarray(good, float))[::-1]
    n = len(g)
    k = int(np.floor(target_far * (n + 1) + 1e-9)) - 1  # allowed exceedances
    if k < 0:
        why = "above every good validation image"
        if target_far > 0:
            need = int(np.ceil(1 / target_far - 1e-9)) - 1
            why += f": {n} are too few for a {target_far:.0%} false-alarm target (it needs {need})"
        return float(g[0]) + 1e-6, why
    k = min(k, n - 1)
    return float(g[k]) + 1e-6, (
        f"false-alarm rate <= {target_far:.0%} expected on new good images "
        f"({k} of {n} validation good images above)"
    )


def rates(scores: np.ndarray, defective: np.ndarray, threshold: float) -> tuple[float, float]:
    scores, defective = np.asarray(scores), np.asarray(defective, bool)
    hit = scores >= threshold
    det = float(hit[defective].mean()) if defective.any() else float("nan")
    far = float(hit[~defective].mean()) if (~defective).any() else float("nan")
    return det, far


def plot_all(
    out: Path,
    samples: list[Sample],
    detections: list[dict[str, np.ndarray]],
    classes: tuple[str, ...],
    precision: np.ndarray | None,
    threshold: float,
    max_grid: int = 12,
) -> list[str]:
    """PR curves, confusion matrix and a prediction grid as PNGs; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(5, 4))
    recall = np.linspace(0, 1, 101)
    for k, c in enumerate(classes):
        if precision is not None:
            p = precision[0, :, k, 0, -1]
            ax.plot(recall[p > -1], p[p > -1], label=c)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="PR curves (IoU 0.5)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=100)
    plt.close(fig)
    written.append("pr_curves.png")

    names = ("good", *classes)
    cm = np.zeros((len(names), len(names)), int)
    for s, d in zip(samples, detections, strict=True):
        true = names.index(s.labels[0]) if s.labels else 0
        keep = d["scores"] >= threshold
        pred = int(d["labels"][keep][d["scores"][keep].argmax()]) if keep.any() else 0
        cm[true, pred] += 1
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set(
        xticks=range(len(names)),
        yticks=range(len(names)),
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted (top detection)",
        ylabel="true (first label)",
        title="image-level confusion",
    )
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=7)
    plt.setp(ax.get_yticklabels(), fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    written.append("confusion_matrix.png")

    tiles = []
    for s, d in list(zip(samples, detections, strict=True))[:max_grid]:
        keep = d["scores"] >= threshold
        dets = [
            {"class": classes[int(lab) - 1], "score": float(sc), "bbox": [float(v) for v in b]}
            for b, sc, lab in zip(
                d["boxes"][keep], d["scores"][keep], d["labels"][keep], strict=True
            )
        ]
        tiles.append(draw_detections(s.path, dets, gt=s.boxes).resize((192, 192)))
    if tiles:
        cols = 4
        grid = Image.new("RGB", (cols * 192, ((len(tiles) + cols - 1) // cols) * 192))
        for i, t in enumerate(tiles):
            grid.paste(t, ((i % cols) * 192, (i // cols) * 192))
        grid.save(out / "predictions.png")
        written.append("predictions.png")
    return written


def draw_detections(
    image: str | Path,
    detections: list[dict[str, Any]],
    out: str | Path | None = None,
    gt: list[list[float]] | None = None,
) -> Any:
    """The image with predicted boxes (red, ``class score``) and ground truth (green); saved
    as PNG to ``out`` when given. Returns the PIL image."""
    from PIL import Image, ImageDraw

    from pipelines.vision_qc.data import rgb8

    im = rgb8(Image.open(image))
    draw = ImageDraw.Draw(im)
    for b in gt or []:
        draw.rectangle(b, outline=(0, 255, 0), width=2)
    for d in detections:
        b = d["bbox"]
        draw.rectangle(b, outline=(255, 0, 0), width=2)
        draw.text((b[0], max(b[1] - 10, 0)), f"{d['class']} {d['score']:.2f}", fill=(255, 0, 0))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out)
    return im


def evaluate_detections(
    samples: list[Sample],
    detections: list[dict[str, np.ndarray]],
    classes: tuple[str, ...],
    val_scores: np.ndarray,
    val_defective: np.ndarray,
    out_dir: str | Path | None = None,
    target_far: float = 0.05,
    rule: str = "f1",
    stored_threshold: float | None = None,
) -> EvalReport:
    """All metrics for ``detections`` on ``samples``, threshold chosen on the validation scores
    (with no validation images, ``stored_threshold``, the model's own, when given)."""
    m, m50, per_class, precision = coco_map(samples, detections, classes)
    if len(val_scores) == 0 and stored_threshold is not None:
        thr, why = float(stored_threshold), "the model's stored threshold (no validation images)"
    else:
        thr, why = choose_threshold(val_scores, val_defective, target_far, rule)
    defective = np.array([s.defective for s in samples])
    det, far = rates(image_scores(detections), defective, thr)
    report = EvalReport(
        m, m50, per_class, per_class_ap50(precision, classes), thr, why, det, far, len(samples)
    )
    if all("anomaly" in d for d in detections) and 0 < defective.sum() < len(defective):
        from sklearn.metrics import roc_auc_score

        report.anomaly_auroc = float(roc_auc_score(defective, [d["anomaly"] for d in detections]))
    if out_dir is not None:
        out = Path(out_dir)
        report.plots = plot_all(out, samples, detections, classes, precision, thr)
        (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


@dataclass
class EvalConfig:
    """Evaluation of a model directory on the held-out part of a data set."""

    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "data/runs/vision_qc/eval"  # metrics.json and the plots
    rule: str = "f1"  # threshold rule on validation: f1 | far
    target_far: float = 0.02  # false-alarm target (rule far, or validation without defects)
    write_threshold: bool = False  # store the chosen threshold in the model's config.json
    threads: int | None = None  # ONNX Runtime threads (ONNX model directories)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if self.rule not in ("f1", "far"):
            raise ConfigError(f"unknown threshold rule {self.rule!r}", fix="use f1 or far")
        if not 0.0 <= self.target_far < 1.0:
            raise ConfigError("target_far must lie in [0, 1)", fix="use e.g. 0.02")


def detect_all(
    detector: Any, samples: list[Sample], chunk: int = 32, progress: Any = None
) -> list[dict[str, Any]]:
    """Raw detections (every box above the score floor) for ``samples``, ``chunk`` at a time."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(samples), chunk):
        out += detector.raw_batch([s.path for s in samples[i : i + chunk]])
        if progress is not None:
            progress(min(i + chunk, len(samples)), len(samples))
    return out


def set_threshold(model_dir: str | Path, threshold: float, rule: str) -> None:
    """Store the operating threshold in a model directory's ``config.json`` (atomically)."""
    from core.artifacts import update_model_config

    update_model_config(model_dir, {"threshold": float(threshold), "threshold_rule": rule})


def evaluate(model_dir: str | Path, cfg: EvalConfig, progress: Any = None) -> EvalReport:
    """Metrics of ``model_dir`` on the held-out test part of ``cfg.data``, the threshold picked
    on its validation part (none: the model's stored threshold); writes ``cfg.out_dir``, and the
    model's threshold only with ``cfg.write_threshold`` (scoring new data never moves it)."""
    from core.artifacts import read_config
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.train import partition

    parts = partition(load_dataset(cfg.data), cfg.data, need_train=False)
    detector = DefectDetector(model_dir, tile=False, threads=cfg.threads)
    # one pass over validation and test images, with progress over both
    both = detect_all(detector, parts["val"] + parts["test"], progress=progress)
    val, test = both[: len(parts["val"])], both[len(parts["val"]) :]
    report = evaluate_detections(
        parts["test"],
        test,
        tuple(cfg.data.classes),
        image_scores(val),
        np.array([s.defective for s in parts["val"]], bool),
        cfg.out_dir,
        cfg.target_far,
        cfg.rule,
        stored_threshold=read_config(model_dir).get("threshold"),
    )
    if cfg.write_threshold:
        set_threshold(model_dir, report.threshold, report.threshold_rule)
    return report
