"""Transaction files in, one validated canonical table out; every rejected row kept with its reason.

Reads CSV and Parquet through polars' lazy scans. The canonical columns (``config.CANONICAL``)
are found by name, through ``IngestConfig.column_map`` (``--map user_id=customer``), or
through a ready-made layout (``PRESETS``: the Kaggle credit-card set, a PaySim-like set).

Per-row validation: a missing transaction or user id, an unparsable timestamp, a time zone
that does not exist, a local time that does not exist in its zone (a DST gap), an amount that
is not a number, not finite or negative, a label other than 0/1, a label time before its
transaction, an extra feature that is not a number, a duplicate transaction id (the first
occurrence is kept). Rejected rows are written, as they were read plus ``row`` and
``reason``, to a quarantine CSV; the counts per reason come back in :class:`Transactions`.
A file whose rejected share is over ``max_bad_fraction`` is an error (the quarantine is
still written, so nothing is lost).

Timestamps: ISO 8601 strings with ``Z``, an offset (``+02:00``) or an IANA zone name after a
space (``2024-03-01 09:00 Europe/Berlin``); without any, ``IngestConfig.timezone``. Numbers
are Unix seconds. Datetime columns in Parquet keep their zone (naive ones get
``timezone``). Everything is converted to UTC, microseconds.

Not here: features (``features.py``), generating data (``synth.py``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from core.atomic import atomic_file
from core.errors import DataError
from pipelines.finance_risk.config import CANONICAL, OPTIONAL, REQUIRED, IngestConfig

UTC = pl.Datetime("us", "UTC")
_ZONES = zoneinfo.available_timezones() | {"UTC"}
_ISO = (
    r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(:\d{2}(?:\.\d{1,9})?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2}|[A-Za-z][A-Za-z0-9_+\-/]*)?$"
)


@dataclass(frozen=True)
class Preset:
    """A public column layout: how its columns become canonical ones."""

    name: str
    source_columns: tuple[str, ...]  # columns a file in this layout has
    build: Callable[[IngestConfig], dict[str, pl.Expr]]  # canonical name -> expression
    extra_features: tuple[str, ...]  # numeric columns the models use as they are
    note: str


def _origin(cfg: IngestConfig) -> pl.Expr:
    return pl.lit(cfg.time_origin).str.to_datetime(time_zone="UTC", time_unit="us")


def _kaggle(cfg: IngestConfig) -> dict[str, pl.Expr]:
    return {
        "transaction_id": pl.format("k{}", pl.col("row")),
        "user_id": pl.lit("all"),  # the set has no card id: one stream
        "timestamp": _origin(cfg) + pl.duration(microseconds=(_num("Time") * 1e6).round()),
        "amount": pl.col("Amount"),
        "label": pl.col("Class"),
    }


def _paysim(cfg: IngestConfig) -> dict[str, pl.Expr]:
    return {
        "transaction_id": pl.format("p{}", pl.col("row")),
        "user_id": pl.col("nameOrig"),
        "timestamp": _origin(cfg) + pl.duration(hours=_num("step").cast(pl.Int64, strict=False)),
        "amount": pl.col("amount"),
        "merchant_id": pl.col("nameDest"),
        "channel": pl.col("type"),
        "label": pl.col("isFraud"),
    }


PRESETS: dict[str, Preset] = {
    "kaggle_creditcard": Preset(
        "kaggle_creditcard",
        ("Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"),
        _kaggle,
        tuple(f"V{i}" for i in range(1, 29)),
        "Time is seconds since time_origin; the set has no card id, so all rows form one "
        "stream (user_id 'all'); V1..V28 go to the models as extra features",
    ),
    "paysim": Preset(
        "paysim",
        (
            "step",
            "type",
            "amount",
            "nameOrig",
            "oldbalanceOrg",
            "newbalanceOrig",
            "nameDest",
            "oldbalanceDest",
            "newbalanceDest",
            "isFraud",
            "isFlaggedFraud",
        ),
        _paysim,
        ("oldbalanceOrg", "newbalanceOrig", "oldbalanceDest", "newbalanceDest"),
        "step is hours since time_origin; nameOrig is the user, nameDest the merchant, "
        "type the channel",
    ),
}


@dataclass
class Transactions:
    """A validated file: the canonical table and what was rejected."""

    frame: pl.DataFrame  # canonical columns (+ extra features), UTC, sorted by time
    source: Path
    rows_read: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> rows
    quarantine: Path | None = None  # the rejected rows, with row and reason
    extra_features: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "rows_read": self.rows_read,
            "accepted": self.frame.height,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "quarantine": str(self.quarantine) if self.quarantine else None,
        }


def _num(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _scan(path: Path) -> pl.LazyFrame:
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            lf = pl.scan_parquet(path)
        elif suffix.endswith((".csv", ".csv.gz", ".txt")):
            lf = pl.scan_csv(path, infer_schema=False)  # strings: types are checked per row
        else:
            raise DataError(
                f"unknown file type {path.suffix!r}",
                where=str(path),
                fix="give a .csv or .parquet file",
            )
        lf.collect_schema()
    except pl.exceptions.NoDataError as exc:
        raise DataError("the file is empty", where=str(path), fix="give a file with rows") from exc
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataError(
            f"cannot read the file ({str(exc).splitlines()[0]})",
            where=str(path),
            fix="check that it is a CSV or Parquet file",
        ) from exc
    return lf


def _mapping(names: list[str], cfg: IngestConfig, path: Path) -> dict[str, pl.Expr]:
    exprs: dict[str, pl.Expr] = {}
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise DataError(
                f"unknown layout preset {cfg.preset!r}",
                fix=f"use one of {', '.join(PRESETS)}",
            )
        preset = PRESETS[cfg.preset]
        missing = [c for c in preset.source_columns if c not in names]
        if missing:
            raise DataError(
                f"the file does not have the {preset.name} layout: missing {missing[:6]}",
                where=str(path),
                fix=f"columns found: {names[:12]}; drop --preset or map the columns",
            )
        exprs.update(preset.build(cfg))
    for canon, src in cfg.column_map.items():
        if src not in names:
            close = difflib.get_close_matches(src, names, n=3)
            raise DataError(
                f"column_map says {canon}={src}, but the file has no column {src!r}",
                where=str(path),
                fix=f"columns found: {names}" + (f"; did you mean {close}?" if close else ""),
            )
        exprs[canon] = pl.col(src)
    for canon in CANONICAL:
        if canon not in exprs and canon in names:
            exprs[canon] = pl.col(canon)
    missing = [c for c in REQUIRED if c not in exprs]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, names, n=1, cutoff=0.4)
            hints.append(f"--map {c}={close[0] if close else '<column>'}")
        raise DataError(
            f"required columns {missing} not found",
            where=str(path),
            fix=f"columns found: {names}; map them with {' '.join(hints)}"
            + f" or use a preset ({', '.join(PRESETS)})",
        )
    return exprs


def _timestamp(e: pl.Expr, dtype: pl.DataType, cfg: IngestConfig, zones: set[str]) -> pl.Expr:
    """``e`` as UTC datetimes; null where it cannot be read (the reason comes separately)."""
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone:
            return e.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        return (
            e.dt.replace_time_zone(cfg.timezone, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
            .dt.cast_time_unit("us")
        )
    if isinstance(dtype, pl.Date):
        return _timestamp(e.cast(pl.Datetime("us")), pl.Datetime("us"), cfg, zones)
    if dtype.is_numeric():
        return pl.from_epoch(
            (e.cast(pl.Float64) * 1e6).round().cast(pl.Int64), "us"
        ).dt.replace_time_zone("UTC")
    parts = e.cast(pl.String).str.strip_chars().str.extract_groups(_ISO)
    date, hm, sec, zone = (parts.struct.field(str(i)) for i in range(1, 5))
    base = pl.concat_str(
        [date, pl.lit("T"), hm.fill_null("00:00"), sec.fill_null(":00")]
    ).str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    off = zone.str.replace(":", "")
    off_min = off.str.slice(1, 2).cast(pl.Int64, strict=False) * 60 + off.str.slice(3, 2).cast(
        pl.Int64, strict=False
    )
    sign = pl.when(off.str.starts_with("-")).then(-1).otherwise(1)
    out = pl.when(zone == "Z").then(base.dt.replace_time_zone("UTC"))
    out = out.when(off.str.contains(r"^[+-]\d{4}$")).then(
        (base - pl.duration(minutes=sign * off_min)).dt.replace_time_zone("UTC")
    )
    for name in sorted(zones):
        out = out.when(zone == name).then(
            base.dt.replace_time_zone(
                name, ambiguous="earliest", non_existent="null"
            ).dt.convert_time_zone("UTC")
        )
    return out.when(zone.is_null()).then(
        base.dt.replace_time_zone(
            cfg.timezone, ambiguous="earliest", non_existent="null"
        ).dt.convert_time_zone("UTC")
    )


def _zone_names(lf: pl.LazyFrame, e: pl.Expr, dtype: pl.DataType) -> tuple[set[str], set[str]]:
    """The zone names written in a string timestamp column: (known, unknown)."""
    if dtype != pl.String:
        return set(), set()
    zone = e.str.strip_chars().str.extract_groups(_ISO).struct.field("4")
    names = (
        lf.select(zone.alias("z"))
        .filter(pl.col("z").is_not_null() & ~pl.col("z").str.contains(r"^(Z|[+-]\d{2}:?\d{2})$"))
        .unique()
        .collect()["z"]
        .to_list()
    )
    return {n for n in names if n in _ZONES}, {n for n in names if n not in _ZONES}


def read_transactions(
    path: str | os.PathLike[str], cfg: IngestConfig | None = None, *, quarantine: bool = True
) -> Transactions:
    """Read and validate one CSV or Parquet file of transactions.

    Raises :class:`~core.errors.DataError` for a file that cannot be read, is empty, lacks a
    required column (naming the columns found and the mapping to use) or is mostly bad.
    ``quarantine=False`` keeps rejected rows in memory only (``Transactions.quarantine`` is
    None)."""
    cfg = cfg or IngestConfig()
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", where=str(path), fix="give a CSV or Parquet file")
    lf = _scan(path).with_row_index("row", offset=1)
    schema = lf.collect_schema()
    names = [n for n in schema.names() if n != "row"]
    exprs = _mapping(names, cfg, path)
    extra = tuple(cfg.extra_features) or (PRESETS[cfg.preset].extra_features if cfg.preset else ())
    for c in extra:
        if c not in names:
            raise DataError(
                f"extra feature column {c!r} not in the file",
                where=str(path),
                fix=f"columns: {names}",
            )
    typed = lf.select("row", *(v.alias(f"_src_{k}") for k, v in exprs.items()))
    src_schema = typed.collect_schema()
    ts_dtype = src_schema["_src_timestamp"]
    known, unknown = _zone_names(typed, pl.col("_src_timestamp"), ts_dtype)
    lt_known, lt_unknown = (set(), set())
    if "label_time" in exprs:
        lt_known, lt_unknown = _zone_names(
            typed, pl.col("_src_label_time"), src_schema["_src_label_time"]
        )

    def s(k: str) -> pl.Expr:
        return pl.col(f"_src_{k}")

    cols: dict[str, pl.Expr] = {
        "transaction_id": s("transaction_id").cast(pl.String).str.strip_chars(),
        "user_id": s("user_id").cast(pl.String).str.strip_chars(),
        "timestamp": _timestamp(s("timestamp"), ts_dtype, cfg, known),
        "amount": s("amount").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        if src_schema["_src_amount"] == pl.String
        else s("amount").cast(pl.Float64, strict=False),
    }
    for k in OPTIONAL:
        if k not in exprs or k in ("label", "label_time"):
            continue
        cols[k] = s(k).cast(pl.String).str.strip_chars()
    if "label" in exprs:
        cols["label"] = _num("_src_label")  # float until checked: 0.5 must not become 0
    if "label_time" in exprs:
        cols["label_time"] = _timestamp(
            s("label_time"), src_schema["_src_label_time"], cfg, lt_known
        )
    for c in extra:
        cols[f"x_{c}"] = _num(c)
    frame = lf.with_columns([v.alias(f"_src_{k}") for k, v in exprs.items()]).with_columns(**cols)
    blank = lambda e: e.is_null() | (e == "")  # noqa: E731
    src_ts = s("timestamp").cast(pl.String).str.strip_chars()
    ts_zone = src_ts.str.extract_groups(_ISO).struct.field("4")
    checks: list[tuple[str, pl.Expr, pl.Expr]] = [
        (
            "missing_transaction_id",
            blank(pl.col("transaction_id")),
            pl.lit("transaction_id is empty"),
        ),
        ("missing_user_id", blank(pl.col("user_id")), pl.lit("user_id is empty")),
        ("missing_timestamp", s("timestamp").is_null(), pl.lit("timestamp is empty")),
        (
            "unknown_time_zone",
            ts_zone.is_in(sorted(unknown)) if unknown else pl.lit(False),
            pl.format("unknown time zone '{}'", ts_zone),
        ),
        (
            "bad_timestamp",
            pl.col("timestamp").is_null(),
            pl.format("timestamp '{}' is not ISO 8601 or is not a real local time", src_ts),
        ),
        ("missing_amount", s("amount").is_null(), pl.lit("amount is empty")),
        (
            "bad_amount",
            pl.col("amount").is_null(),
            pl.format("amount '{}' is not a number", s("amount").cast(pl.String)),
        ),
        ("non_finite_amount", ~pl.col("amount").is_finite(), pl.lit("amount is not finite")),
        ("negative_amount", pl.col("amount") < 0, pl.lit("amount is negative")),
    ]
    if "label" in exprs:
        lab = s("label").cast(pl.String).str.strip_chars()
        checks.append(
            (
                "bad_label",
                ~blank(lab) & ~pl.col("label").is_in([0.0, 1.0]).fill_null(False),
                pl.format("label '{}' is not 0 or 1", lab),
            )
        )
    if "label_time" in exprs:
        raw_lt = s("label_time").cast(pl.String).str.strip_chars()
        checks.append(
            (
                "bad_label_time",
                ~blank(raw_lt) & pl.col("label_time").is_null(),
                pl.format("label_time '{}' cannot be read", raw_lt),
            )
        )
        if lt_unknown:
            checks.append(
                (
                    "unknown_time_zone",
                    raw_lt.str.extract_groups(_ISO).struct.field("4").is_in(sorted(lt_unknown)),
                    pl.lit("label_time has an unknown time zone"),
                )
            )
        checks.append(
            (
                "label_before_transaction",
                pl.col("label_time") < pl.col("timestamp"),
                pl.lit("label_time is before the transaction"),
            )
        )
    for c in extra:
        checks.append(
            (
                "bad_extra_feature",
                pl.col(f"x_{c}").is_null() | ~pl.col(f"x_{c}").is_finite(),
                pl.format("{} '{}' is not a finite number", pl.lit(c), pl.col(c).cast(pl.String)),
            )
        )
    kind = pl.lit(None, pl.String)
    text = pl.lit(None, pl.String)
    for name, cond, msg in reversed(checks):  # the first failing check names the row
        hit = cond.fill_null(False)
        kind = pl.when(hit).then(pl.lit(name)).otherwise(kind)
        text = pl.when(hit).then(msg).otherwise(text)
    df = frame.with_columns(_kind=kind, _reason=text).collect()
    rows_read = df.height
    if rows_read == 0:
        raise DataError("the file has a header but no rows", where=str(path), fix="give rows")
    # duplicates: among otherwise valid rows, the first occurrence of an id is kept
    ok = df["_kind"].is_null()
    first_row = df.filter(ok).group_by("transaction_id").agg(pl.col("row").min().alias("_first"))
    df = (
        df.join(first_row, on="transaction_id", how="left")
        .with_columns(
            _kind=pl.when(pl.col("_kind").is_null() & (pl.col("row") != pl.col("_first")))
            .then(pl.lit("duplicate_transaction_id"))
            .otherwise(pl.col("_kind")),
            _reason=pl.when(pl.col("_kind").is_null() & (pl.col("row") != pl.col("_first")))
            .then(pl.format("duplicate transaction_id (first at row {})", pl.col("_first")))
            .otherwise(pl.col("_reason")),
        )
        .sort("row")
    )
    bad = df.filter(pl.col("_kind").is_not_null())
    reasons = dict(sorted(bad["_kind"].value_counts().iter_rows(), key=lambda r: -r[1]))
    qpath = None
    if quarantine and bad.height:
        qdir = Path(cfg.quarantine_dir) if cfg.quarantine_dir else path.parent
        qdir.mkdir(parents=True, exist_ok=True)
        qpath = qdir / f"{path.name}.quarantine.csv"
        with atomic_file(qpath) as tmp:
            bad.select(
                "row",
                pl.col("_reason").alias("reason"),
                *(pl.col(n).cast(pl.String) for n in names),
            ).write_csv(tmp)
    if bad.height > cfg.max_bad_fraction * rows_read:
        top = ", ".join(f"{k}: {v}" for k, v in list(reasons.items())[:4])
        first = bad.row(0, named=True)
        raise DataError(
            f"{bad.height} of {rows_read} rows are bad ({top}); first: row {first['row']}: "
            f"{first['_reason']}",
            where=str(path),
            fix=f"fix the file or the column mapping; rejected rows are in {qpath}"
            if qpath
            else "fix the file or the column mapping",
        )
    good = df.filter(pl.col("_kind").is_null())
    if "label" in cols:
        good = good.with_columns(pl.col("label").cast(pl.Int8))
    if "label" in cols and "label_time" not in cols:
        delay = pl.duration(microseconds=round(cfg.label_delay_days * 86400e6))
        good = good.with_columns(
            label_time=pl.when(pl.col("label").is_not_null()).then(pl.col("timestamp") + delay)
        )
    elif "label_time" in cols:
        delay = pl.duration(microseconds=round(cfg.label_delay_days * 86400e6))
        good = good.with_columns(
            label_time=pl.when(pl.col("label").is_not_null()).then(
                pl.col("label_time").fill_null(pl.col("timestamp") + delay)
            )
        )
    keep = [c for c in CANONICAL if c in good.columns] + [f"x_{c}" for c in extra]
    out = good.select(keep).sort(["timestamp", "transaction_id"])
    return Transactions(
        frame=out,
        source=path,
        rows_read=rows_read,
        rejected=bad.height,
        reasons=reasons,
        quarantine=qpath,
        extra_features=tuple(f"x_{c}" for c in extra),
    )


_NUMBER = (int, float)


def _parse_time(value: Any, field_name: str, tz: str) -> dt.datetime:
    """One event's timestamp by the file rules: ISO 8601 with ``Z``, an offset or a zone name
    after a space; naive ones are in ``tz``; numbers are Unix seconds. Returns UTC."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{field_name} is {value!r}", where=field_name, fix="send ISO 8601")
    if isinstance(value, _NUMBER):
        if not math.isfinite(value):
            raise DataError(f"{field_name} is not finite", where=field_name, fix="send ISO 8601")
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, dt.datetime):
        parsed = value
        zone = None
    elif isinstance(value, str):
        text = value.strip()
        zone = None
        head, _, tail = text.rpartition(" ")
        if head and re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-/]*", tail) and not tail[0].isdigit():
            text, zone = head, tail
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise DataError(
                f"{field_name} {value!r} is not ISO 8601",
                where=field_name,
                fix="e.g. 2024-03-01T09:00:00Z",
            ) from exc
    else:
        raise DataError(f"{field_name} must be a string", where=field_name, fix="send ISO 8601")
    if parsed.tzinfo is None:
        name = zone or tz
        if name not in _ZONES:
            raise DataError(
                f"unknown time zone {name!r}", where=field_name, fix="use an IANA zone name"
            )
        local = parsed.replace(tzinfo=zoneinfo.ZoneInfo(name))
        back = local.astimezone(dt.UTC).astimezone(local.tzinfo)
        if back.replace(tzinfo=None) != parsed:
            raise DataError(
                f"{field_name} {value!r} does not exist in {name} (a DST gap)",
                where=field_name,
                fix="send the time with its UTC offset",
            )
        parsed = local
    elif zone is not None:
        raise DataError(f"{field_name} has both an offset and a zone name", where=field_name)
    return parsed.astimezone(dt.UTC)


