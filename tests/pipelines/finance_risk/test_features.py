"""Point-in-time features: equal to the pandas reference, blind to the future, equal online."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from core.errors import DataError
from pipelines.finance_risk import features as F
from pipelines.finance_risk.config import FeatureConfig
from pipelines.finance_risk.features import (
    OnlineFeatures,
    compute_features,
    feature_names,
    replay_order,
    user_features,
)
from tests.pipelines.finance_risk.pandas_reference import reference_features

NAMES = feature_names(FeatureConfig())


def assert_same(a: np.ndarray, b: np.ndarray, names: list[str], tol: float = 1e-9) -> None:
    """Same NaN pattern; values within ``tol``, relative above 1 (a z-score of -28 inherits
    pandas' rolling-std error times 28: pandas' add/remove variance is the less exact of the
    two, 2e-10 off a two-pass std where polars is 5e-15 off, measured)."""
    for j, n in enumerate(names):
        na, nb = np.isnan(a[:, j]), np.isnan(b[:, j])
        assert (na == nb).all(), f"{n}: NaN pattern differs at {np.flatnonzero(na != nb)[:5]}"
        if (~na).any():
            d = np.abs(a[~na, j] - b[~na, j]) / np.maximum(1.0, np.abs(b[~na, j]))
            assert d.max() <= tol, f"{n}: max diff {d.max():g} (relative above 1)"


def test_polars_features_equal_the_pandas_reference(stream):
    got = compute_features(stream)
    ref = reference_features(stream.to_pandas())
    assert got["transaction_id"].to_list() == ref["transaction_id"].tolist()
    assert_same(got.select(NAMES).to_numpy(), ref[NAMES].to_numpy(float), NAMES)


def test_reference_agrees_on_other_windows_and_per_user_rolling(stream, monkeypatch):
    cfg = FeatureConfig(windows=("90m", "3d", "2w"), zscore_window="3d", distinct_window="2w")
    names = feature_names(cfg)
    ref = reference_features(stream.to_pandas(), cfg)[names].to_numpy(float)
    assert_same(compute_features(stream, cfg).select(names).to_numpy(), ref, names)
    monkeypatch.setattr(F, "OFFSET_LIMIT", 0)  # the per-user rolling path
    assert_same(compute_features(stream, cfg).select(names).to_numpy(), ref, names)


def _row(f: pl.DataFrame, tid: str) -> dict:
    return f.filter(pl.col("transaction_id") == tid).row(0, named=True)


def test_ties_do_not_see_each_other_and_gaps_empty_the_windows(stream):
    f = compute_features(stream)
    for i in range(4):  # four at one instant: none sees another
        r = _row(f, f"tie{i}")
        assert r["count_1h"] == 0 and np.isnan(r["secs_since_prev"]) and r["new_device"] == 1
    r = _row(f, "tie5")  # five minutes later: all four, not its twin tie4
    assert r["count_1h"] == 4 and r["sum_1h"] == 100.0 and r["secs_since_prev"] == 300
    assert r["distinct_merchants"] == 2 and r["new_merchant"] == 0
    g = _row(f, "gap2")  # 40 days after the previous: every window is empty
    assert g["count_30d"] == 0 and np.isnan(g["mean_30d"]) and g["new_merchant"] == 0
    assert g["secs_since_prev"] == 40 * 86400 and g["distinct_merchants"] == 0
    s = _row(f, "single2")  # nothing optional: NaN flags, risk unknown
    assert np.isnan(s["new_merchant"]) and np.isnan(s["merchant_risk"])


def test_no_feature_changes_when_the_future_changes(stream):
    cut = dt.datetime(2024, 1, 25, tzinfo=dt.UTC)
    before = compute_features(stream).filter(pl.col("timestamp") <= cut)
    future = pl.col("timestamp") > cut
    unknown_yet = pl.col("label_time") >= cut  # labels not known at the cut, on past rows
    rng = np.random.default_rng(1)
    noise = pl.Series(rng.uniform(0.1, 50, stream.height))
    shifted = stream.with_columns(
        amount=pl.when(future).then(pl.col("amount") * noise).otherwise(pl.col("amount")),
        merchant_id=pl.when(future).then(pl.lit("m00007")).otherwise(pl.col("merchant_id")),
        device_id=pl.when(future).then(pl.lit("dnew")).otherwise(pl.col("device_id")),
        label=pl.when(unknown_yet).then(1 - pl.col("label")).otherwise(pl.col("label")),
    )
    later = shifted.filter(future).with_columns(
        transaction_id=pl.col("transaction_id") + "_dup",
        timestamp=pl.col("timestamp") - pl.duration(seconds=1),
    )
    after = compute_features(pl.concat([shifted, later])).filter(pl.col("timestamp") <= cut)
    assert after.height == before.height and before.height > 1000
    assert_same(before.select(NAMES).to_numpy(), after.select(NAMES).to_numpy(), NAMES, 0.0)
    # and the change was real: features after the cut did change
    moved = compute_features(shifted).filter(pl.col("timestamp") > cut)
    orig = compute_features(stream).filter(pl.col("timestamp") > cut)
    assert not np.allclose(moved["sum_30d"].to_numpy(), orig["sum_30d"].to_numpy(), equal_nan=True)


def test_own_amount_and_label_never_enter_own_features(stream):
    tid = stream.filter(pl.col("label") == 1)["transaction_id"][0]
    base = _row(compute_features(stream), tid)
    edited = stream.with_columns(
        amount=pl.when(pl.col("transaction_id") == tid).then(1e6).otherwise(pl.col("amount")),
        label=pl.when(pl.col("transaction_id") == tid).then(0).otherwise(pl.col("label")),
        label_time=pl.when(pl.col("transaction_id") == tid)
        .then(pl.col("timestamp"))
        .otherwise(pl.col("label_time")),
    )
    got = _row(compute_features(edited), tid)
    for n in NAMES:
        if n in ("amount", "log_amount", "amount_z", "amount_to_mean"):  # its own amount
            continue
        assert got[n] == base[n] or (np.isnan(got[n]) and np.isnan(base[n])), n


def test_a_partition_by_user_gives_the_same_rows(stream):
    whole = user_features(stream, FeatureConfig())
    h = stream["user_id"].hash() % 3
    parts = pl.concat([user_features(stream.filter(h == k), FeatureConfig()) for k in range(3)])
    parts = parts.sort(["user_id", "timestamp", "transaction_id"])
    names = [n for n in NAMES if not n.startswith("merchant_")]  # those look across users
    assert_same(whole.select(names).to_numpy(), parts.select(names).to_numpy(), names, 0.0)


def _replay(of: OnlineFeatures, events) -> dict[str, list[float]]:
    got = {}
    for kind, r in events:
        if kind == "tx":
            got[r["transaction_id"]] = of.update(r)
        else:
            of.add_label(r["merchant_id"], r["label"])
    return got


def test_online_features_equal_batch_for_every_event(stream):
    batch = compute_features(stream)
    got = _replay(OnlineFeatures(), replay_order(stream))
    online = np.array([got[t] for t in batch["transaction_id"]])
    assert_same(batch.select(NAMES).to_numpy(), online, NAMES)


def test_snapshot_and_restore_mid_stream_lose_nothing(stream, tmp_path):
    events = replay_order(stream)
    half = len(events) // 2
    of = OnlineFeatures()
    first = _replay(of, events[:half])
    path = of.snapshot(tmp_path / "state.json")
    restored = OnlineFeatures.restore(path, FeatureConfig())
    assert restored.events == of.events
    rest = _replay(restored, events[half:])
    straight = _replay(OnlineFeatures(), events)
    assert set(first) | set(rest) == set(straight)
    a = np.array([straight[t] for t in rest])
    b = np.array([rest[t] for t in rest])
    assert_same(a, b, NAMES, 0.0)


def test_restore_refuses_corrupt_state_and_other_definitions(stream, tmp_path):
    of = OnlineFeatures()
    _replay(of, replay_order(stream.head(200)))
    path = of.snapshot(tmp_path / "state.json")
    with pytest.raises(DataError, match="other feature definitions"):
        OnlineFeatures.restore(path, FeatureConfig(windows=("1h", "30d")))
    path.write_text(path.read_text()[:100])
    with pytest.raises(DataError, match="cannot read the feature state"):
        OnlineFeatures.restore(path)


def test_an_unknown_user_is_a_cold_start():
    of = OnlineFeatures()
    f = dict(
        zip(
            NAMES,
            of.update(
                {
                    "transaction_id": "a",
                    "user_id": "never-seen",
                    "timestamp": dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
                    "amount": 12.5,
                    "merchant_id": "m1",
                }
            ),
            strict=True,
        )
    )
    assert f["count_30d"] == 0 and np.isnan(f["mean_30d"]) and f["new_merchant"] == 1
    assert np.isnan(f["new_device"]) and f["merchant_risk"] == pytest.approx(0.01)
    assert json.dumps(of.state())  # the new user is in the state


def test_features_refuse_an_empty_table_or_missing_columns(stream):
    with pytest.raises(DataError, match="no transactions"):
        compute_features(stream.head(0))
    with pytest.raises(DataError, match=r"\['amount'\]"):
        compute_features(stream.drop("amount"))
