"""Point-in-time features of each transaction, in batch (polars) and online (event by event).

Every feature of a transaction at time ``t`` is computed from what was known strictly before
``t``: the user's transactions with a timestamp ``< t`` (so a transaction never sees its own
amount or label, and transactions of one user at the same instant do not see each other), and
labels whose ``label_time < t``. The definitions (``FeatureConfig`` gives the windows):

- ``count_W, sum_W, mean_W, std_W, max_W``: the user's amounts in ``[t - W, t)`` for each
  window ``W`` (count and sum 0 when empty; mean and max NaN when empty; std, sample std
  with ddof 1, NaN below two amounts);
- ``amount_z``: ``(amount - mean_Z) / (std_Z + 1)`` for the z-score window ``Z`` (the ``+ 1``,
  one currency unit, keeps it finite for a history of equal amounts); ``amount_to_mean``:
  ``amount / mean_Z`` (NaN without history);
- ``secs_since_prev``: seconds since the user's latest earlier transaction (NaN for the first);
- ``new_merchant, new_device, new_country``: 1 when the user has no earlier transaction with
  this value, else 0 (NaN when the value is missing);
- ``secs_since_first_merchant`` (``_device``, ``_country``): seconds since the user's first
  transaction with this value, capped at the longest window (NaN when it is new or
  missing): a device first seen minutes ago is as telling as a new one, and the cap keeps
  the feature from growing with the age of the stream (a model trained on young histories
  would meet only "older than ever seen" later);
- ``distinct_merchants, distinct_devices, distinct_countries``: distinct values among the
  user's transactions in ``[t - D, t)`` for the distinct window ``D``;
- ``merchant_risk``: ``(frauds + prior * w) / (labels + w)`` over the merchant's labels known
  before ``t`` (any user), with ``merchant_prior`` and ``merchant_prior_weight`` (NaN without
  a merchant); ``merchant_tx_W`` for each merchant window: the merchant's transactions
  (any user) in ``[t - W, t)``;
- ``log_amount, hour, weekday``: of the transaction itself (UTC).

:func:`compute_features` runs them over a table (one pass per kind, sorted by user and time);
:class:`OnlineFeatures` keeps per-user and per-merchant state and returns the same values for
one event at a time, snapshots atomically and restores. The sequence model's input, the
user's last ``sequence_length`` earlier transactions as :data:`SEQ_FEATURES` vectors, comes
from :func:`sequence_index` in batch and :meth:`OnlineFeatures.history` online. Not here: the
models, or reading files.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.atomic import atomic_write_text
from core.errors import DataError
from pipelines.finance_risk.config import FeatureConfig, window_seconds

US = 1_000_000
KEYS = ("transaction_id", "user_id", "timestamp")
OFFSET_LIMIT = 2**62  # users x span (us) under which one offset key serves every user
_DISTINCT = (("merchant", "merchant_id"), ("device", "device_id"), ("country", "country"))
_PLURAL = {"merchant": "merchants", "device": "devices", "country": "countries"}


def feature_names(cfg: FeatureConfig, extra: tuple[str, ...] = ()) -> list[str]:
    """The model's input columns, in order."""
    names = ["amount", "log_amount", "hour", "weekday"]
    for w in cfg.windows:
        names += [f"count_{w}", f"sum_{w}", f"mean_{w}", f"std_{w}", f"max_{w}"]
    names += ["amount_z", "amount_to_mean", "secs_since_prev"]
    names += [f"new_{k}" for k, _ in _DISTINCT] + [f"secs_since_first_{k}" for k, _ in _DISTINCT]
    names += [f"distinct_{_PLURAL[k]}" for k, _ in _DISTINCT]
    names += ["merchant_risk", *(f"merchant_tx_{w}" for w in cfg.merchant_windows), *extra]
    return names


#: What the sequence model sees of each transaction (a view of its features, see
#: :func:`event_vectors`), plus a validity channel added per step.
SEQ_FEATURES = (
    "log_amount",
    "secs_since_prev",
    "new_merchant",
    "new_device",
    "new_country",
    "hour",
    "amount_z",
    "merchant_risk",
    "count_1h",
    "count_24h",
)


