"""Training: a time split that respects the label delay, three base models, the stacking head.

The split (:func:`time_split`) looks at the data the way a fraud team would on the day it
trains (``as_of``, the start of the test period): only labels whose ``label_time`` is at or
before ``as_of`` exist; the last ``maturity_days`` before ``as_of`` are left out because their
labels are still arriving; the ``valid_days`` before that fit the stacking head, its
calibration and its thresholds; everything earlier trains the base models. The test period is
the future and is scored with its final labels. Nothing is split at random.

The base models (``model.py``) are fitted on the training period: gradient boosting on the
features (float32), the GRU over event sequences through :class:`core.train.Trainer`, and an
isolation forest. Their scores on the validation period fit the head: a logistic regression
(calibrated out-of-fold), isotonic calibration per segment and per-segment thresholds that
spend the alert budget where the next alert is most likely fraud (or per-segment budgets when
given). Boosting and the isolation forest are written as ONNX (skl2onnx, parity-checked: the
only non-pickle format for them), the GRU as safetensors and ONNX.

Not here: metrics (``evaluate.py``), INT8 and the deployment gate (``deploy.py``), scoring
(``predict.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import TensorDataset

from core.artifacts import write_model_dir
from core.compress.export import export_onnx, export_sklearn
from core.errors import ConfigError, DataError
from core.serialization import tensors_for_safetensors
from core.train import Callback, LossTrace, Trainer, TrainerConfig, seed_everything
from core.typedconfig import check_types, deep_merge
from pipelines.finance_risk.config import FeatureConfig, IngestConfig, window_seconds
from pipelines.finance_risk.data import read_transactions
from pipelines.finance_risk.features import (
    SEQ_FEATURES,
    compute_features,
    event_vectors,
    feature_names,
    gather_sequences,
    profile,
    sequence_index,
)
from pipelines.finance_risk.model import (
    BASE_SCORES,
    Calibrator,
    Head,
    ModelConfig,
    SequenceNet,
    isolation_input,
    logit,
)

log = logging.getLogger(__name__)


def default_trainer() -> TrainerConfig:
    """The GRU's defaults: a few epochs of 512-event batches, AdamW, cosine schedule."""
    return TrainerConfig(
        max_epochs=12,
        batch_size=256,
        eval_every_n_epochs=0,
        grad_clip_norm=5.0,
        optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
        schedule={"name": "cosine", "warmup_steps": 20},
    )


@dataclass
class SplitConfig:
    """The time split (days)."""

    test_days: float = 21.0  # the future the model is judged on; as_of is where it starts
    maturity_days: float = 20.0  # before as_of: labels still arriving, left out
    valid_days: float = 14.0  # before that: fits the head, calibration and thresholds
    # The stream's first days have no full history: a 30-day window there holds less than
    # 30 days, a device looks new because the stream is. Training on them teaches the models
    # a world that never comes back (PSI of count_30d 1.09 against later data, measured), so
    # rows this close to the start do not train; None: the longest feature window.
    burn_in_days: float | None = None

    def __post_init__(self) -> None:
        check_types(self)
        if min(self.test_days, self.valid_days) <= 0 or self.maturity_days < 0:
            raise ConfigError("split days must be > 0 (maturity >= 0)", fix="use the defaults")


