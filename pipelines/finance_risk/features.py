"""Point-in-time features of each transaction, in batch (polars) and online (event by event).

Every feature of a transaction at time ``t`` is computed from what was known strictly before
``t``: the user's transactions with a timestamp ``< t`` (so a transaction never sees its own
amount or label, and transactions of one user at the same instant do not see each other), and
labels whose ``label_time < t``. The definitions (``FeatureConfig`` gives the windows):

- ``count_W, sum_W, mean_W, std_W, max_W``: the user's amounts in ``[t - W, t)`` for each
  window ``W`` (count and sum 0 when empty; mean and max NaN when empty; std, sample std
  with ddof 1, NaN below two amounts);
- ``amount_z``: ``(amount - mean_Z) / (std_Z + 1)`` for the z-score window ``Z`` (the ``+ 1``,
  one currency unit, keeps it finite for a history of equal amounts);
- ``secs_since_prev``: seconds since the user's latest earlier transaction (NaN for the first);
- ``new_merchant, new_device, new_country``: 1 when the user has no earlier transaction with
  this value, else 0 (NaN when the value is missing);
- ``distinct_merchants, distinct_devices, distinct_countries``: distinct values among the
  user's transactions in ``[t - D, t)`` for the distinct window ``D``;
- ``merchant_risk``: ``(frauds + prior * w) / (labels + w)`` over the merchant's labels known
  before ``t`` (any user), with ``merchant_prior`` and ``merchant_prior_weight`` (NaN without
  a merchant);
- ``log_amount, hour, weekday``: of the transaction itself (UTC).

:func:`compute_features` runs them over a table (one pass per kind, sorted by user and time);
:class:`OnlineFeatures` keeps per-user and per-merchant state and returns the same values for
one event at a time, snapshots atomically and restores. Not here: the models, or reading files.
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


def feature_names(cfg: FeatureConfig, extra: tuple[str, ...] = ()) -> list[str]:
    """The model's input columns, in order."""
    names = ["amount", "log_amount", "hour", "weekday"]
    for w in cfg.windows:
        names += [f"count_{w}", f"sum_{w}", f"mean_{w}", f"std_{w}", f"max_{w}"]
    names += ["amount_z", "secs_since_prev"]
    names += [f"new_{k}" for k, _ in _DISTINCT] + [f"distinct_{k}s" for k, _ in _DISTINCT]
    names += ["merchant_risk", *extra]
    return names


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
    for c, _ in ((c, 0) for c in ("merchant_id", "device_id", "country")):
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
    df = df.with_columns(_ts=ts)
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
        cols.append(
            pl.when(c.is_null())
            .then(None)
            .otherwise(
                (pl.col("_ts") == pl.col("_ts").min().over(["user_id", col])).cast(pl.Float64)
            )
            .alias(f"new_{kind}")
        )
    out = df.with_columns(cols)
    zw = cfg.zscore_window
    out = out.with_columns(
        ((a - pl.col(f"mean_{zw}")) / (pl.col(f"std_{zw}") + 1.0)).alias("amount_z")
    )
    out = out.with_columns(_distinct_counts(out, window_seconds(cfg.distinct_window) * US))
    return out.drop([c for c in ("_ts", "_key") if c in out.columns])


