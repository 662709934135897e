"""medical_ct metrics: per-case Dice, nodule detection, FROC and CPM as LUNA16 defines them,
size errors, and the plots (FROC curve, overlays through each nodule).

Detection follows the LUNA16 rules: a candidate hits a true nodule when its centre lies
within the nodule's radius (half its diameter) of the true centre, in patient mm; each true
nodule counts once (its best-scoring hit); further hits on a found nodule are neither true nor
false positives; every other candidate is a false positive. The FROC curve is sensitivity
against false positives per scan as the confidence threshold falls; the sensitivity at
1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan is the best one reached with no more false positives per
scan than that (the step curve, never an interpolation above what a threshold achieves), and
their mean is the CPM. Dice is per case, then averaged over cases (never over
pooled voxels), on nodules of at least ``min_dice_diameter_mm``: voxels of smaller true
nodules, and predicted components over them, are left out of both sides. Diameter error is
the equivalent-sphere diameter of each hit against the truth.

Not here: running the network (``model.py``), the nodule measurements (``nodules.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from pipelines.medical_ct.data import Volume
from pipelines.medical_ct.nodules import FoundNodule

log = logging.getLogger(__name__)

FROC_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class CaseResult:
    """One scan's figures."""

    case: str
    dice: float | None  # None: no nodule >= the Dice size in truth or prediction
    n_true: int
    hits: int
    false_positives: int
    candidates: list[dict[str, Any]] = field(default_factory=list)  # with "hit" (true id or 0)