def event_vectors(feats: np.ndarray, names: list[str]) -> np.ndarray:
    """Rows of features (columns ``names``) as sequence-model vectors ``(n, len(SEQ_FEATURES))``,
    float32, scaled to about unit range, NaN replaced. The same function serves batch and online,
    so both give the same bytes."""
    feats = np.asarray(feats, np.float64)
    cols = [feats[:, names.index(n)] if n in names else np.zeros(len(feats)) for n in SEQ_FEATURES]
    x = np.stack(cols, axis=1)
    nan = np.isnan(x)
    x0 = np.where(nan, 0.0, x)
    out = np.empty_like(x0)
    out[:, 0] = x0[:, 0] / 5.0  # log_amount
    out[:, 1] = np.where(nan[:, 1], -1.0, np.log1p(x0[:, 1]) / 10.0)  # secs_since_prev
    out[:, 2:5] = x0[:, 2:5]  # new merchant / device / country
    out[:, 5] = x0[:, 5] / 23.0  # hour
    out[:, 6] = np.clip(x0[:, 6], -5.0, 20.0) / 5.0  # amount_z
    out[:, 7] = x0[:, 7] * 10.0  # merchant_risk
    out[:, 8] = np.log1p(x0[:, 8]) / 2.0  # count_1h
    out[:, 9] = np.log1p(x0[:, 9]) / 3.0  # count_24h
    return out.astype(np.float32)


