"""The domain's metrics: intent accuracy, macro-F1, per-intent table, confusion matrix,
out-of-scope precision/recall; slot precision/recall/F1; joint goal accuracy of dialogues.

Everything takes an analyzer (``model.Analyzer``: PyTorch or ONNX Runtime, fp32 or INT8), so
the served model is judged the same way as the trained one. Slots are scored on normalized
values (``state.normalize``): a span counts when its type and value match a gold one. Joint
goal accuracy: the share of dialogue turns after which the tracked state equals the gold
state exactly. Not here: training (``train.py``), the data sets (``data.py``, ``synth.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.nlp_service.config import OOS
from pipelines.nlp_service.data import Example
from pipelines.nlp_service.state import StateTracker, normalize


def intent_report(analyzer: Any, examples: list[Example]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the intents present, per-intent rows, confusion, OOS P/R."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    got = [a.intent for a in analyzer.analyze([e.text for e in examples])]
    gold = [e.intent for e in examples]
    labels = [k for k in analyzer.intents if k in set(gold) | set(got)]
    p, r, f, n = precision_recall_fscore_support(gold, got, labels=labels, zero_division=0)
    present = [i for i, k in enumerate(labels) if k in set(gold)]
    rows = {
        k: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(n[i]),
        }
        for i, k in enumerate(labels)
    }
    oos = rows.get(OOS, {"precision": 0.0, "recall": 0.0})
    errors = Counter((g, x) for g, x in zip(gold, got, strict=True) if g != x)
    return {
        "n": len(examples),
        "accuracy": float(np.mean([g == x for g, x in zip(gold, got, strict=True)])),
        "macro_f1": float(np.mean([f[i] for i in present])),
        "oos_precision": float(oos["precision"]),
        "oos_recall": float(oos["recall"]),
        "per_intent": rows,
        "labels": labels,
        "confusion": confusion_matrix(gold, got, labels=labels).tolist(),
        "top_confusions": [
            {"gold": g, "predicted": x, "count": c} for (g, x), c in errors.most_common(10)
        ],
    }


def slot_scores(analyzer: Any, examples: list[Example]) -> dict[str, float]:
    """Micro precision/recall/F1 of ``(slot, normalized value)`` pairs."""
    tp = fp = fn = 0
    if not examples:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 0}
    for e, a in zip(examples, analyzer.analyze([e.text for e in examples]), strict=True):
        gold = Counter((s.slot, normalize(s.slot, e.text[s.start : s.end])) for s in e.slots)
        got = Counter((s, normalize(s, v)) for s, v in a.slots)
        hit = sum((gold & got).values())
        tp, fp, fn = tp + hit, fp + sum(got.values()) - hit, fn + sum(gold.values()) - hit
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "n": len(examples)}


def joint_goal_accuracy(analyzer: Any, dialogues: list[Any]) -> dict[str, float]:
    """Share of turns whose tracked state equals the gold state (and per-slot accuracy)."""
    turns = ok = slot_ok = slot_n = 0
    texts = [t.text for d in dialogues for t in d.turns]
    analyses = iter(analyzer.analyze(texts))
    for d in dialogues:
        tracker = StateTracker()
        for t in d.turns:
            a = next(analyses)
            state = tracker.update(t.text, a.intent, a.slots)
            turns += 1
            ok += state == t.state
            for k, v in t.state.items():
                slot_n += 1
                slot_ok += state.get(k) == v
    return {
        "joint_goal_accuracy": ok / turns if turns else 0.0,
        "slot_accuracy": slot_ok / slot_n if slot_n else 0.0,
        "turns": turns,
    }


def confusion_plot(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The confusion matrix as a PNG (rows: gold, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cm = report["labels"], np.array(report["confusion"])
    fig, ax = plt.subplots(figsize=(0.42 * len(labels) + 3, 0.42 * len(labels) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, j in zip(*np.nonzero(cm), strict=True):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