def _distinct_counts(df: pl.DataFrame, window_us: int) -> list[pl.Series]:
    """Distinct values per user in ``[t - D, t)``, exactly, in integers.

    An earlier transaction at ``s`` counts at ``t`` when ``s < t <= s + D``. For each
    (user, value) the union of those intervals is a run of segments (a new one starts where
    two consecutive times are more than ``D`` apart), each a +1 at its first time and a -1 at
    its last time + D; the count at ``t`` is the sum of the marks strictly before ``t``."""
    q = df.select("user_id", "_ts").with_row_index("_row")
    out = []
    for kind, col in _DISTINCT:
        times = (
            df.select("user_id", col, "_ts").drop_nulls(col).unique().sort(["user_id", col, "_ts"])
        )
        gap = pl.col("_ts") - pl.col("_ts").shift(1).over(["user_id", col])
        seg = (gap.is_null() | (gap > window_us)).cast(pl.Int64).cum_sum()
        marks = (
            times.with_columns(_seg=seg)
            .group_by(["user_id", col, "_seg"])
            .agg(pl.col("_ts").min().alias("start"), pl.col("_ts").max().alias("last"))
        )
        events = pl.concat(
            [
                marks.select("user_id", pl.col("start").alias("_ts"), pl.lit(1).alias("d")),
                marks.select(
                    "user_id", (pl.col("last") + window_us).alias("_ts"), pl.lit(-1).alias("d")
                ),
            ]
        )
        events = (
            events.group_by(["user_id", "_ts"])
            .agg(pl.col("d").sum())
            .sort(["user_id", "_ts"])
            .with_columns(n=pl.col("d").cum_sum().over("user_id"))
        )
        j = q.sort(["user_id", "_ts"]).join_asof(
            events.select("user_id", "_ts", "n"),
            on="_ts",
            by="user_id",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        out.append(j.sort("_row")["n"].fill_null(0).cast(pl.Float64).alias(f"distinct_{kind}s"))
    return out


def merchant_risk(frame: pl.DataFrame, cfg: FeatureConfig) -> pl.Series:
    """``merchant_risk`` of each row of ``frame`` (in its row order), from the labels in
    ``frame`` whose ``label_time`` is before the row's time."""
    prior, weight = cfg.merchant_prior, cfg.merchant_prior_weight
    q = frame.select(
        pl.col("merchant_id"), pl.col("timestamp").dt.epoch("us").alias("_ts")
    ).with_row_index("_row")
    if "label" not in frame.columns or "label_time" not in frame.columns:
        known = pl.DataFrame(
            {"merchant_id": [], "_ts": [], "n": [], "f": []},
            schema={"merchant_id": pl.String, "_ts": pl.Int64, "n": pl.Int64, "f": pl.Int64},
        )
    else:
        known = (
            frame.filter(
                pl.col("label").is_not_null()
                & pl.col("label_time").is_not_null()
                & pl.col("merchant_id").is_not_null()
            )
            .group_by("merchant_id", pl.col("label_time").dt.epoch("us").alias("_ts"))
            .agg(
                pl.len().cast(pl.Int64).alias("n"), pl.col("label").cast(pl.Int64).sum().alias("f")
            )
            .sort(["merchant_id", "_ts"])
            .with_columns(
                pl.col("n").cum_sum().over("merchant_id"), pl.col("f").cum_sum().over("merchant_id")
            )
        )
    j = (
        q.drop_nulls("merchant_id")
        .sort(["merchant_id", "_ts"])
        .join_asof(
            known,
            on="_ts",
            by="merchant_id",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
    )
    risk = j.select(
        "_row",
        ((pl.col("f").fill_null(0) + prior * weight) / (pl.col("n").fill_null(0) + weight)).alias(
            "merchant_risk"
        ),
    )
    return q.join(risk, on="_row", how="left").sort("_row")["merchant_risk"]


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
    out = out.with_columns(merchant_risk(out, cfg))
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
        prev = None
        if u:
            earlier = [s for s in u.instants if s < t]
            prev = earlier[-1] if earlier else None
        f["secs_since_prev"] = (t - prev) / US if prev is not None else nan
        for kind, col in _DISTINCT:
            v = event.get(col)
            if v is None:
                f[f"new_{kind}"] = nan
            else:
                first = u.first_seen[kind].get(str(v)) if u else None
                f[f"new_{kind}"] = 1.0 if first is None or first >= t else 0.0
            if u:
                start = bisect.bisect_left(u.times, t - self._dw, 0, end)
                vals = {x for x in u.values[kind][start:end] if x is not None}
                f[f"distinct_{kind}s"] = float(len(vals))
            else:
                f[f"distinct_{kind}s"] = 0.0
        m = event.get("merchant_id")
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

    def update(self, event: dict[str, Any]) -> list[float]:
        """Features of ``event`` (see :meth:`features`), then ``event`` joins the state."""
        out = self.features(event)
        self.apply(event)
        return out

    def apply(self, event: dict[str, Any]) -> None:
        """Add a transaction to the state without computing its features."""
        t = _ts_us(event["timestamp"])
        u = self.users.setdefault(str(event["user_id"]), _User())
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
            },
            "extra": list(self.extra),
            "events": self.events,
            "users": {
                k: [u.times, u.amounts, u.values, u.first_seen, list(u.instants)]
                for k, u in self.users.items()
            },
            "merchants": self.merchants,
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
            saved = s["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"cannot read the feature state ({exc})",
                where=str(path),
                fix="delete it to start cold, or restore the previous snapshot",
            ) from exc
        saved_cfg = FeatureConfig(
            windows=tuple(saved["windows"]),
            zscore_window=saved["zscore_window"],
            distinct_window=saved["distinct_window"],
            merchant_prior=saved["merchant_prior"],
            merchant_prior_weight=saved["merchant_prior_weight"],
        )
        if cfg is not None and any(
            getattr(cfg, k) != getattr(saved_cfg, k) for k in saved if hasattr(cfg, k)
        ):
            raise DataError(
                "the feature state was written with other feature definitions",
                where=str(path),
                fix="rebuild it by replaying the stream with the current definitions",
            )
        self = cls(cfg or saved_cfg, tuple(s.get("extra", ())))
        self.events = int(s["events"])
        for k, (times, amounts, values, first_seen, instants) in s["users"].items():
            u = _User(times, amounts, values, first_seen)
            u.instants.extend(instants)
            self.users[k] = u
        self.merchants = {k: list(v) for k, v in s["merchants"].items()}
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