def sequence_index(frame: pl.DataFrame, length: int) -> np.ndarray:
    """For each row of ``frame`` (sorted by user, time, id as :func:`compute_features` returns
    it), the row indices of the user's ``length`` latest transactions at earlier instants,
    oldest first, -1 where there are fewer: ``(n, length)`` int64."""
    user = frame["user_id"].to_numpy()
    ts = frame["timestamp"].dt.epoch("us").to_numpy()
    n = len(user)
    idx = np.arange(n)
    new_user = np.ones(n, bool)
    new_user[1:] = user[1:] != user[:-1]
    new_inst = new_user.copy()
    new_inst[1:] |= ts[1:] != ts[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    inst_start = np.maximum.accumulate(np.where(new_inst, idx, 0))
    lags = inst_start[:, None] - np.arange(length, 0, -1)[None, :]  # oldest first
    return np.where(lags >= user_start[:, None], lags, -1)


def gather_sequences(vectors: np.ndarray, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The sequence-model input of ``rows``: history (``index``) then the event itself, each
    step a vector plus a validity channel: ``(len(rows), length + 1, dim + 1)`` float32."""
    hist = index[rows]
    valid = hist >= 0
    steps = np.concatenate([np.where(valid, hist, 0), rows[:, None]], axis=1)
    x = vectors[steps]
    mask = np.concatenate([valid, np.ones((len(rows), 1), bool)], axis=1)
    x[~mask] = 0.0
    return np.concatenate([x, mask[..., None].astype(np.float32)], axis=2)


# ---------------------------------------------------------------- batch (polars)


def _prepare(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    df = frame.lazy().collect() if isinstance(frame, pl.LazyFrame) else frame
    missing = [c for c in (*KEYS, "amount") if c not in df.columns]
    if missing:
        raise DataError(
            f"features need the columns {missing}",
            fix="read the file with data.read_transactions first",
        )
    if df.height == 0:
        raise DataError("no transactions to compute features of", fix="give a non-empty table")
    for c in ("merchant_id", "device_id", "country"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String).alias(c))
    return df.sort(["user_id", "timestamp", "transaction_id"])


def user_features(frame: pl.DataFrame | pl.LazyFrame, cfg: FeatureConfig) -> pl.DataFrame:
    """The per-user features (everything but ``merchant_risk``) of every row, sorted by
    user, time and transaction id. Rows of one user must all be in ``frame``: a partition by
    user gives the same values as the whole table."""
    df = _prepare(frame)
    ts = pl.col("timestamp").dt.epoch("us")
    new_user = pl.col("user_id") != pl.col("user_id").shift(1)
    code = new_user.fill_null(True).cast(pl.Int64).cum_sum()
    t_min, t_max = df.select(ts.min().alias("a"), ts.max().alias("b")).row(0)
    longest = max(window_seconds(w) for w in cfg.windows) * US
    span = (t_max - t_min) + longest + US
    n_users = df["user_id"].n_unique()
    df = df.with_columns(_ts=ts, _u=code)
    # One sorted key over all users, each user's times offset by a span wider than any
    # window, lets one rolling pass serve every user (no window reaches the previous user).
    # When that key would overflow, the rolling runs per user instead (same values).
    offset = n_users * span < OFFSET_LIMIT
    if offset:
        df = df.with_columns(_key=(code - 1) * span + (pl.col("_ts") - t_min))

    def roll(e: pl.Expr, fn: str, w: str) -> pl.Expr:
        period = f"{window_seconds(w) * US}i"
        if offset:
            return getattr(e, f"rolling_{fn}_by")("_key", period, closed="left")
        return getattr(e, f"rolling_{fn}_by")("_ts", period, closed="left").over("user_id")

    a = pl.col("amount")
    one = a.is_not_null().cast(pl.Float64)
    cols: list[pl.Expr] = [
        a.log1p().alias("log_amount"),
        pl.col("timestamp").dt.hour().cast(pl.Float64).alias("hour"),
        pl.col("timestamp").dt.weekday().cast(pl.Float64).alias("weekday"),
    ]
    for w in cfg.windows:
        cols += [
            roll(one, "sum", w).fill_null(0.0).alias(f"count_{w}"),
            roll(a, "sum", w).fill_null(0.0).alias(f"sum_{w}"),
            roll(a, "mean", w).alias(f"mean_{w}"),
            roll(a, "std", w).alias(f"std_{w}"),
            roll(a, "max", w).alias(f"max_{w}"),
        ]
    # the latest earlier instant: the previous row's time at the first row of each
    # (user, time) group, carried over the rest of the group; -1 marks "none"
    first_of_instant = new_user.fill_null(True) | (pl.col("_ts") != pl.col("_ts").shift(1))
    prev = (
        pl.when(first_of_instant)
        .then(pl.when(new_user.fill_null(True)).then(-1).otherwise(pl.col("_ts").shift(1)))
        .forward_fill()
    )
    cols.append(
        pl.when(prev >= 0)
        .then((pl.col("_ts") - prev) / US)
        .otherwise(None)
        .alias("secs_since_prev")
    )
    for kind, col in _DISTINCT:
        c = pl.col(col)
        first = pl.col("_ts").min().over(["_u", _codes(col)])
        cols.append(
            pl.when(c.is_null())
            .then(None)
            .otherwise((pl.col("_ts") == first).cast(pl.Float64))
            .alias(f"new_{kind}")
        )
        cols.append(
            pl.when(c.is_null() | (pl.col("_ts") == first))
            .then(None)
            .otherwise(pl.min_horizontal(pl.col("_ts") - first, pl.lit(longest)) / US)
            .alias(f"secs_since_first_{kind}")
        )
    out = df.with_columns(cols)
    zw = cfg.zscore_window
    out = out.with_columns(
        ((a - pl.col(f"mean_{zw}")) / (pl.col(f"std_{zw}") + 1.0)).alias("amount_z"),
        (a / pl.col(f"mean_{zw}")).alias("amount_to_mean"),
    )
    out = out.with_columns(_distinct_counts(out, window_seconds(cfg.distinct_window) * US))
    return out.drop([c for c in ("_ts", "_key", "_u") if c in out.columns])


def _codes(col: str) -> pl.Expr:
    """Integer codes of a string column (equal strings, equal codes; null stays null)."""
    return pl.col(col).cast(pl.Categorical).to_physical().cast(pl.Int64)


def _distinct_counts(df: pl.DataFrame, window_us: int) -> list[pl.Series]:
    """Distinct values per user in ``[t - D, t)``, exactly, in integers.

    An earlier transaction at ``s`` counts at ``t`` when ``s < t <= s + D``. For each
    (user, value) the union of those intervals is a run of segments (a new one starts where
    two consecutive times are more than ``D`` apart), each a +1 at its first time and a -1 at
    its last time + D; the count at ``t`` is the sum of the marks strictly before ``t``.
    ``df`` is sorted by user and time and has the integer user code ``_u``. Everything runs
    on integer codes and sorts (grouped shifts over string keys were 5x slower, measured);
    every user's marks sum to zero, so one running sum over marks sorted by user and time is
    each user's own; the as-of join keeps ``df``'s row order."""
    q = df.select("_u", "_ts")
    out = []
    for kind, col in _DISTINCT:
        g = (
            df.select("_u", "_ts", _codes(col).alias("_c"))
            .filter(pl.col("_c").is_not_null())
            .sort(["_u", "_c", "_ts"])
        )

        def same(k: int) -> pl.Expr:  # the row k away is the same user and value
            return (pl.col("_u") == pl.col("_u").shift(k)) & (pl.col("_c") == pl.col("_c").shift(k))

        g = g.with_columns(
            start=~same(1).fill_null(False) | (pl.col("_ts") - pl.col("_ts").shift(1) > window_us),
            end=~same(-1).fill_null(False) | (pl.col("_ts").shift(-1) - pl.col("_ts") > window_us),
        )
        marks = pl.concat(
            [
                g.filter("start").select("_u", "_ts", pl.lit(1, pl.Int64).alias("d")),
                g.filter("end").select(
                    "_u", (pl.col("_ts") + window_us).alias("_ts"), pl.lit(-1, pl.Int64).alias("d")
                ),
            ]
        )
        marks = (
            marks.sort(["_u", "_ts"])
            .with_columns(n=pl.col("d").cum_sum())
            .unique(subset=["_u", "_ts"], keep="last", maintain_order=True)
            .select("_u", "_ts", "n")
        )
        j = q.join_asof(
            marks,
            on="_ts",
            by="_u",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        out.append(j["n"].fill_null(0).cast(pl.Float64).alias(f"distinct_{_PLURAL[kind]}"))
    return out


def merchant_features(frame: pl.DataFrame, cfg: FeatureConfig) -> list[pl.Series]:
    """The features that look across users, ``merchant_risk`` and ``merchant_tx_W``, of each
    row of ``frame`` (in its row order). They need the whole table, not a partition by user.

    ``merchant_risk`` counts the labels of the merchant whose ``label_time`` is before the
    row's time (an as-of join on integer merchant codes); ``merchant_tx_W`` is one rolling
    count over all merchants sorted by merchant and time, each merchant's times offset by a
    span wider than any window (as for users)."""
    prior, weight = cfg.merchant_prior, cfg.merchant_prior_weight
    q = frame.select(
        _codes("merchant_id").alias("_m"), pl.col("timestamp").dt.epoch("us").alias("_ts")
    ).with_row_index("_row")
    has = q.filter(pl.col("_m").is_not_null())
    labelled = "label" in frame.columns and "label_time" in frame.columns
    if labelled:
        lab = frame.select(
            _codes("merchant_id").alias("_m"),
            pl.col("label_time").dt.epoch("us").alias("_ts"),
            pl.col("label").cast(pl.Int64).alias("f"),
        ).filter(
            pl.col("_m").is_not_null() & pl.col("f").is_not_null() & pl.col("_ts").is_not_null()
        )
        known = (
            lab.group_by("_m", "_ts")
            .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("f").sum())
            .sort(["_m", "_ts"])
            .with_columns(pl.col("n").cum_sum().over("_m"), pl.col("f").cum_sum().over("_m"))
        )
    else:
        known = pl.DataFrame(schema={"_m": pl.Int64, "_ts": pl.Int64, "n": pl.Int64, "f": pl.Int64})
    by_m = has.sort(["_m", "_ts"])
    j = by_m.join_asof(
        known,
        on="_ts",
        by="_m",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    cols = [
        ((pl.col("f").fill_null(0) + prior * weight) / (pl.col("n").fill_null(0) + weight)).alias(
            "merchant_risk"
        )
    ]
    if cfg.merchant_windows:
        t0 = int(by_m["_ts"].min() or 0)
        longest = max(window_seconds(w) for w in cfg.merchant_windows) * US
        span = int((by_m["_ts"].max() or 0) - t0) + longest + US
        key = pl.col("_m") * span + (pl.col("_ts") - t0)
        one = pl.col("_ts").is_not_null().cast(pl.Float64)
        for w in cfg.merchant_windows:
            period = f"{window_seconds(w) * US}i"
            if (int(by_m["_m"].max() or 0) + 1) * span < OFFSET_LIMIT:
                e = one.rolling_sum_by(key, period, closed="left")
            else:
                e = one.rolling_sum_by("_ts", period, closed="left").over("_m")
            cols.append(e.fill_null(0.0).alias(f"merchant_tx_{w}"))
    scored = j.select("_row", *cols)
    full = q.select("_row").join(scored, on="_row", how="left").sort("_row")
    return [full[c] for c in ("merchant_risk", *(f"merchant_tx_{w}" for w in cfg.merchant_windows))]


def compute_features(
    frame: pl.DataFrame | pl.LazyFrame,
    cfg: FeatureConfig | None = None,
    extra: tuple[str, ...] = (),
) -> pl.DataFrame:
    """All features of every transaction in ``frame`` (canonical columns, see ``data.py``).

    Returns the key columns, ``amount``, the labels and ``scenario`` when present, and
    :func:`feature_names` as Float64 with NaN for missing values; rows sorted by user, time
    and transaction id."""
    cfg = cfg or FeatureConfig()
    out = user_features(frame, cfg)
    out = out.with_columns(merchant_features(out, cfg))
    return finish(out, cfg, extra)


def partition_by_user(frame: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    """``frame`` cut into ``n`` parts by a stable hash of ``user_id`` (every user whole in
    one part): the unit of work when features run on a cluster."""
    h = frame["user_id"].hash(seed=0) % n
    return [frame.filter(h == k) for k in range(n) if (h == k).any()]


def combine_partitions(
    parts: list[pl.DataFrame], cfg: FeatureConfig, extra: tuple[str, ...] = ()
) -> pl.DataFrame:
    """The :func:`user_features` of every partition joined into what :func:`compute_features`
    gives for the whole table: the cross-user features are computed on the joined rows."""
    out = pl.concat(parts).sort(["user_id", "timestamp", "transaction_id"])
    out = out.with_columns(merchant_features(out, cfg))
    return finish(out, cfg, extra)


def finish(out: pl.DataFrame, cfg: FeatureConfig, extra: tuple[str, ...] = ()) -> pl.DataFrame:
    """The output columns in their order, features as Float64 with NaN for missing."""
    names = feature_names(cfg, extra)
    keep = [c for c in (*KEYS, "label", "label_time", "scenario") if c in out.columns]
    feats = [pl.col(n).cast(pl.Float64).fill_null(float("nan")) for n in names if n != "amount"]
    return out.select(*keep, pl.col("amount").cast(pl.Float64), *feats)


# ---------------------------------------------------------------- online (event by event)


@dataclass
class _User:
    times: list[int] = field(default_factory=list)  # sorted, within the longest window
    amounts: list[float] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k, _ in _DISTINCT})
    first_seen: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: {} for k, _ in _DISTINCT}
    )
    instants: deque = field(default_factory=lambda: deque(maxlen=2))  # latest distinct times
    recent: list = field(default_factory=list)  # [time, event vector] of the latest events


def _ts_us(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if hasattr(value, "timestamp"):  # datetime (aware or UTC-naive)
        import datetime as dt

        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86400 + delta.seconds) * US + delta.microseconds
    raise DataError(f"timestamp {value!r} is not a datetime", fix="send ISO 8601 or a datetime")


class OnlineFeatures:
    """The batch feature definitions, one event at a time.

    :meth:`update` returns the features of a transaction from the state *before* it, then
    adds it to the state; :meth:`add_label` makes a label known (call it at its label time).
    Replaying a stream in time order (transactions before labels at the same instant, as
    :func:`replay_order` sorts them) gives, for every transaction, what
    :func:`compute_features` gives for the whole table. A user never seen is a cold start,
    not an error. :meth:`snapshot` writes the state atomically (JSON); :meth:`restore`
    reads it back.
    """

    def __init__(self, cfg: FeatureConfig | None = None, extra: tuple[str, ...] = ()) -> None:
        self.cfg = cfg or FeatureConfig()
        self.extra = tuple(extra)
        self.names = feature_names(self.cfg, self.extra)
        self._w = [(w, window_seconds(w) * US) for w in self.cfg.windows]
        self._keep = max(us for _, us in self._w)
        self._dw = window_seconds(self.cfg.distinct_window) * US
        self.users: dict[str, _User] = {}
        self.merchants: dict[str, list[int]] = {}  # merchant -> [labels known, frauds]
        self._mw = [(w, window_seconds(w) * US) for w in self.cfg.merchant_windows]
        self.merchant_times: dict[str, list[int]] = {}  # merchant -> sorted recent times
        self.events = 0  # transactions applied (the snapshot's position in a log)

    # -- features
    def features(self, event: dict[str, Any]) -> list[float]:
        """The features of ``event`` from the current state (the state is not changed)."""
        t = _ts_us(event["timestamp"])
        amount = float(event["amount"])
        u = self.users.get(str(event["user_id"]))
        nan = math.nan
        import datetime as dt

        when = dt.datetime.fromtimestamp(t / US, tz=dt.UTC)
        f: dict[str, float] = {
            "amount": amount,
            "log_amount": math.log1p(amount),
            "hour": float(when.hour),
            "weekday": float(when.isoweekday()),
        }
        end = bisect.bisect_left(u.times, t) if u else 0  # events strictly before t
        for w, us in self._w:
            start = bisect.bisect_left(u.times, t - us, 0, end) if u else 0
            win = np.asarray(u.amounts[start:end]) if u else np.empty(0)
            n = win.size
            f[f"count_{w}"] = float(n)
            f[f"sum_{w}"] = math.fsum(win) if n else 0.0
            f[f"mean_{w}"] = math.fsum(win) / n if n else nan
            f[f"std_{w}"] = float(np.std(win, ddof=1)) if n > 1 else nan
            f[f"max_{w}"] = float(win.max()) if n else nan
        zw = self.cfg.zscore_window
        f["amount_z"] = (amount - f[f"mean_{zw}"]) / (f[f"std_{zw}"] + 1.0)
        f["amount_to_mean"] = amount / f[f"mean_{zw}"] if f[f"count_{zw}"] else nan
        prev = None
        if u:
            earlier = [s for s in u.instants if s < t]
            prev = earlier[-1] if earlier else None
        f["secs_since_prev"] = (t - prev) / US if prev is not None else nan
        for kind, col in _DISTINCT:
            v = event.get(col)
            first = u.first_seen[kind].get(str(v)) if u and v is not None else None
            seen = first is not None and first < t
            f[f"new_{kind}"] = nan if v is None else (0.0 if seen else 1.0)
            f[f"secs_since_first_{kind}"] = min(t - first, self._keep) / US if seen else nan
            if u:
                start = bisect.bisect_left(u.times, t - self._dw, 0, end)
                vals = {x for x in u.values[kind][start:end] if x is not None}
                f[f"distinct_{_PLURAL[kind]}"] = float(len(vals))
            else:
                f[f"distinct_{_PLURAL[kind]}"] = 0.0
        m = event.get("merchant_id")
        times = self.merchant_times.get(str(m), []) if m is not None else []
        end_m = bisect.bisect_left(times, t)
        for w, us in self._mw:
            f[f"merchant_tx_{w}"] = (
                nan if m is None else float(end_m - bisect.bisect_left(times, t - us, 0, end_m))
            )
        if m is None:
            f["merchant_risk"] = nan
        else:
            n_known, frauds = self.merchants.get(str(m), (0, 0))
            c = self.cfg
            f["merchant_risk"] = (frauds + c.merchant_prior * c.merchant_prior_weight) / (
                n_known + c.merchant_prior_weight
            )
        for x in self.extra:
            f[x] = float(event.get(x, nan))
        return [f[n] for n in self.names]

    def history(self, event: dict[str, Any]) -> np.ndarray:
        """The vectors of the user's latest ``sequence_length`` transactions at instants before
        ``event``'s, oldest first: ``(k, len(SEQ_FEATURES))`` with ``k <= sequence_length``."""
        t = _ts_us(event["timestamp"])
        u = self.users.get(str(event["user_id"]))
        rows = [v for s, v in (u.recent if u else []) if s < t][-self.cfg.sequence_length :]
        return np.asarray(rows, np.float32).reshape(len(rows), len(SEQ_FEATURES))

    def sequence(self, event: dict[str, Any], feats: list[float]) -> np.ndarray:
        """The sequence-model input of ``event`` with features ``feats``: ``(1, L + 1, D + 1)``,
        what :func:`gather_sequences` gives for the row in batch."""
        hist = self.history(event)
        length = self.cfg.sequence_length
        vec = event_vectors(np.asarray([feats]), self.names)
        x = np.zeros((1, length + 1, len(SEQ_FEATURES) + 1), np.float32)
        if len(hist):
            x[0, length - len(hist) : length, :-1] = hist
            x[0, length - len(hist) : length, -1] = 1.0
        x[0, length, :-1] = vec[0]
        x[0, length, -1] = 1.0
        return x

    def update(self, event: dict[str, Any]) -> list[float]:
        """Features of ``event`` (see :meth:`features`), then ``event`` joins the state."""
        out = self.features(event)
        self.apply(event, out)
        return out

    def apply(
        self,
        event: dict[str, Any],
        feats: list[float] | None = None,
        vector: np.ndarray | None = None,
    ) -> None:
        """Add a transaction (and its features, for the sequence history) to the state;
        ``vector`` is its :func:`event_vectors` row when the caller has it already."""
        t = _ts_us(event["timestamp"])
        u = self.users.setdefault(str(event["user_id"]), _User())
        if vector is None:
            if feats is None:
                feats = self.features(event)
            vector = event_vectors(np.asarray([feats]), self.names)[0]
        vec = np.asarray(vector, np.float32).tolist()
        j = bisect.bisect_right([s for s, _ in u.recent], t)
        u.recent.insert(j, [t, vec])
        # ties at one instant hide each other, so keep more than the length (2x)
        del u.recent[: max(len(u.recent) - 2 * self.cfg.sequence_length, 0)]
        i = bisect.bisect_right(u.times, t)
        u.times.insert(i, t)
        u.amounts.insert(i, float(event["amount"]))
        for kind, col in _DISTINCT:
            v = event.get(col)
            v = None if v is None else str(v)
            u.values[kind].insert(i, v)
            if v is not None and (v not in u.first_seen[kind] or u.first_seen[kind][v] > t):
                u.first_seen[kind][v] = t
        if not u.instants or u.instants[-1] < t:
            u.instants.append(t)
        m = event.get("merchant_id")
        if m is not None and self._mw:
            mt = self.merchant_times.setdefault(str(m), [])
            bisect.insort(mt, t)
            cut_m = bisect.bisect_left(mt, mt[-1] - max(us for _, us in self._mw))
            del mt[:cut_m]
        cut = bisect.bisect_left(u.times, u.times[-1] - self._keep)  # drop what no window sees
        if cut:
            del u.times[:cut], u.amounts[:cut]
            for kind, _ in _DISTINCT:
                del u.values[kind][:cut]
        self.events += 1

    def add_label(self, merchant_id: str | None, label: int) -> None:
        """A label became known now: it counts for the merchant's later transactions."""
        if merchant_id is None:
            return
        rec = self.merchants.setdefault(str(merchant_id), [0, 0])
        rec[0] += 1
        rec[1] += int(label)

    # -- persistence
    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": {
                "windows": list(self.cfg.windows),
                "zscore_window": self.cfg.zscore_window,
                "distinct_window": self.cfg.distinct_window,
                "merchant_prior": self.cfg.merchant_prior,
                "merchant_prior_weight": self.cfg.merchant_prior_weight,
                "sequence_length": self.cfg.sequence_length,
                "merchant_windows": list(self.cfg.merchant_windows),
            },
            "extra": list(self.extra),
            "events": self.events,
            "users": {
                k: [u.times, u.amounts, u.values, u.first_seen, list(u.instants), u.recent]
                for k, u in self.users.items()
            },
            "merchants": self.merchants,
            "merchant_times": self.merchant_times,
        }

    def snapshot(self, path: str | os.PathLike[str]) -> Path:
        """Write the state to ``path`` atomically (a crash leaves the previous snapshot)."""
        atomic_write_text(path, json.dumps(self.state(), separators=(",", ":")))
        return Path(path)

    @classmethod
    def restore(
        cls, path: str | os.PathLike[str], cfg: FeatureConfig | None = None
    ) -> OnlineFeatures:
        """The state :meth:`snapshot` wrote. A snapshot made with other feature
        definitions than ``cfg`` is refused (its numbers would mean something else)."""
        try:
            s = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read the feature state ({exc})",
                where=str(path),
                fix="delete it to start cold, or restore the previous snapshot",
            ) from exc
        return cls.from_state(s, cfg, where=str(path))

    @classmethod
    def from_state(
        cls, s: dict[str, Any], cfg: FeatureConfig | None = None, where: str = "state"
    ) -> OnlineFeatures:
        """The object whose :meth:`state` was ``s`` (see :meth:`restore`)."""
        try:
            saved = s["config"]
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"cannot read the feature state (no {exc})",
                where=where,
                fix="delete it to start cold, or restore the previous snapshot",
            ) from exc
        saved_cfg = FeatureConfig(
            windows=tuple(saved["windows"]),
            zscore_window=saved["zscore_window"],
            distinct_window=saved["distinct_window"],
            merchant_prior=saved["merchant_prior"],
            merchant_prior_weight=saved["merchant_prior_weight"],
            sequence_length=saved["sequence_length"],
            merchant_windows=tuple(saved["merchant_windows"]),
        )
        if cfg is not None and any(
            getattr(cfg, k) != getattr(saved_cfg, k) for k in saved if hasattr(cfg, k)
        ):
            raise DataError(
                "the feature state was written with other feature definitions",
                where=where,
                fix="rebuild it by replaying the stream with the current definitions",
            )
        self = cls(cfg or saved_cfg, tuple(s.get("extra", ())))
        self.events = int(s["events"])
        for k, (times, amounts, values, first_seen, instants, recent) in s["users"].items():
            u = _User(times, amounts, values, first_seen, recent=recent)
            u.instants.extend(instants)
            self.users[k] = u
        self.merchants = {k: list(v) for k, v in s["merchants"].items()}
        self.merchant_times = {k: list(v) for k, v in s["merchant_times"].items()}
        return self


