"""A seeded card-transaction simulator with fraud scenarios and delayed labels.

Users have their own spending profile (a third of the accounts open during the stream): a log-normal amount level, a daily rate, a peak hour
and weekend habit, favourite merchants drawn from a Zipf-popular pool, one or two devices, a
home country and a channel mix. Five fraud scenarios each leave their own signature:

- ``card_testing``: a burst of tiny online charges at unfamiliar merchants from a new device,
  then one or two large ones;
- ``account_takeover``: a new device from a foreign country, a few large online purchases;
- ``merchant_compromise``: a rogue merchant charges many users who never shopped there,
  from a small pool of shared fraudster devices;
- ``velocity_burst``: many card-present charges within an hour at unfamiliar merchants;
- ``bust_out``: weeks of spending that grows from twice the user's level to 8-20 times it,
  at a few usual-looking merchants.

Every transaction gets its label and the time the label became known: a fraud label when
its chargeback arrives (``label_delay_days``), a legitimate one when its dispute window
closes (``legit_label_days``). The ``scenario`` column is ground truth ("none" for
legitimate). Output is the canonical layout of ``data.py`` in Parquet or CSV; the same seed
gives the same bytes. Not here: reading files (``data.py``) or features (``features.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from core.atomic import atomic_file
from pipelines.finance_risk.config import SCENARIOS, SynthConfig

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "BR", "IN", "JP")
COUNTRY_WEIGHTS = (0.3, 0.12, 0.12, 0.1, 0.07, 0.07, 0.05, 0.05, 0.03, 0.04, 0.03, 0.02)
CATEGORIES = (
    "grocery",
    "restaurant",
    "fuel",
    "online_retail",
    "electronics",
    "travel",
    "pharmacy",
    "clothing",
    "entertainment",
    "utilities",
    "digital_goods",
    "jewelry",
)
# typical amount of a category relative to the user's own level
CATEGORY_FACTOR = (0.8, 0.9, 1.0, 1.2, 2.5, 3.0, 0.6, 1.4, 0.9, 1.5, 0.4, 4.0)
CHANNELS = ("pos", "online", "atm")
_US = 1_000_000  # microseconds per second


def _users(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = cfg.n_users
    lo, hi = np.log(cfg.tx_per_day[0]), np.log(cfg.tx_per_day[1])
    online = rng.uniform(0.05, 0.6, n)
    atm = rng.uniform(0.0, 0.1, n)
    return {
        "rate": np.exp(rng.uniform(lo, hi, n)),
        "mu": rng.normal(3.3, 0.6, n),
        "sigma": rng.uniform(0.35, 0.9, n),
        "home": rng.choice(len(COUNTRIES), n, p=np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS)),
        "two_devices": rng.random(n) < 0.3,
        "peak": rng.uniform(8.0, 21.0, n),
        "spread": rng.uniform(1.5, 4.0, n),
        "weekend": rng.uniform(0.6, 1.5, n),
        "p_online": online,
        "p_atm": atm,
        "n_fav": rng.integers(3, 13, n),
        # a third of the accounts open during the stream (new customers have no history)
        "joined": np.where(rng.random(n) < 0.67, 0, rng.integers(0, cfg.days, n)),
    }


def _merchants(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pop = 1.0 / np.arange(1, cfg.n_merchants + 1) ** 1.1
    rng.shuffle(pop)
    return {"pop": pop / pop.sum(), "cat": rng.integers(0, len(CATEGORIES), cfg.n_merchants)}


def _columns(n: int) -> dict[str, np.ndarray]:
    return {
        "user": np.empty(n, np.int64),
        "ts": np.empty(n, np.int64),
        "amount": np.empty(n, np.float64),
        "merchant": np.empty(n, np.int64),
        "device": np.empty(n, np.int64),  # >= 0: user-owned index; < 0: fraudster device
        "country": np.empty(n, np.int64),
        "channel": np.empty(n, np.int64),
        "scenario": np.zeros(n, np.int64),  # 0: legitimate, k: SCENARIOS[k-1]
    }


def _legit(cfg: SynthConfig, users: dict, merch: dict, rng: np.random.Generator) -> dict:
    n_u = cfg.n_users
    active_days = cfg.days - users["joined"]
    counts = rng.poisson(users["rate"] * active_days)
    total = int(counts.sum())
    out = _columns(total)
    u = np.repeat(np.arange(n_u), counts)
    out["user"][:] = u
    # day: weekends weighted by the user's habit (the stream starts on cfg.start's weekday)
    start = np.datetime64(cfg.start, "D")
    weekday0 = (start.astype("datetime64[D]").view("int64") - 4) % 7  # 1970-01-01 was Thursday
    first, span = users["joined"][u], active_days[u]
    day = first + (rng.random(total) * span).astype(np.int64)
    is_weekend = ((weekday0 + day) % 7) >= 5
    keep = rng.random(total) < np.where(is_weekend, users["weekend"][u] / 1.5, 1.0 / 1.5)
    day = np.where(keep, day, first + (rng.random(total) * span).astype(np.int64))  # unweighted
    hour = np.mod(users["peak"][u] + users["spread"][u] * rng.standard_normal(total), 24.0)
    secs = day * 86400 + np.floor(hour * 3600).astype(np.int64)
    out["ts"][:] = secs
    # merchants: favourites (a per-user Zipf-weighted subset) or the popular pool
    fav_slot = np.minimum(rng.geometric(0.35, total) - 1, users["n_fav"][u] - 1)
    fav_table = rng.choice(len(merch["pop"]), (n_u, 12), p=merch["pop"])
    favourite = fav_table[u, fav_slot]
    anywhere = rng.choice(len(merch["pop"]), total, p=merch["pop"])
    out["merchant"][:] = np.where(rng.random(total) < 0.85, favourite, anywhere)
    cat = merch["cat"][out["merchant"]]
    factor = np.asarray(CATEGORY_FACTOR)[cat]
    amount = np.exp(users["mu"][u] + users["sigma"][u] * rng.standard_normal(total)) * factor
    out["amount"][:] = np.maximum(np.round(amount, 2), 0.5)
    second = users["two_devices"][u] & (rng.random(total) < 0.25)
    out["device"][:] = second.astype(np.int64)
    travel = rng.random(total) < 0.02
    out["country"][:] = np.where(travel, rng.integers(0, len(COUNTRIES), total), users["home"][u])
    r = rng.random(total)
    p_on, p_atm = users["p_online"][u], users["p_atm"][u]
    out["channel"][:] = np.where(r < p_on, 1, np.where(r < p_on + p_atm, 2, 0))
    return out


def _fraud(cfg: SynthConfig, users: dict, merch: dict, rng: np.random.Generator) -> dict:
    n_f = round(cfg.fraud_users * cfg.n_users)
    victims = rng.choice(cfg.n_users, n_f, replace=False)
    w = np.asarray(cfg.scenario_weights, float)
    kinds = rng.choice(len(SCENARIOS), n_f, p=w / w.sum())
    n_m = len(merch["pop"])
    tail = np.argsort(merch["pop"])[: max(n_m // 5, 1)]  # rarely visited merchants
    rogue = rng.choice(tail, 3, replace=False)  # merchants compromised in this stream
    rogue_start = rng.uniform(0.1, 0.85, 3) * cfg.days * 86400
    rows: list[tuple[int, int, float, int, int, int, int, int]] = []
    popular = lambda: int(rng.choice(n_m, p=merch["pop"]))  # noqa: E731
    for v, k in zip(victims.tolist(), kinds.tolist(), strict=True):
        level = float(np.exp(users["mu"][v]))
        home = int(users["home"][v])
        foreign = int(rng.choice([c for c in range(len(COUNTRIES)) if c != home]))
        t = max(rng.uniform(0.1, 0.92) * cfg.days, users["joined"][v] + rng.uniform(0.5, 5)) * 86400
        name = SCENARIOS[k]

        def add(
            t: float, amount: float, merchant: int, device: int, country: int, channel: int
        ) -> None:
            rows.append((v, int(t), amount, merchant, device, country, channel, k + 1))  # noqa: B023

        if name == "card_testing":  # tiny online charges, then the real ones
            tested = rng.choice(tail, rng.integers(1, 4))
            for _ in range(int(rng.integers(5, 21))):
                t += rng.exponential(45.0)
                add(
                    t,
                    rng.uniform(0.5, 3.0),
                    int(rng.choice(tested)),
                    -1 - v,
                    home if rng.random() < 0.5 else foreign,
                    1,
                )
            for _ in range(int(rng.integers(1, 3))):
                t += rng.exponential(900.0)
                add(t, rng.uniform(200, 1500), popular(), -1 - v, foreign, 1)
        elif name == "account_takeover":  # a new device abroad, large online purchases
            for _ in range(int(rng.integers(2, 7))):
                t += rng.exponential(3600.0)
                add(t, level * rng.uniform(7.5, 25.0), popular(), -1 - v, foreign, 1)
        elif name == "merchant_compromise":  # a rogue merchant charges users it never served
            j = int(rng.integers(0, 3))
            t = rogue_start[j] + rng.uniform(0, 12 * 86400)
            for _ in range(int(rng.integers(1, 4))):
                t += rng.exponential(2 * 86400.0)
                add(t, rng.uniform(20, 150), int(rogue[j]), -1_000_000_000 - j, home, 1)
        elif name == "velocity_burst":  # a stolen card used in shops, fast
            for _ in range(int(rng.integers(6, 16))):
                t += rng.exponential(300.0)
                add(t, level * rng.uniform(1.0, 3.0), popular(), 0, home, 0)
        else:  # bust_out: weeks of spending from twice the user's level up to 8-20 times it
            n = int(rng.integers(8, 21))
            growth = rng.uniform(8.0, 20.0)
            favs = rng.choice(n_m, 4, p=merch["pop"])
            for i, dt_s in enumerate(np.sort(rng.uniform(0, rng.uniform(14, 28) * 86400, n))):
                add(
                    t + dt_s,
                    2.0 * level * (growth / 2.0) ** ((i + 1) / n),
                    int(rng.choice(favs)),
                    0,
                    home,
                    0,
                )
    out = _columns(len(rows))
    if rows:
        arr = np.array(rows, dtype=np.float64)
        for i, key in enumerate(out):
            out[key][:] = np.round(arr[:, i], 2) if key == "amount" else arr[:, i].astype(np.int64)
    # A scenario still running when the stream ends has its later transactions after the
    # end: they are not in the stream (piling them on its last second made dozens of
    # same-second frauds that no real stream has).
    inside = out["ts"] < cfg.days * 86400
    return {k: v[inside] for k, v in out.items()}


def generate(cfg: SynthConfig | None = None) -> pl.DataFrame:
    """The stream as a canonical table (``data.py`` columns), sorted by time."""
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(cfg.seed)
    users = _users(cfg, rng)
    merch = _merchants(cfg, rng)
    legit = _legit(cfg, users, merch, rng)
    fraud = _fraud(cfg, users, merch, rng)
    cols = {k: np.concatenate([legit[k], fraud[k]]) for k in legit}
    n = len(cols["user"])
    lo, hi = cfg.label_delay_days
    delay = np.where(
        cols["scenario"] > 0, rng.uniform(lo, hi, n) * 86400, cfg.legit_label_days * 86400
    )
    t0 = int(np.datetime64(cfg.start, "s").astype(np.int64))
    order = np.lexsort((rng.random(n), cols["user"], cols["ts"]))
    cols = {k: v[order] for k, v in cols.items()}
    delay = delay[order]
    dev, user = cols["device"], cols["user"]
    utc = pl.Datetime("us", "UTC")
    df = pl.DataFrame(
        {
            "idx": np.arange(n),
            "user": user,
            "ts": (t0 + cols["ts"]) * _US,
            "amount": cols["amount"],
            "merchant": cols["merchant"],
            "category": merch["cat"][cols["merchant"]],
            "dev_kind": np.where(dev >= 0, 0, np.where(dev > -1_000_000_000, 1, 2)),
            "dev": np.where(
                dev >= 0, dev, np.where(dev > -1_000_000_000, -1 - dev, -dev - 1_000_000_000)
            ),
            "country": cols["country"],
            "channel": cols["channel"],
            "scenario": cols["scenario"],
            "label_ts": (t0 * _US + (cols["ts"] + np.round(delay)).astype(np.int64) * _US),
        }
    )
    lut = lambda names: pl.Series(names, dtype=pl.String)  # noqa: E731
    return df.select(
        transaction_id=pl.format("tx{}", pl.col("idx").cast(pl.String).str.zfill(9)),
        user_id=pl.format("u{}", pl.col("user").cast(pl.String).str.zfill(6)),
        timestamp=pl.col("ts").cast(utc),
        amount=pl.col("amount"),
        merchant_id=pl.format("m{}", pl.col("merchant").cast(pl.String).str.zfill(5)),
        merchant_category=pl.col("category").replace_strict(
            range(len(CATEGORIES)), lut(CATEGORIES), return_dtype=pl.String
        ),
        device_id=pl.when(pl.col("dev_kind") == 0)
        .then(pl.format("d{}-{}", pl.col("user").cast(pl.String).str.zfill(6), pl.col("dev")))
        .when(pl.col("dev_kind") == 1)
        .then(pl.format("x{}", pl.col("dev").cast(pl.String).str.zfill(6)))
        .otherwise(pl.format("f{}", pl.col("dev"))),
        country=pl.col("country").replace_strict(
            range(len(COUNTRIES)), lut(COUNTRIES), return_dtype=pl.String
        ),
        channel=pl.col("channel").replace_strict(
            range(len(CHANNELS)), lut(CHANNELS), return_dtype=pl.String
        ),
        label=(pl.col("scenario") > 0).cast(pl.Int8),
        label_time=pl.col("label_ts").cast(utc),
        scenario=pl.col("scenario").replace_strict(
            range(len(SCENARIOS) + 1), lut(("none", *SCENARIOS)), return_dtype=pl.String
        ),
    )


def write_dataset(
    out: str | os.PathLike[str], cfg: SynthConfig | None = None
) -> tuple[Path, pl.DataFrame]:
    """Generate the stream and write it to ``out`` (a file, written atomically).

    The format is ``cfg.format``; timestamps in CSV are ISO 8601 in UTC with a ``Z``."""
    cfg = cfg or SynthConfig()
    df = generate(cfg)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if cfg.format == "parquet":
            df.write_parquet(tmp, statistics=False)
        else:
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            df.with_columns(
                pl.col("timestamp").dt.strftime(fmt), pl.col("label_time").dt.strftime(fmt)
            ).write_csv(tmp)
    return path, df
