"""Configuration of the finance_risk stages: one dataclass per stage, safe laptop defaults.

Units: amounts in the currency of the input (no conversion), times in UTC, windows and
delays in the units their names say (``_days``, ``_hours``). Not here: column layouts of
public data sets (``data.PRESETS``) and the feature definitions (``features.py``).
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field

from core.errors import ConfigError
from core.typedconfig import check_types

#: Canonical columns. The first four are required; a mapping names the source column of each.
REQUIRED = ("transaction_id", "user_id", "timestamp", "amount")
OPTIONAL = (
    "merchant_id",
    "merchant_category",
    "device_id",
    "country",
    "channel",
    "label",
    "label_time",
    "scenario",
)
CANONICAL = REQUIRED + OPTIONAL
#: What one online transaction event carries (the labels arrive later, on their own).
EVENT_FIELDS = REQUIRED + OPTIONAL[:5]

#: Fraud scenarios the seeded simulator draws (``synth.py``); "none" is legitimate.
SCENARIOS = (
    "card_testing",
    "account_takeover",
    "merchant_compromise",
    "velocity_burst",
    "bust_out",
)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def window_seconds(window: str) -> int:
    """``"1h"``, ``"24h"``, ``"7d"``, ``"30d"``, ``"90m"``, ``"2w"`` as whole seconds."""
    num, unit = window[:-1], window[-1:]
    if unit not in _UNITS or not num.isdigit() or int(num) < 1:
        raise ConfigError(
            f"window {window!r} is not a positive whole number of s, m, h, d or w",
            fix='write e.g. "1h", "24h", "7d"',
        )
    return int(num) * _UNITS[unit]


def parse_mapping(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["user_id=customer", ...]`` (the CLI's ``--map``) as ``{"user_id": "customer"}``."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(
                f"column mapping {p!r} is not CANONICAL=SOURCE", fix="write e.g. user_id=customer"
            )
        out[key] = value
    return out


@dataclass
class IngestConfig:
    """How a CSV or Parquet file of transactions becomes a validated table."""

    preset: str | None = None  # a public layout ("kaggle_creditcard", "paysim"); None: canonical
    column_map: dict[str, str] = field(default_factory=dict)  # canonical -> source column name
    extra_features: tuple[str, ...] = ()  # numeric source columns passed to the models as-is
    timezone: str = "UTC"  # zone of timestamps written without an offset
    time_origin: str = "2024-01-01T00:00:00Z"  # for layouts whose time is a step count
    label_delay_days: float = 7.0  # label time when a file has labels but no label times
    max_bad_fraction: float = 0.5  # more rejected rows than this: the file is an error
    quarantine_dir: str | None = None  # where rejected rows go; None: beside the output

    def __post_init__(self) -> None:
        check_types(self)
        self.extra_features = tuple(self.extra_features)
        unknown = sorted(set(self.column_map) - set(CANONICAL))
        if unknown:
            raise ConfigError(
                f"column_map names unknown canonical columns {unknown}",
                fix=f"map one of {', '.join(CANONICAL)}",
            )
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"timezone {self.timezone!r} is not an IANA time zone",
                fix="use e.g. UTC or Europe/Berlin",
            ) from exc
        if not 0.0 < self.max_bad_fraction <= 1.0:
            raise ConfigError("max_bad_fraction must lie in (0, 1]", fix="use e.g. 0.5")
        if self.label_delay_days < 0:
            raise ConfigError("label_delay_days must be >= 0", fix="use e.g. 7")


@dataclass
class SynthConfig:
    """A seeded stream of card transactions with fraud scenarios and delayed labels."""

    n_users: int = 3000  # account holders
    days: int = 120  # length of the stream (the first 30 days only warm the features up)
    start: str = "2024-01-01"  # first day (UTC)
    tx_per_day: tuple[float, float] = (0.3, 4.0)  # range of users' mean daily transactions
    n_merchants: int = 2000  # merchant pool (Zipf popularity)
    fraud_users: float = 0.02  # share of users hit by one fraud scenario
    scenario_weights: tuple[float, ...] = (0.2, 0.25, 0.15, 0.25, 0.15)  # SCENARIOS
    label_delay_days: tuple[float, float] = (1.0, 20.0)  # fraud labels (chargebacks) arrive
    legit_label_days: float = 10.0  # a legitimate transaction is confirmed this much later
    format: str = "parquet"  # "parquet" or "csv"
    seed: int = 0  # same seed, same bytes

    def __post_init__(self) -> None:
        check_types(self)
        self.tx_per_day = tuple(self.tx_per_day)  # type: ignore[assignment]
        self.scenario_weights = tuple(self.scenario_weights)
        self.label_delay_days = tuple(self.label_delay_days)  # type: ignore[assignment]
        if self.n_users < 1 or self.days < 1 or self.n_merchants < 10:
            raise ConfigError(
                "n_users and days must be >= 1, n_merchants >= 10", fix="use the defaults"
            )
        if not 0 < self.tx_per_day[0] <= self.tx_per_day[1]:
            raise ConfigError("tx_per_day must be (low, high) with 0 < low <= high", fix="(0.3, 4)")
        if not 0.0 <= self.fraud_users <= 0.5:
            raise ConfigError("fraud_users must lie in [0, 0.5]", fix="use e.g. 0.02")
        if len(self.scenario_weights) != len(SCENARIOS) or min(self.scenario_weights) < 0:
            raise ConfigError(
                f"scenario_weights needs {len(SCENARIOS)} non-negative weights {SCENARIOS}",
                fix="use e.g. (0.2, 0.25, 0.15, 0.25, 0.15)",
            )
        if sum(self.scenario_weights) <= 0:
            raise ConfigError("scenario_weights must not all be zero", fix="use the defaults")
        if not 0 <= self.label_delay_days[0] <= self.label_delay_days[1]:
            raise ConfigError(
                "label_delay_days must be (low, high), 0 <= low <= high", fix="(1, 20)"
            )
        if self.format not in ("parquet", "csv"):
            raise ConfigError(f"format {self.format!r} is not parquet or csv", fix="parquet")


@dataclass
class FeatureConfig:
    """The point-in-time feature definitions (``features.py``)."""

    windows: tuple[str, ...] = ("1h", "24h", "7d", "30d")  # per-user look-back windows
    zscore_window: str = "30d"  # amount z-score against this window's mean and std
    distinct_window: str = "30d"  # distinct merchants / devices / countries in this window
    merchant_windows: tuple[str, ...] = ("24h", "7d")  # a merchant's transactions (any user)
    merchant_prior: float = 0.01  # merchant risk before any label is known
    merchant_prior_weight: float = 20.0  # pseudo-labels of the prior (smoothing)
    sequence_length: int = 16  # events of history the sequence model sees

    def __post_init__(self) -> None:
        check_types(self)
        self.windows = tuple(self.windows)
        if not self.windows:
            raise ConfigError("windows must not be empty", fix='use e.g. ("1h", "24h")')
        self.merchant_windows = tuple(self.merchant_windows)
        for w in (*self.windows, *self.merchant_windows, self.zscore_window, self.distinct_window):
            window_seconds(w)
        for w in (self.zscore_window, self.distinct_window):
            if w not in self.windows:
                raise ConfigError(
                    f"window {w!r} is used for z-score/distinct counts but not in windows",
                    fix=f"add it to windows {self.windows}",
                )
        if not 0.0 <= self.merchant_prior <= 1.0 or self.merchant_prior_weight <= 0:
            raise ConfigError(
                "merchant_prior must lie in [0, 1] and merchant_prior_weight be > 0",
                fix="use 0.01 and 20",
            )
        if self.sequence_length < 1:
            raise ConfigError("sequence_length must be >= 1", fix="use e.g. 16")