def replay_order(frame: pl.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """The transactions of ``frame`` and their labels as one stream in time order:
    ``("tx", row)`` at each timestamp, ``("label", row)`` at each label time, transactions
    first at an equal instant (a label at ``t`` is not known to a transaction at ``t``)."""
    ts = frame["timestamp"].dt.epoch("us").to_list()
    rows = frame.to_dicts()
    stream: list[tuple[int, int, int, str, dict[str, Any]]] = []
    for i, (t, r) in enumerate(zip(ts, rows, strict=True)):
        stream.append((t, 0, i, "tx", r))
        if r.get("label") is not None and r.get("label_time") is not None:
            stream.append((_ts_us(r["label_time"]), 1, i, "label", r))
    stream.sort(key=lambda e: e[:3])
    return [(kind, r) for *_, kind, r in stream]


# ---------------------------------------------------------------- profiles (drift)


def _shares(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    nan = ~np.isfinite(x)
    counts = np.bincount(np.searchsorted(edges, x[~nan], side="right"), minlength=len(edges) + 1)
    return np.append(counts, nan.sum()).astype(np.float64) / max(len(x), 1)


def profile(reference: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """What PSI needs of a reference feature: its decile edges and the share in each bin
    (plus the NaN share, last). Small enough for a model's ``config.json``."""
    ref = np.asarray(reference, np.float64)
    finite = ref[np.isfinite(ref)]
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if finite.size else np.empty(0)
    edges = np.unique(qs)
    return {"edges": edges.tolist(), "shares": _shares(edges, ref).tolist()}


def psi_against(prof: dict[str, list[float]], recent: np.ndarray) -> float:
    """Population stability index of ``recent`` against a reference :func:`profile`."""
    e = np.maximum(np.asarray(prof["shares"]), 1e-4)
    a = np.maximum(_shares(np.asarray(prof["edges"]), recent), 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))
