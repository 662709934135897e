"""vision_qc metrics: COCO mAP, per-class AP, and image-level detection / false-alarm rates.

* Box metrics: COCO mAP@[.5:.95] and mAP@.5 and per-class AP (``pycocotools``), on original
  image coordinates.
* Image level: an image's defect score is its highest detection score. The operating
  threshold is chosen on *validation* data: F1-optimal when validation has defective and
  good images; when it has no defective images (anomalib's known failure), the threshold
  that keeps the false-alarm rate on good images at ``target_far``; with no good images, the
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

from pipelines.vision_qc.data import Sample


@dataclass
class EvalReport:
    map: float
    map50: float
    per_class_ap: dict[str, float]
    threshold: float
    threshold_rule: str
    detection_rate: float  # defective images with a detection above the threshold
    false_alarm_rate: float  # good images with a detection above the threshold
    images: int
    plots: list[str] = field(default_factory=list)

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


def image_scores(detections: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.array([float(d["scores"].max()) if len(d["scores"]) else 0.0 for d in detections])


def choose_threshold(
    scores: np.ndarray, defective: np.ndarray, target_far: float = 0.05
) -> tuple[float, str]:
    """Operating threshold on validation data (see module docstring); returns (threshold, rule)."""
    scores, defective = np.asarray(scores, float), np.asarray(defective, bool)
    if len(scores) == 0:
        return 0.5, "default 0.5 (no validation images)"
    good, bad = scores[~defective], scores[defective]
    if len(bad) == 0:
        thr = float(np.quantile(good, 1 - target_far)) + 1e-6
        return thr, f"false-alarm rate {target_far:.0%} on good images (validation has no defects)"
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
    from PIL import Image, ImageDraw

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
        im = Image.open(s.path).convert("RGB")
        draw = ImageDraw.Draw(im)
        for b in s.boxes:
            draw.rectangle(b, outline=(0, 255, 0), width=2)
        for b, sc, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True):
            if sc >= threshold:
                draw.rectangle([float(v) for v in b], outline=(255, 0, 0), width=2)
                draw.text(
                    (float(b[0]), max(float(b[1]) - 10, 0)),
                    f"{classes[int(lab) - 1]} {sc:.2f}",
                    fill=(255, 0, 0),
                )
        tiles.append(im.resize((192, 192)))
    if tiles:
        cols = 4
        grid = Image.new("RGB", (cols * 192, ((len(tiles) + cols - 1) // cols) * 192))
        for i, t in enumerate(tiles):
            grid.paste(t, ((i % cols) * 192, (i // cols) * 192))
        grid.save(out / "predictions.png")
        written.append("predictions.png")
    return written


def evaluate_detections(
    samples: list[Sample],
    detections: list[dict[str, np.ndarray]],
    classes: tuple[str, ...],
    val_scores: np.ndarray,
    val_defective: np.ndarray,
    out_dir: str | Path | None = None,
    target_far: float = 0.05,
) -> EvalReport:
    """All metrics for ``detections`` on ``samples``, threshold chosen on the validation scores."""
    m, m50, per_class, precision = coco_map(samples, detections, classes)
    thr, rule = choose_threshold(val_scores, val_defective, target_far)
    det, far = rates(image_scores(detections), np.array([s.defective for s in samples]), thr)
    report = EvalReport(m, m50, per_class, thr, rule, det, far, len(samples))
    if out_dir is not None:
        out = Path(out_dir)
        report.plots = plot_all(out, samples, detections, classes, precision, thr)
        (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=2))
    return report