@dataclass
class TrainConfig:
    """One finance_risk training run."""

    data: str = "data/finance_risk/transactions.parquet"  # a CSV or Parquet file
    out_dir: str = "data/runs/finance_risk/model"  # model directory to write
    ingest: IngestConfig = field(default_factory=IngestConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    trainer: TrainerConfig = field(default_factory=default_trainer)
    alert_budget_per_day: float = 20.0  # alerts an analyst team can work per day
    segment_by: str | None = "channel"  # thresholds per value of this column (None: one)
    segment_budgets: dict[str, float] = field(default_factory=dict)  # fixed alerts/day per segment
    min_segment_positives: int = (
        8  # fewer frauds in a segment's validation rows: shared calibration
    )
    max_negatives: int = 400_000  # legitimate training rows kept (all frauds are kept)
    max_sequence_rows: int = 120_000  # legitimate GRU training rows at most (all frauds kept)
    sequence_negatives: int = 30  # legitimate rows per fraud in the GRU's training rows
    seed: int = 0

    def __post_init__(self) -> None:
        for name, cls in (
            ("ingest", IngestConfig),
            ("features", FeatureConfig),
            ("model", ModelConfig),
            ("split", SplitConfig),
        ):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        if isinstance(self.trainer, dict):
            self.trainer = TrainerConfig.from_dict(
                deep_merge(default_trainer().to_dict(), self.trainer)
            )
        self.trainer.seed = self.seed
        check_types(self)
        if self.alert_budget_per_day <= 0:
            raise ConfigError("alert_budget_per_day must be > 0", fix="use e.g. 20")
        if self.max_negatives < 1000 or self.max_sequence_rows < 1000:
            raise ConfigError("max_negatives and max_sequence_rows must be >= 1000", fix="defaults")


@dataclass
class Split:
    """Row positions (into the features frame) of each period, and its dates."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    as_of: dt.datetime
    valid_start: dt.datetime
    train_end: dt.datetime

    def describe(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "rows": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
        }


def time_split(
    frame: pl.DataFrame, cfg: SplitConfig, longest_window_s: float = 30 * 86400
) -> Split:
    """Split a features frame by time with the label delay (see the module docstring)."""
    if "label" not in frame.columns or frame["label"].null_count() == frame.height:
        raise DataError("the data has no labels", fix="training needs a label column (0/1)")
    ts = frame["timestamp"]
    end = ts.max()
    as_of = end - dt.timedelta(days=cfg.test_days)
    valid_end = as_of - dt.timedelta(days=cfg.maturity_days)
    valid_start = valid_end - dt.timedelta(days=cfg.valid_days)
    known = (
        frame["label"].is_not_null()
        & frame["label_time"].is_not_null()
        & (frame["label_time"] <= as_of)
    )
    t = ts.to_numpy()
    k = known.to_numpy()
    pos = np.arange(frame.height)

    def at(mask: np.ndarray) -> np.ndarray:
        return pos[mask]

    burn = cfg.burn_in_days * 86400 if cfg.burn_in_days is not None else longest_window_s
    start = np.datetime64((ts.min() + dt.timedelta(seconds=burn)).replace(tzinfo=None))
    train = at(k & (t >= start) & (t < np.datetime64(valid_start.replace(tzinfo=None))))
    valid = at(
        k
        & (t >= np.datetime64(valid_start.replace(tzinfo=None)))
        & (t < np.datetime64(valid_end.replace(tzinfo=None)))
    )
    test = at(
        (t >= np.datetime64(as_of.replace(tzinfo=None))) & frame["label"].is_not_null().to_numpy()
    )
    lab = frame["label"].to_numpy()
    for name, rows in (("training", train), ("validation", valid), ("test", test)):
        n_pos = int(np.nansum(lab[rows])) if len(rows) else 0
        if len(rows) == 0 or n_pos == 0:
            raise DataError(
                f"the {name} period has {len(rows)} labelled rows and {n_pos} frauds",
                where=f"{ts.min()} .. {end}",
                fix="give a longer stream or shorten split.test_days / maturity_days / valid_days",
            )
    return Split(train, valid, test, as_of, valid_start, valid_end)


def _sample_rows(
    rows: np.ndarray, y: np.ndarray, max_neg: int, rng: np.random.Generator
) -> np.ndarray:
    pos = rows[y[rows] == 1]
    neg = rows[y[rows] == 0]
    if len(neg) > max_neg:
        neg = rng.choice(neg, max_neg, replace=False)
    return np.sort(np.concatenate([pos, neg]))


def _bce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)


def fit_sequence(
    vectors: np.ndarray,
    index: np.ndarray,
    rows: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    callbacks: list[Callback] | None = None,
) -> tuple[SequenceNet, list[float]]:
    """Train the GRU on ``rows`` through :class:`core.train.Trainer`."""
    seed_everything(cfg.seed)
    x = torch.from_numpy(gather_sequences(vectors, index, rows))
    t = torch.from_numpy(y[rows].astype(np.float32))
    net = SequenceNet(len(SEQ_FEATURES) + 1, cfg.model.gru_hidden)
    trace = LossTrace()
    trainer = Trainer(net, cfg.trainer, loss_fn=_bce, callbacks=[trace, *(callbacks or [])])
    trainer.fit(TensorDataset(x, t))
    return net.eval(), trace.losses


def sequence_scores(
    net: SequenceNet, vectors: np.ndarray, index: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), 8192):
            x = torch.from_numpy(gather_sequences(vectors, index, rows[i : i + 8192]))
            out.append(net(x).numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


def fit_head(
    base: dict[str, np.ndarray],
    y: np.ndarray,
    segments: np.ndarray | None,
    days: float,
    cfg: TrainConfig,
) -> Head:
    """The stacking head from the validation period's base scores and labels."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    used = [k for k in BASE_SCORES if k in base]
    z = np.column_stack([base[k] for k in used])
    lr = LogisticRegression(C=1.0, max_iter=1000)
    folds = StratifiedKFold(
        n_splits=min(5, max(2, int(y.sum()))), shuffle=True, random_state=cfg.seed
    )
    oof = cross_val_predict(lr, z, y, cv=folds, method="predict_proba")[:, 1]
    lr.fit(z, y)
    seg = np.full(len(y), "*", object) if segments is None else np.asarray(segments, object)

    def iso(mask: np.ndarray) -> Calibrator:
        f = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(oof[mask], y[mask])
        return Calibrator([float(v) for v in f.X_thresholds_], [float(v) for v in f.y_thresholds_])

    calibrators = {"*": iso(np.ones(len(y), bool))}
    if segments is not None:
        for k in np.unique(seg):
            m = seg == k
            if (
                y[m].sum() >= cfg.min_segment_positives
                and (1 - y[m]).sum() >= cfg.min_segment_positives
            ):
                calibrators[str(k)] = iso(m)
    head = Head(
        weights=[float(w) for w in lr.coef_[0]],
        bias=float(lr.intercept_[0]),
        used=used,
        segment_by=cfg.segment_by if segments is not None else None,
        calibrators=calibrators,
        thresholds={},
        budget_per_day=cfg.alert_budget_per_day,
    )
    s = head.stack(base)
    p = head.probability(base, segments)
    head.thresholds = _thresholds(s, p, seg, days, cfg)
    return head


def _thresholds(
    s: np.ndarray, p: np.ndarray, seg: np.ndarray, days: float, cfg: TrainConfig
) -> dict[str, float]:
    """Per-segment cut-offs on the stacked score that spend the alert budget.

    Without fixed segment budgets, the ``budget x days`` validation rows with the highest
    calibrated probability (ties broken by the stacked score) are the alerts: the budget goes
    where the next alert is most likely fraud, so segments end up with different cut-offs.
    Each segment's threshold is the lowest stacked score among its alerts (above every score
    of the segment when it gets none). ``"*"`` is for segments not seen in validation."""
    never = float(np.nextafter(1.0, 2.0))
    out: dict[str, float] = {}
    if cfg.segment_budgets:
        for k in np.unique(seg):
            m = seg == k
            n = round(cfg.segment_budgets.get(str(k), 0.0) * days)
            top = np.sort(s[m])[::-1][:n]
            out[str(k)] = float(top[-1]) if n and len(top) else never
        n = round(cfg.alert_budget_per_day * days)
        top = np.sort(s)[::-1][:n]
        out["*"] = float(top[-1]) if len(top) else never
        return out
    n = max(1, round(cfg.alert_budget_per_day * days))
    order = np.lexsort((-s, -p))[:n]
    picked = np.zeros(len(s), bool)
    picked[order] = True
    for k in np.unique(seg):
        m = (seg == k) & picked
        out[str(k)] = float(s[m].min()) if m.any() else never
    out["*"] = float(s[picked].min())
    return out


def with_segment(feats: pl.DataFrame, frame: pl.DataFrame, segment_by: str | None) -> pl.DataFrame:
    """``feats`` with the segment column of the transactions ``frame`` joined."""
    if segment_by and segment_by in frame.columns and segment_by not in feats.columns:
        return feats.join(
            frame.select("transaction_id", segment_by), on="transaction_id", how="left"
        )
    return feats


def _features(cfg: TrainConfig) -> tuple[pl.DataFrame, tuple[str, ...], dict[str, Any]]:
    tx = read_transactions(cfg.data, cfg.ingest)
    log.info("read %d transactions (%d rejected) from %s", tx.frame.height, tx.rejected, cfg.data)
    feats = compute_features(tx.frame, cfg.features, tx.extra_features)
    return with_segment(feats, tx.frame, cfg.segment_by), tx.extra_features, tx.summary()


def train(
    cfg: TrainConfig,
    callbacks: list[Callback] | None = None,
    features: tuple[pl.DataFrame, tuple[str, ...], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Train every model and the head; returns the validation metrics and the model directory.

    ``features``: ``(features frame, extra feature names, ingest summary)`` computed already
    (a flow computes them on a cluster); by default they are computed from ``cfg.data``."""
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(cfg.seed)
    feats, extra, ingest = features if features is not None else _features(cfg)
    names = feature_names(cfg.features, extra)
    longest = max(window_seconds(w) for w in cfg.features.windows)
    split = time_split(feats, cfg.split, longest)
    y = feats["label"].fill_null(0).to_numpy().astype(np.int64)
    x = feats.select(names).to_numpy().astype(np.float32)
    tr = _sample_rows(split.train, y, cfg.max_negatives, rng)
    log.info("time split %s", split.describe())

    hgb = HistGradientBoostingClassifier(
        max_iter=cfg.model.boosting_iter,
        learning_rate=cfg.model.boosting_lr,
        max_leaf_nodes=cfg.model.boosting_leaves,
        l2_regularization=cfg.model.boosting_l2,
        min_samples_leaf=cfg.model.boosting_min_leaf,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=30,
        random_state=cfg.seed,
    ).fit(x[tr], y[tr])
    log.info("boosting: %d rounds", hgb.n_iter_)
    iso = IsolationForest(
        n_estimators=cfg.model.isolation_trees,
        max_samples=cfg.model.isolation_samples,
        random_state=cfg.seed,
    ).fit(isolation_input(x[rng.choice(split.train, min(len(split.train), 50_000), replace=False)]))

    va = split.valid
    base = {
        "boosting": logit(hgb.predict_proba(x[va])[:, 1]),
        "isolation": -iso.decision_function(isolation_input(x[va])),
    }
    net = None
    losses: list[float] = []
    vectors = index = None
    if cfg.model.sequence:
        vectors = event_vectors(feats.select(names).to_numpy(), names)
        index = sequence_index(feats, cfg.features.sequence_length)
        n_pos = int(y[split.train].sum())
        n_neg = min(cfg.sequence_negatives * n_pos, cfg.max_sequence_rows)
        rows = _sample_rows(split.train, y, n_neg, rng)
        net, losses = fit_sequence(vectors, index, rows, y, cfg, callbacks)
        base["sequence"] = sequence_scores(net, vectors, index, va).astype(np.float64)
    seg = (
        feats[cfg.segment_by].cast(pl.String).fill_null("").to_numpy()
        if cfg.segment_by in feats.columns
        else None
    )
    head = fit_head(base, y[va], seg[va] if seg is not None else None, cfg.split.valid_days, cfg)
    p_valid = head.probability(base, seg[va] if seg is not None else None)
    metrics = {
        "valid_pr_auc": float(average_precision_score(y[va], p_valid)),
        **{f"valid_pr_auc_{k}": float(average_precision_score(y[va], v)) for k, v in base.items()},
        "boosting_rounds": int(hgb.n_iter_),
        "train_rows": len(tr),
        "train_frauds": int(y[tr].sum()),
        "valid_rows": len(va),
        "valid_frauds": int(y[va].sum()),
        "split": split.describe(),
        "ingest": ingest,
        "sequence_loss_first": round(float(np.mean(losses[:10])), 4) if losses else None,
        "sequence_loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
    }
    log.info(
        "validation PR-AUC %.3f (%s)",
        metrics["valid_pr_auc"],
        {k: round(v, 3) for k, v in metrics.items() if k.startswith("valid_pr_auc_")},
    )
    out = Path(cfg.out_dir)
    medians = np.nanmedian(x[tr], axis=0)
    with write_model_dir(out) as tmp:
        par = {
            "boosting": export_sklearn(
                hgb,
                x[va],
                tmp / "boosting.onnx",
                hgb.predict_proba(x[va])[:, 1],
                output=1,
                column=1,
            ),
            "isolation": export_sklearn(
                iso,
                isolation_input(x[va]),
                tmp / "isolation.onnx",
                iso.decision_function(isolation_input(x[va])),
                output=1,
                atol=1e-4,
            ),
        }
        if net is not None:
            from safetensors.torch import save_file

            save_file(tensors_for_safetensors(net.state_dict()), str(tmp / "sequence.safetensors"))
            ex = torch.from_numpy(gather_sequences(vectors, index, va[:8]))
            par["sequence"] = export_onnx(net, ex, tmp / "sequence.onnx", atol=1e-5)
        metrics["export_parity_max_abs"] = {k: v.max_abs for k, v in par.items()}
        config = {
            "task": "finance_risk",
            "format": "onnx",
            "features": feature_names(cfg.features, extra),
            "extra_features": list(extra),
            "feature_config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.features).items()
            },
            "medians": [float(m) if np.isfinite(m) else None for m in medians],
            "drift_reference": {n: profile(x[split.train, j]) for j, n in enumerate(names)},
            "train_metrics": {"split": split.describe()},
            "head": head.to_json(),
            "sequence_hidden": cfg.model.gru_hidden if net is not None else None,
            "ingest": {
                "preset": cfg.ingest.preset,
                "column_map": cfg.ingest.column_map,
                "timezone": cfg.ingest.timezone,
            },
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (tmp / "model_card.md").write_text(_card(metrics, head, cfg))
    return metrics, out


def _card(m: dict[str, Any], head: Head, cfg: TrainConfig) -> str:
    thr = ", ".join(f"{k}: {v:.4f}" for k, v in head.thresholds.items())
    return (
        "# finance_risk fraud scorer\n\n"
        f"Stacking ensemble of {', '.join(head.used)} (weights {[round(w, 3) for w in head.weights]}), "
        f"isotonic calibration per {head.segment_by or 'stream'}, thresholds for "
        f"{head.budget_per_day:g} alerts/day ({thr}).\n\n"
        f"Trained on {m['train_rows']} rows ({m['train_frauds']} frauds) before "
        f"{m['split']['valid_start']}; head fitted on {m['valid_rows']} rows "
        f"({m['valid_frauds']} frauds); labels known as of {m['split']['as_of']}.\n\n"
        f"Validation PR-AUC {m['valid_pr_auc']:.3f}.\n"
    )
