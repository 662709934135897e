"""A held-out transaction simulator for finance_risk: other users, other frauds, other layout.

Nothing in ``pipelines/finance_risk`` imports this; training never sees it. It differs from
``pipelines/finance_risk/synth.py`` on purpose, everywhere:

- layout: a bank export with its own column names (``txn_ref, customer, event_time, value,
  shop, mcc, terminal, geo, medium, is_fraud, reported_at``), timestamps written with the
  customer's local UTC offset (``+01:00``, ``-05:00``...), read through a column mapping;
- users: gamma-distributed amounts, business-hours or evening spenders, weekday-heavy,
  a few heavy travellers, shared household terminals, channels ``card_present``,
  ``card_not_present``, ``wallet`` (segments the model never saw);
- frauds: ``enumeration`` (one merchant hit by many cards within an hour), ``sim_swap`` (a
  new terminal in the home country, then one very large purchase), ``mule_split`` (a day of
  amounts just under 500 at new shops), ``dormant`` (weeks of silence, then a spree),
  ``stepped_testing`` (1, 2, 5, 10, 20... at one shop);
- labels: exponential delays (mean 6 days), some frauds never reported (label 0 at 2%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

MAPPING = {
    "transaction_id": "txn_ref",
    "user_id": "customer",
    "timestamp": "event_time",
    "amount": "value",
    "merchant_id": "shop",
    "merchant_category": "mcc",
    "device_id": "terminal",
    "country": "geo",
    "channel": "medium",
    "label": "is_fraud",
    "label_time": "reported_at",
    "scenario": "pattern",
}
KINDS = ("enumeration", "sim_swap", "mule_split", "dormant", "stepped_testing")
GEOS = ("IE", "PT", "AT", "BE", "CZ", "DK", "FI", "NO", "MX", "CA", "AU", "ZA")
OFFSETS_H = (0, 0, 1, 1, 1, 1, 2, 1, -6, -5, 10, 2)


def generate(
    n_users: int = 4000, days: int = 120, fraud_users: float = 0.03, seed: int = 7
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n_shops = 1500
    pop = rng.gamma(0.5, 1.0, n_shops)
    pop /= pop.sum()
    shape = rng.uniform(1.0, 3.0, n_users)
    scale = rng.lognormal(3.0, 0.7, n_users) / shape
    rate = rng.gamma(2.0, 0.8, n_users) + 0.1
    evening = rng.random(n_users) < 0.4
    geo = rng.integers(0, len(GEOS), n_users)
    traveller = rng.random(n_users) < 0.05
    household = rng.integers(0, n_users // 2, n_users)  # two users may share a terminal
    counts = rng.poisson(rate * days)
    u = np.repeat(np.arange(n_users), counts)
    n = len(u)
    day = rng.integers(0, days, n)
    weekend = (day % 7) >= 5
    day = np.where(weekend & (rng.random(n) < 0.4), rng.integers(0, days, n), day)  # weekday-heavy
    hour = np.where(evening[u], rng.normal(20, 1.5, n), rng.normal(12.5, 2.5, n)) % 24
    t = day * 86400.0 + hour * 3600 + rng.uniform(0, 60, n)
    amount = np.round(rng.gamma(shape[u], scale[u]) + 0.5, 2)
    fav = rng.choice(n_shops, (n_users, 8), p=pop)
    shop = np.where(
        rng.random(n) < 0.75, fav[u, rng.integers(0, 8, n)], rng.choice(n_shops, n, p=pop)
    )
    away = rng.random(n) < np.where(traveller[u], 0.3, 0.01)
    g = np.where(away, rng.integers(0, len(GEOS), n), geo[u])
    term = np.where(rng.random(n) < 0.85, household[u], 100_000 + u)
    medium = rng.choice(3, n, p=(0.55, 0.3, 0.15))
    kind = np.zeros(n, np.int64)
    rows = [(u, t, amount, shop, g, term, medium, kind)]

    victims = rng.choice(n_users, round(fraud_users * n_users), replace=False)
    kinds = rng.integers(0, len(KINDS), len(victims))
    enum_shop, enum_t = rng.integers(0, n_shops), rng.uniform(0.3, 0.95) * days * 86400
    fr: list[tuple[int, float, float, int, int, int, int, int]] = []
    for v, k in zip(victims.tolist(), kinds.tolist(), strict=True):
        t0 = rng.uniform(0.2, 0.95) * days * 86400
        lvl = float(shape[v] * scale[v])
        if KINDS[k] == "enumeration":
            fr.append(
                (
                    v,
                    enum_t + rng.uniform(0, 3600),
                    rng.uniform(5, 60),
                    enum_shop,
                    int(geo[v]),
                    900_000,
                    1,
                    k + 1,
                )
            )
        elif KINDS[k] == "sim_swap":
            fr.append(
                (
                    v,
                    t0,
                    rng.uniform(2, 20),
                    int(rng.integers(0, n_shops)),
                    int(geo[v]),
                    800_000 + v,
                    2,
                    k + 1,
                )
            )
            fr.append(
                (
                    v,
                    t0 + rng.uniform(600, 7200),
                    lvl * rng.uniform(20, 40),
                    int(rng.integers(0, n_shops)),
                    int(geo[v]),
                    800_000 + v,
                    1,
                    k + 1,
                )
            )
        elif KINDS[k] == "mule_split":
            for i in range(int(rng.integers(4, 9))):
                fr.append(
                    (
                        v,
                        t0 + i * rng.uniform(1800, 7200),
                        rng.uniform(470, 499),
                        int(rng.integers(0, n_shops)),
                        int(geo[v]),
                        int(household[v]),
                        0,
                        k + 1,
                    )
                )
        elif KINDS[k] == "dormant":
            for i in range(int(rng.integers(3, 7))):
                fr.append(
                    (
                        v,
                        t0 + i * rng.uniform(300, 3000),
                        lvl * rng.uniform(4, 12),
                        int(rng.integers(0, n_shops)),
                        int(rng.integers(0, len(GEOS))),
                        700_000 + v,
                        1,
                        k + 1,
                    )
                )
        else:  # stepped testing
            s = int(rng.integers(0, n_shops))
            for i, a in enumerate((1, 2, 5, 10, 20, 50, 100)[: int(rng.integers(4, 8))]):
                fr.append(
                    (
                        v,
                        t0 + i * rng.uniform(20, 200),
                        float(a),
                        s,
                        int(geo[v]),
                        600_000 + v,
                        1,
                        k + 1,
                    )
                )
    if fr:
        arr = np.array(fr, dtype=np.float64)
        rows.append(
            tuple(arr[:, i].astype(np.int64) if i not in (1, 2) else arr[:, i] for i in range(8))
        )
    u, t, amount, shop, g, term, medium, kind = (
        np.concatenate([r[i] for r in rows]) for i in range(8)
    )
    # a dormant victim is silent for three weeks before the spree
    dormant = np.isin(u, victims[np.array(KINDS)[kinds] == "dormant"]) & (kind == 0)
    spree = {v: t0 for v, k, t0 in ((r[0], r[7], r[1]) for r in fr) if KINDS[k - 1] == "dormant"}
    if spree:
        start = np.array([spree.get(x, -1.0) for x in u])
        dormant &= (t > start - 21 * 86400) & (t < start)
        keep = ~dormant
        u, t, amount, shop, g, term, medium, kind = (
            a[keep] for a in (u, t, amount, shop, g, term, medium, kind)
        )
    t = np.minimum(t, days * 86400 - 1)
    m = len(u)
    fraud = kind > 0
    unreported = fraud & (rng.random(m) < 0.02)
    delay = np.where(fraud, rng.exponential(6 * 86400, m) + 3600, 12 * 86400)
    base = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    order = np.argsort(t, kind="stable")
    off = np.asarray(OFFSETS_H)[g]
    df = pl.DataFrame(
        {
            "txn_ref": [f"R{i:08d}" for i in range(m)],
            "customer": [f"C-{x:05d}" for x in u[order]],
            "_t": base + (t[order] * 1e6).astype(np.int64),
            "_off": off[order],
            "value": amount[order],
            "shop": [f"S{x:04d}" for x in shop[order]],
            "mcc": [str(5000 + x % 900) for x in shop[order]],
            "terminal": [f"T{x:06d}" for x in term[order]],
            "geo": np.asarray(GEOS)[g[order]],
            "medium": np.asarray(("card_present", "card_not_present", "wallet"))[medium[order]],
            "is_fraud": (fraud & ~unreported)[order].astype(np.int8),
            "_lt": base + ((t + delay)[order] * 1e6).astype(np.int64),
            "pattern": np.asarray(("none", *KINDS))[kind[order]],
        }
    )
    local = (pl.col("_t") + pl.col("_off") * 3_600_000_000).cast(pl.Datetime("us"))
    sign = pl.when(pl.col("_off") >= 0).then(pl.lit("+")).otherwise(pl.lit("-"))
    offset = pl.format("{}{}:00", sign, pl.col("_off").abs().cast(pl.String).str.zfill(2))
    return df.with_columns(
        event_time=pl.concat_str([local.dt.strftime("%Y-%m-%dT%H:%M:%S"), offset]),
        reported_at=pl.col("_lt").cast(pl.Datetime("us", "UTC")).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ).select(
        "txn_ref",
        "customer",
        "event_time",
        "value",
        "shop",
        "mcc",
        "terminal",
        "geo",
        "medium",
        "is_fraud",
        "reported_at",
        "pattern",
    )


def write(path: str | Path, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(**kw).write_csv(path)
    return path
