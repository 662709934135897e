"""vision_qc evaluation: mAP from known detections, thresholds (also with no defects), plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.vision_qc.data import Sample
from pipelines.vision_qc.evaluate import choose_threshold, coco_map, evaluate_detections, rates

CLASSES = ("hole", "scratch")


def det(boxes, scores, labels):
    return {
        "boxes": np.array(boxes, float).reshape(-1, 4),
        "scores": np.array(scores, float),
        "labels": np.array(labels, int),
    }


@pytest.fixture
def samples(tmp_path):
    out = []
    for i, (boxes, labels) in enumerate(
        [([[10, 10, 30, 30]], ["hole"]), ([[40, 40, 90, 50]], ["scratch"]), ([], [])]
    ):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (100, 100), (120, 120, 120)).save(p)
        out.append(Sample(p, boxes=boxes, labels=labels, split="test", width=100, height=100))
    return out


def test_perfect_detections_score_1_and_a_miss_halves_the_class_set(samples):
    perfect = [
        det([[10, 10, 30, 30]], [0.9], [1]),
        det([[40, 40, 90, 50]], [0.8], [2]),
        det([], [], []),
    ]
    m, m50, per_class, _ = coco_map(samples, perfect, CLASSES)
    assert m == pytest.approx(1.0) and m50 == pytest.approx(1.0)
    assert per_class == pytest.approx({"hole": 1.0, "scratch": 1.0})
    wrong_class = [
        det([[10, 10, 30, 30]], [0.9], [1]),
        det([[40, 40, 90, 50]], [0.8], [1]),
        det([], [], []),
    ]
    m, _, per_class, _ = coco_map(samples, wrong_class, CLASSES)
    assert (
        per_class["scratch"] == 0.0
        and per_class["hole"] == pytest.approx(1.0)
        and m == pytest.approx(0.5)
    )
    shifted = [
        det([[20, 20, 40, 40]], [0.9], [1]),
        det([[40, 40, 90, 50]], [0.8], [2]),
        det([], [], []),
    ]
    assert (
        coco_map(samples, shifted, CLASSES)[2]["hole"] == 0.0
    )  # IoU 1/7 misses at every threshold


def test_threshold_rules_including_validation_without_defects():
    scores, defective = np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])
    thr, rule = choose_threshold(scores, defective)
    assert 0.2 < thr <= 0.8 and rule.startswith("F1-optimal (F1 1.000)")
    assert rates(scores, defective, thr) == (1.0, 0.0)
    good_only = np.linspace(0, 1, 101)
    thr, rule = choose_threshold(good_only, np.zeros(101, bool), target_far=0.05)
    assert "validation has no defects" in rule
    # (k + 1) / (n + 1) <= 5% allows k = 4 of the 101 good scores above the threshold, not 5
    assert (good_only >= thr).sum() == 4 and "4 of 101" in rule
    # far rule with defects: 101 good (k = 4 above allowed) and defective scores 1.5, 2, 3
    scores = np.concatenate([good_only, [1.5, 2.0, 3.0]])
    defective = np.arange(104) >= 101
    thr, rule = choose_threshold(scores, defective, target_far=0.05, rule="far")
    assert thr == pytest.approx((0.96 + 1.5) / 2) and "midway" in rule
    assert rates(scores, defective, thr) == (1.0, 0.0)  # the margin clears all good images
    thr, rule = choose_threshold(good_only[:10], np.zeros(10, bool), target_far=0.02, rule="far")
    assert thr > good_only[9] and "10 are too few" in rule and "it needs 49" in rule
    thr, rule = choose_threshold(np.array([0.3, 0.7]), np.array([True, True]))
    assert thr == 0.3 and "no good images" in rule


def test_report_writes_metrics_and_three_plots(samples, tmp_path):
    dets = [
        det([[10, 10, 30, 30]], [0.9], [1]),
        det([[40, 40, 90, 50], [0, 0, 5, 5]], [0.8, 0.1], [2, 1]),
        det([[50, 50, 60, 60]], [0.2], [1]),
    ]
    rep = evaluate_detections(
        samples,
        dets,
        CLASSES,
        val_scores=np.array([0.2, 0.9]),
        val_defective=np.array([False, True]),
        out_dir=tmp_path / "eval",
    )
    assert rep.detection_rate == 1.0 and rep.false_alarm_rate == 0.0 and rep.images == 3
    assert sorted(rep.plots) == ["confusion_matrix.png", "pr_curves.png", "predictions.png"]
    for name in rep.plots:
        with Image.open(tmp_path / "eval" / name) as im:
            assert im.size[0] > 100
    assert (tmp_path / "eval" / "metrics.json").is_file()
