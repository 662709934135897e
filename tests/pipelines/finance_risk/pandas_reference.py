"""The feature definitions of ``features.py`` written the plain pandas way: the reference.

This is the recipe fraud notebooks use (``df.groupby("user").rolling(window, closed="left")``
over amounts) plus straightforward per-group code for what rolling cannot do. It shares no
code with ``features.py`` beyond the window parser, so an error in one shows up as a
difference from the other. It is slow on purpose (clarity first); ``benchmarks/finance_risk.py``
times it as the peer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.finance_risk.config import FeatureConfig, window_seconds

_DISTINCT = (("merchant", "merchant_id"), ("device", "device_id"), ("country", "country"))
PLURAL = {"merchant": "merchants", "device": "devices", "country": "countries"}


def _us(times: pd.Series) -> np.ndarray:
    """Timestamps as integer microseconds since the epoch (UTC)."""
    return (
        times.dt.tz_convert("UTC")
        .dt.tz_localize(None)
        .astype("datetime64[us]")
        .astype("int64")
        .to_numpy()
    )


def reference_features(df: pd.DataFrame, cfg: FeatureConfig | None = None) -> pd.DataFrame:
    """Features of every row of ``df`` (canonical columns), sorted by user, time and id."""
    cfg = cfg or FeatureConfig()
    df = df.sort_values(["user_id", "timestamp", "transaction_id"], kind="stable").reset_index(
        drop=True
    )
    for c in ("merchant_id", "device_id", "country"):
        if c not in df:
            df[c] = None
    out = pd.DataFrame({"transaction_id": df["transaction_id"], "user_id": df["user_id"]})
    out["amount"] = df["amount"].astype(float)
    out["log_amount"] = np.log1p(df["amount"])
    out["hour"] = df["timestamp"].dt.hour.astype(float)
    out["weekday"] = (df["timestamp"].dt.day_of_week + 1).astype(float)
    grouped = df.groupby("user_id", sort=False)
    for w in cfg.windows:
        roll = grouped.rolling(f"{window_seconds(w)}s", on="timestamp", closed="left")["amount"]
        for stat in ("count", "sum", "mean", "std", "max"):
            values = getattr(roll, stat)().to_numpy()  # groups in sorted order = df order
            if stat in ("count", "sum"):
                values = np.nan_to_num(values, nan=0.0)
            out[f"{stat}_{w}"] = values
    zw = cfg.zscore_window
    out["amount_z"] = (out["amount"] - out[f"mean_{zw}"]) / (out[f"std_{zw}"] + 1.0)
    out["amount_to_mean"] = out["amount"] / out[f"mean_{zw}"]
    t_us = _us(df["timestamp"])
    prev = np.full(len(df), np.nan)
    for _, idx in grouped.indices.items():
        times = t_us[idx]
        uniq = np.unique(times)
        pos = np.searchsorted(uniq, times, side="left")  # index of this instant
        has = pos > 0
        prev[idx[has]] = (times[has] - uniq[pos[has] - 1]) / 1e6
    out["secs_since_prev"] = prev
    for kind, col in _DISTINCT:
        first = df.groupby(["user_id", col], sort=False, dropna=True)["timestamp"].transform("min")
        new = (df["timestamp"] == first).astype(float)
        new[df[col].isna()] = np.nan
        out[f"new_{kind}"] = new.to_numpy()
        cap = max(window_seconds(w) for w in cfg.windows)
        age = (df["timestamp"] - first).dt.total_seconds().clip(upper=cap)
        age[(age == 0) | df[col].isna()] = np.nan
        out[f"secs_since_first_{kind}"] = age.to_numpy()
    dw = f"{window_seconds(cfg.distinct_window)}s"
    for kind, col in _DISTINCT:
        codes = df[col].astype("category").cat.codes.astype(float)  # -1 for missing
        frame = pd.DataFrame({"user_id": df["user_id"], "timestamp": df["timestamp"], "c": codes})
        n = (
            frame.groupby("user_id", sort=False)
            .rolling(dw, on="timestamp", closed="left")["c"]
            .apply(lambda x: len(set(x[x >= 0])), raw=True)
            .to_numpy()
        )
        out[f"distinct_{PLURAL[kind]}"] = np.nan_to_num(n, nan=0.0)
    # merchant risk: per merchant, labels sorted by the time they became known
    risk = np.full(len(df), np.nan)
    prior, weight = cfg.merchant_prior, cfg.merchant_prior_weight
    lab = df[df["label"].notna() & df["label_time"].notna()] if "label" in df else df.iloc[:0]
    by_merchant = {}
    for m, g in lab.groupby("merchant_id"):
        g = g.sort_values("label_time", kind="stable")
        by_merchant[m] = (_us(g["label_time"]), g["label"].to_numpy(dtype=float))
    for i, (m, t) in enumerate(zip(df["merchant_id"], t_us, strict=True)):
        if m is None or (isinstance(m, float) and np.isnan(m)):
            continue
        times, labels = by_merchant.get(m, (np.empty(0, np.int64), np.empty(0)))
        k = np.searchsorted(times, t, side="left")  # labels known strictly before t
        risk[i] = (labels[:k].sum() + prior * weight) / (k + weight)
    out["merchant_risk"] = risk
    for w in cfg.merchant_windows:
        width = window_seconds(w) * 1_000_000
        n = np.full(len(df), np.nan)
        for _, idx in df.groupby("merchant_id", sort=False).indices.items():
            times = np.sort(t_us[idx])  # the merchant's transactions, any user
            mine = t_us[idx]
            n[idx] = np.searchsorted(times, mine, "left") - np.searchsorted(
                times, mine - width, "left"
            )
        out[f"merchant_tx_{w}"] = n
    return out