@dataclass
class EvalReport:
    """What :func:`evaluate` measured."""

    n_cases: int
    n_nodules: int
    dice_mean: float | None
    dice_per_case: dict[str, float | None]
    sensitivity: float  # at the operating threshold (all candidates kept)
    fp_per_scan: float
    froc: dict[str, list[float]]  # "fps", "sensitivity" (the whole curve)
    sensitivity_at: dict[str, float]  # FP/scan -> sensitivity
    cpm: float
    sensitivity_at_1fp: float
    diameter_mae_mm: float | None
    volume_rel_error: float | None
    cases: list[CaseResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cases")
        return d


def _true_list(truth: list[dict[str, Any]], mask: np.ndarray, vol: Volume) -> list[dict[str, Any]]:
    """Ground-truth nodules (id, centre_mm, diameter_mm), from the JSON list when given, else
    from the mask's labels (equivalent-sphere diameter, centroid)."""
    if truth:
        return [
            {
                "id": int(t["id"]),
                "centre_mm": np.array(t["centre_mm"]),
                "diameter_mm": float(t["diameter_mm"]),
            }
            for t in truth
        ]
    out = []
    voxel = float(np.prod(vol.spacing))
    for k in np.unique(mask[mask > 0]):
        idx = np.argwhere(mask == k)
        d = (6 * len(idx) * voxel / np.pi) ** (1 / 3)
        out.append({"id": int(k), "centre_mm": vol.index_to_patient(idx.mean(0)), "diameter_mm": d})
    return out


def match(found: Sequence[FoundNodule], true: list[dict[str, Any]]) -> list[int]:
    """For each candidate, the id of the true nodule it hits (0: none), LUNA16 style (a
    candidate within several radii takes the nearest nodule)."""
    hits = []
    for f in found:
        best, best_d = 0, np.inf
        for t in true:
            d = float(np.linalg.norm(np.asarray(f.centre_mm) - t["centre_mm"]))
            if d <= t["diameter_mm"] / 2 and d < best_d:
                best, best_d = t["id"], d
        hits.append(best)
    return hits


def case_dice(
    pred: np.ndarray, mask: np.ndarray, true: list[dict[str, Any]], min_d: float
) -> float | None:
    """Dice of ``pred`` (labels) against ``mask`` on nodules >= ``min_d`` mm."""
    from scipy import ndimage

    small = [t["id"] for t in true if t["diameter_mm"] < min_d]
    truth = (mask > 0) & ~np.isin(mask, small)
    p = pred > 0
    if small:  # drop predicted components that lie on small nodules only
        lab, n = ndimage.label(p, structure=np.ones((3, 3, 3), bool))
        for k in range(1, n + 1):
            comp = lab == k
            on = np.unique(mask[comp])
            if np.isin(on[on > 0], small).all() and (on > 0).any():
                p &= ~comp
    denom = int(p.sum() + truth.sum())
    if denom == 0:
        return None
    return float(2 * (p & truth).sum() / denom)


def froc(cases: list[CaseResult], n_nodules: int) -> tuple[np.ndarray, np.ndarray]:
    """FP/scan and sensitivity as the threshold falls through every candidate's confidence."""
    rows = []
    for c in cases:
        seen: set[int] = set()
        for cand in sorted(c.candidates, key=lambda x: -x["confidence"]):
            h = cand["hit"]
            if h and (c.case, h) in seen:
                continue  # a second hit on a found nodule: ignored
            rows.append((cand["confidence"], 1 if h else 0, c.case, h))
            if h:
                seen.add((c.case, h))
    rows.sort(key=lambda r: -r[0])
    tp = fp = 0
    fps, sens = [0.0], [0.0]
    for _, is_tp, _, _ in rows:
        tp += is_tp
        fp += 1 - is_tp
        fps.append(fp / len(cases))
        sens.append(tp / max(n_nodules, 1))
    return np.array(fps), np.array(sens)


def sensitivity_at(
    fps: np.ndarray, sens: np.ndarray, levels: Sequence[float] = FROC_FPS
) -> dict[str, float]:
    """Best sensitivity with at most ``level`` false positives per scan, for each level."""
    return {str(f): float(sens[fps <= f + 1e-12].max()) for f in levels}


def evaluate_cases(
    cases: Sequence[Any],
    segment: Callable[[Volume], tuple[list[FoundNodule], np.ndarray]],
    min_dice_diameter_mm: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run ``segment(volume) -> (nodules, label map)`` on each case (objects with ``name``,
    ``volume``, ``mask``, ``truth``) and score it."""
    if not cases:
        raise DataError("no case to evaluate", fix="pass a folder of labelled cases")
    results: list[CaseResult] = []
    diam_err, vol_err = [], []
    n_nod = 0
    for i, c in enumerate(cases):
        found, pred = segment(c.volume)
        true = _true_list(c.truth, c.mask, c.volume)
        n_nod += len(true)
        hits = match(found, true)
        by_id = {t["id"]: t for t in true}
        best: dict[int, FoundNodule] = {}
        for f, h in zip(found, hits, strict=True):
            if h and (h not in best or f.confidence > best[h].confidence):
                best[h] = f
        for h, f in best.items():
            diam_err.append(abs(f.diameter_mm - by_id[h]["diameter_mm"]))
            tv = np.pi / 6 * by_id[h]["diameter_mm"] ** 3
            vol_err.append(abs(f.volume_mm3 - tv) / tv)
        cands = [{**f.as_dict(), "hit": h} for f, h in zip(found, hits, strict=True)]
        results.append(
            CaseResult(
                case=c.name,
                dice=case_dice(pred, c.mask, true, min_dice_diameter_mm),
                n_true=len(true),
                hits=len(best),
                false_positives=sum(1 for h in hits if not h),
                candidates=cands,
            )
        )
        if progress:
            progress(i + 1, len(cases))
    fps, sens = froc(results, n_nod)
    at = sensitivity_at(fps, sens)
    dices = {r.case: r.dice for r in results}
    valid = [d for d in dices.values() if d is not None]
    return EvalReport(
        n_cases=len(results),
        n_nodules=n_nod,
        dice_mean=float(np.mean(valid)) if valid else None,
        dice_per_case=dices,
        sensitivity=float(sum(r.hits for r in results) / max(n_nod, 1)),
        fp_per_scan=float(sum(r.false_positives for r in results) / len(results)),
        froc={"fps": [float(x) for x in fps], "sensitivity": [float(x) for x in sens]},
        sensitivity_at=at,
        cpm=float(np.mean(list(at.values()))),
        sensitivity_at_1fp=at["1.0"],
        diameter_mae_mm=float(np.mean(diam_err)) if diam_err else None,
        volume_rel_error=float(np.mean(vol_err)) if vol_err else None,
        cases=results,
    )


def plot_froc(report: EvalReport, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    fps, sens = report.froc["fps"], report.froc["sensitivity"]
    ax.step(fps, sens, where="post")
    ax.scatter(
        [float(k) for k in report.sensitivity_at], list(report.sensitivity_at.values()), c="r", s=12
    )
    ax.set_xscale("symlog", linthresh=0.125)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC (CPM {report.cpm:.3f}, {report.n_nodules} nodules, {report.n_cases} scans)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_overlay(
    vol: Volume, truth: np.ndarray, pred: np.ndarray, z: int, path: str | Path, title: str = ""
) -> Path:
    """Axial slice ``z`` (lung window) with truth (green) and prediction (red) contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(
        vol.array[z], cmap="gray", vmin=-1350, vmax=150, aspect=vol.spacing[1] / vol.spacing[2]
    )
    if (truth[z] > 0).any():
        ax.contour(truth[z] > 0, levels=[0.5], colors="lime", linewidths=0.8)
    if (pred[z] > 0).any():
        ax.contour(pred[z] > 0, levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(report: EvalReport, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(
        json.dumps({**report.summary(), "cases": [asdict(c) for c in report.cases]}, indent=1)
    )
    plot_froc(report, out / "froc.png")
    return out
