"""finance_risk benchmark: features against pandas at 5M rows, Dask, the online scorer, accuracy
on the own generator and on a held-out simulator.

Sections (``--sections``, default all; a partial run keeps the other sections' figures):

- ``features``: ``compute_features`` (polars) and the pandas reference
  (``tests/pipelines/finance_risk/pandas_reference.py``, the ``groupby().rolling()`` recipe) on
  the same >= 5M generated rows: median of 2 polars runs vs one pandas run, the speed-up, the
  largest absolute difference and the NaN pattern; where the two differ most, each rolling
  sum/mean/std is recomputed exactly from its window's raw amounts (``exact_recheck``: which
  side is off); then Dask (a ``LocalCluster`` of two
  workers through prefect-dask) on the first million rows' users against one process.
- ``model``: train on a generated stream (the time split with the label delay), judge on its
  last 21 days: PR-AUC, recall at 1% FPR, the budget figures, per scenario; export parity.
  The same for the held-out simulator (``benchmarks/heldout_fraud.py``: another layout read
  through a column mapping, other users and other fraud patterns), trained on its own past as a
  customer would, plus the own-trained model applied to it (transfer); and the held-out
  features against the pandas reference.
- ``online``: the trained scorer event by event (features + ensemble + contributions), single
  client: p50/p99 ms and events/s; ``batch_equal``: a file scored event by event equals the
  batch path (every alert, scores within 1e-6).

Run: ``.venv/bin/python benchmarks/finance_risk.py [--sections features,model,online] [--rows 5000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import heldout_fraud
from benchmarks._common import RESULTS, print_table, write_result

NAME = "finance_risk"


def _max_diff(a: pl.DataFrame, ref: Any, names: list[str]) -> tuple[float, float, str, int]:
    """Largest absolute difference, largest difference relative above 1, the feature with the
    largest absolute one, and NaN-pattern mismatches."""
    worst, worst_rel, where, nan_mismatch = 0.0, 0.0, "", 0
    for n in names:
        x, y = a[n].to_numpy(), ref[n].to_numpy(dtype=float)
        nx, ny = np.isnan(x), np.isnan(y)
        nan_mismatch += int((nx != ny).sum())
        both = ~nx & ~ny
        if both.any():
            d = np.abs(x[both] - y[both])
            if d.max() > worst:
                worst, where = float(d.max()), n
            worst_rel = max(worst_rel, float((d / np.maximum(1.0, np.abs(y[both]))).max()))
    return worst, worst_rel, where, nan_mismatch


def _exact_window_stat(amounts: list[float], stat: str) -> float:
    """``stat`` of a window's amounts in exact rational arithmetic (std: ddof=1, the one
    rounding is the final square root)."""
    import math
    from fractions import Fraction

    xs = [Fraction(x) for x in amounts]
    n = len(xs)
    if stat == "sum":
        return float(sum(xs, Fraction(0)))
    if n == 0 or (stat == "std" and n < 2):
        return float("nan")
    mean = sum(xs, Fraction(0)) / n
    if stat == "mean":
        return float(mean)
    return math.sqrt(sum(((x - mean) ** 2 for x in xs), Fraction(0)) / (n - 1))


def exact_recheck(ours: pl.DataFrame, ref: Any, pdf: Any, cfg: Any, k: int = 25) -> dict:
    """Which side is off where polars and pandas differ: for every rolling sum, mean and std
    feature, the ``k`` rows where they differ most are recomputed exactly from the raw
    amounts of their window (``[t - w, t)`` of the same user, as both define it). Returns the
    largest error of each side against the exact value over those rows, and per feature."""
    from pipelines.finance_risk.config import window_seconds
    from tests.pipelines.finance_risk.pandas_reference import _us

    df = pdf.sort_values(["user_id", "timestamp", "transaction_id"], kind="stable")
    df = df.reset_index(drop=True)
    assert df["transaction_id"].tolist() == ref["transaction_id"].tolist()
    t_us = _us(df["timestamp"])
    amount = df["amount"].to_numpy(dtype=float)
    user = df["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    bounds = np.r_[starts, len(df)]
    per: dict[str, dict[str, float]] = {}
    for w in cfg.windows:
        span = window_seconds(w) * 1_000_000
        for stat in ("sum", "mean", "std"):
            name = f"{stat}_{w}"
            x, y = ours[name].to_numpy(), ref[name].to_numpy(dtype=float)
            d = np.where(np.isnan(x) | np.isnan(y), -1.0, np.abs(x - y))
            worst = np.argsort(d)[-k:]
            e_ours = e_pandas = 0.0
            for i in worst:
                u = np.searchsorted(bounds, i, side="right") - 1
                lo, hi = bounds[u], bounds[u + 1]
                ts = t_us[lo:hi]
                a = np.searchsorted(ts, t_us[i] - span, side="left") + lo
                b = np.searchsorted(ts, t_us[i], side="left") + lo  # closed="left": t excluded
                win = [v for v in amount[a:b] if not np.isnan(v)]
                exact = _exact_window_stat(win, stat)
                if np.isnan(exact):
                    continue
                e_ours = max(e_ours, abs(float(x[i]) - exact))
                e_pandas = max(e_pandas, abs(float(y[i]) - exact))
            per[name] = {"ours": e_ours, "pandas": e_pandas}
    return {
        "rows_per_feature": k,
        "ours_max_abs_error": max(v["ours"] for v in per.values()),
        "pandas_max_abs_error": max(v["pandas"] for v in per.values()),
        "per_feature": per,
    }


def features_section(rows: int, work: Path) -> dict[str, Any]:
    from flows.finance_risk import dask_features
    from pipelines.finance_risk.config import FeatureConfig, SynthConfig
    from pipelines.finance_risk.features import compute_features, feature_names
    from pipelines.finance_risk.synth import generate
    from tests.pipelines.finance_risk.pandas_reference import reference_features

    users = int(rows / 140) + 1
    t = time.perf_counter()
    frame = generate(SynthConfig(n_users=users, days=120, seed=3))
    synth_s = time.perf_counter() - t
    if frame.height < rows:  # the rate per user is random: scale up once
        users = int(users * rows / frame.height * 1.01) + 1
        t = time.perf_counter()
        frame = generate(SynthConfig(n_users=users, days=120, seed=3))
        synth_s = time.perf_counter() - t
    print(f"generated {frame.height} rows of {users} users in {synth_s:.1f} s", flush=True)
    cfg = FeatureConfig()
    names = feature_names(cfg)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        ours = compute_features(frame, cfg)
        times.append(time.perf_counter() - t)
    polars_s = statistics.median(times)
    print(f"polars: {polars_s:.1f} s; pandas reference running...", flush=True)
    pdf = frame.to_pandas()
    t = time.perf_counter()
    ref = reference_features(pdf, cfg)
    pandas_s = time.perf_counter() - t
    assert ours["transaction_id"].to_list() == ref["transaction_id"].tolist()
    diff, rel, where, nan_mismatch = _max_diff(ours, ref, names)
    t = time.perf_counter()
    exact = exact_recheck(ours, ref, pdf, cfg)
    exact["seconds"] = round(time.perf_counter() - t, 2)
    del pdf, ref
    first = frame.filter(
        pl.col("user_id").is_in(frame.head(1_000_000)["user_id"].unique().implode())
    )
    t = time.perf_counter()
    on_dask = dask_features(first, cfg, partitions=4, n_workers=2)
    dask_s = time.perf_counter() - t
    single = compute_features(first, cfg)
    return {
        "rows": frame.height,
        "users": users,
        "synth_seconds": round(synth_s, 2),
        "polars_seconds": round(polars_s, 2),
        "pandas_seconds": round(pandas_s, 2),
        "speedup_vs_pandas": round(pandas_s / polars_s, 1),
        "max_abs_diff": diff,
        "max_abs_diff_feature": where,
        "max_rel_diff": rel,  # relative above 1
        "nan_pattern_mismatches": nan_mismatch,
        "exact_recheck": exact,
        "dask_rows": first.height,
        "dask_seconds": round(dask_s, 2),
        "dask_equal": int(on_dask.equals(single)),
    }


def _judge(model: Path, frame: pl.DataFrame) -> dict[str, Any]:
    from pipelines.finance_risk.deploy import Ensemble, evaluate_model, model_features

    rep, _ = evaluate_model(model, model_features(Ensemble(model), frame))
    keys = ("rows", "frauds", "pr_auc", "recall_at_1pct_fpr", "precision_at_budget", "recall_at_budget",
            "alerts_per_day", "budget_per_day", "money_caught", "per_scenario_recall")  # fmt: skip
    return {k: getattr(rep, k) for k in keys}


def model_section(work: Path, users: int, heldout_users: int) -> dict[str, Any]:
    from pipelines.finance_risk.config import FeatureConfig, IngestConfig, SynthConfig
    from pipelines.finance_risk.data import read_transactions
    from pipelines.finance_risk.features import compute_features, feature_names
    from pipelines.finance_risk.synth import write_dataset
    from pipelines.finance_risk.train import TrainConfig, train
    from tests.pipelines.finance_risk.pandas_reference import reference_features

    own, _ = write_dataset(work / "own.parquet", SynthConfig(n_users=users, seed=21))
    t = time.perf_counter()
    metrics, model = train(
        TrainConfig(data=str(own), out_dir=str(work / "model"), trainer={"progress": "off"})
    )
    train_s = time.perf_counter() - t
    test = _judge(model, read_transactions(own).frame)
    ingest = IngestConfig(column_map=heldout_fraud.MAPPING)
    held = heldout_fraud.write(work / "heldout.csv", n_users=heldout_users, seed=77)
    tx = read_transactions(held, ingest)
    t = time.perf_counter()
    _, hmodel = train(
        TrainConfig(
            data=str(held),
            out_dir=str(work / "heldout_model"),
            ingest=ingest,
            trainer={"progress": "off"},
        )
    )
    held_train_s = time.perf_counter() - t
    heldout = _judge(hmodel, tx.frame)
    transfer = _judge(model, tx.frame)
    sub = tx.frame.filter(
        pl.col("user_id").is_in(tx.frame["user_id"].unique().sort().head(400).implode())
    )
    cfg = FeatureConfig()
    ours = compute_features(sub, cfg)
    diff, rel, _, nan_mismatch = _max_diff(
        ours, reference_features(sub.to_pandas(), cfg), feature_names(cfg)
    )
    hm = json.loads((hmodel / "metrics.json").read_text())
    return {
        "test": {
            **test,
            "train_seconds": round(train_s, 1),
            "valid_pr_auc": metrics["valid_pr_auc"],
            "base_valid_pr_auc": {
                k[13:]: round(v, 4) for k, v in metrics.items() if k.startswith("valid_pr_auc_")
            },
        },
        "export": {
            "parity_max_abs_diff": max(metrics["export_parity_max_abs"].values()),
            **metrics["export_parity_max_abs"],
        },
        "heldout": {
            **heldout,
            "rows_read": tx.rows_read,
            "rejected": tx.rejected,
            "train_seconds": round(held_train_s, 1),
            "valid_pr_auc": hm["valid_pr_auc"],
            "transfer_pr_auc": transfer["pr_auc"],
            "transfer_recall_at_1pct_fpr": transfer["recall_at_1pct_fpr"],
            "features_rows": sub.height,
            "features_max_abs_diff": diff,
            "features_max_rel_diff": rel,
            "features_nan_mismatches": nan_mismatch,
        },
        "model_dir": str(model),
    }


def online_section(model: Path, work: Path) -> dict[str, Any]:
    from pipelines.finance_risk.config import EVENT_FIELDS, SynthConfig
    from pipelines.finance_risk.data import read_transactions
    from pipelines.finance_risk.features import replay_order
    from pipelines.finance_risk.predict import FraudScorer
    from pipelines.finance_risk.synth import write_dataset

    path, _ = write_dataset(
        work / "stream.parquet", SynthConfig(n_users=400, days=60, seed=99, fraud_users=0.05)
    )
    frame = read_transactions(path).frame
    scorer = FraudScorer(model, work / "state", snapshot_every=10**9)
    lat = []
    t0 = time.perf_counter()
    for kind, r in replay_order(frame):
        if kind == "tx":
            ev = {k: r.get(k) for k in EVENT_FIELDS}
            t = time.perf_counter()
            scorer.score_event(ev)
            lat.append(time.perf_counter() - t)
        else:
            scorer.add_label(r["transaction_id"], int(r["label"]), r.get("merchant_id"))
    wall = time.perf_counter() - t0
    scorer.close()
    lat_ms = np.array(lat[200:]) * 1e3  # after a warm-up
    batch = FraudScorer(model).score_frame(frame)
    online = FraudScorer(model)
    online.score_file(path, work / "scores.parquet", progress=False)
    got = pl.read_parquet(work / "scores.parquet")
    j = batch.select("transaction_id", "score", "alert").join(got, on="transaction_id", suffix="_o")
    equal = (
        j.height == batch.height
        and bool((j["alert"] == j["alert_o"]).all())
        and float((j["score"] - j["score_o"]).abs().max()) <= 1e-6
    )
    return {
        "events": len(lat),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        "events_per_s": round(len(lat) / wall, 1),
        "durable_log": True,
        "batch_equal": int(equal),
        "batch_equal_rows": j.height,
        "batch_max_abs_diff": float((j["score"] - j["score_o"]).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="features,model,online")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--users", type=int, default=12_000, help="own stream for the model section")
    ap.add_argument("--heldout-users", type=int, default=8_000)
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    old = {}
    if (RESULTS / f"{NAME}.json").is_file():
        old = json.loads((RESULTS / f"{NAME}.json").read_text())
    out: dict[str, Any] = {k: v for k, v in old.items() if k not in ("benchmark", "machine")}
    with tempfile.TemporaryDirectory(prefix="dv-fr-bench-") as tmp:
        work = Path(tmp)
        # the Dask features run as a Prefect flow: a private Prefect home that exists
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        (work / "prefect").mkdir()
        os.environ.setdefault("DV_DATA_ROOT", str(work / "data"))
        if "features" in sections:
            out["features"] = features_section(args.rows, work)
            print(json.dumps(out["features"], indent=1), flush=True)
        model = None
        if "model" in sections:
            res = model_section(work, args.users, args.heldout_users)
            model = Path(res.pop("model_dir"))
            out.update(res)
            print(json.dumps(res, indent=1), flush=True)
        if "online" in sections:
            if model is None:
                from pipelines.finance_risk.config import SynthConfig
                from pipelines.finance_risk.synth import write_dataset
                from pipelines.finance_risk.train import TrainConfig, train

                own, _ = write_dataset(work / "own.parquet", SynthConfig(n_users=3000, seed=21))
                _, model = train(
                    TrainConfig(
                        data=str(own), out_dir=str(work / "model"), trainer={"progress": "off"}
                    )
                )
            out["online"] = online_section(model, work)
    path = write_result(NAME, out)
    f, te, h, o = (
        out.get("features", {}),
        out.get("test", {}),
        out.get("heldout", {}),
        out.get("online", {}),
    )
    print_table(
        "finance_risk",
        ["figure", "value", "target"],
        [
            ["features.rows", f.get("rows"), ">= 5,000,000"],
            ["features.speedup_vs_pandas", f.get("speedup_vs_pandas"), ">= 20"],
            ["features.max_abs_diff", f.get("max_abs_diff"), "<= 1e-9"],
            ["features.dask_equal", f.get("dask_equal"), "1"],
            ["online.p99_ms", o.get("p99_ms"), "<= 5"],
            ["online.events_per_s", o.get("events_per_s"), "reported"],
            ["online.batch_equal", o.get("batch_equal"), "1"],
            ["test.pr_auc", te.get("pr_auc"), ">= 0.80"],
            ["test.recall_at_1pct_fpr", te.get("recall_at_1pct_fpr"), "reported"],
            ["heldout.pr_auc", h.get("pr_auc"), "reported"],
            ["heldout.recall_at_1pct_fpr", h.get("recall_at_1pct_fpr"), "reported"],
            [
                "export.parity_max_abs_diff",
                out.get("export", {}).get("parity_max_abs_diff"),
                "<= 1e-5",
            ],
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