def parse_event(
    obj: Any, cfg: IngestConfig | None = None, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One transaction event (a JSON object with the canonical fields) checked by the same
    rules as a file row; returns it with ``timestamp`` as a UTC datetime. ``extra`` are the
    model's extra feature names (``x_<column>``), read from ``<column>``.

    Raises :class:`~core.errors.DataError` naming the field."""
    cfg = cfg or IngestConfig()
    if not isinstance(obj, dict):
        raise DataError(
            "an event must be a JSON object", where="event", fix="send {...} with the fields"
        )
    ev: dict[str, Any] = {}
    for k in ("transaction_id", "user_id"):
        v = obj.get(k)
        if isinstance(v, bool) or not isinstance(v, str | int) or str(v).strip() == "":
            raise DataError(f"{k} is missing or empty", where=k, fix=f"send {k} as a string")
        ev[k] = str(v).strip()
    ev["timestamp"] = _parse_time(obj.get("timestamp"), "timestamp", cfg.timezone)
    amount = obj.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, _NUMBER):
        raise DataError(f"amount {amount!r} is not a number", where="amount", fix="send a number")
    if not math.isfinite(amount) or amount < 0:
        raise DataError(f"amount {amount!r} must be finite and >= 0", where="amount")
    ev["amount"] = float(amount)
    for k in ("merchant_id", "merchant_category", "device_id", "country", "channel"):
        v = obj.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, str | int)):
            raise DataError(f"{k} must be a string", where=k)
        ev[k] = None if v is None or str(v).strip() == "" else str(v).strip()
    for name in extra:
        col = name[2:] if name.startswith("x_") else name
        v = obj.get(col)
        if isinstance(v, bool) or not isinstance(v, _NUMBER) or not math.isfinite(v):
            raise DataError(f"{col} must be a finite number (the model uses it)", where=col)
        ev[name] = float(v)
    unknown = sorted(set(obj) - set(CANONICAL) - {n[2:] for n in extra} - {"type"})
    if unknown:
        raise DataError(
            f"unknown fields {unknown}", where="event", fix=f"send only {', '.join(CANONICAL)}"
        )
    return ev
