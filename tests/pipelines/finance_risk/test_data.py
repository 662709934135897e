"""Ingestion: layouts, mappings, per-row validation with a quarantine, and clear errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from core.errors import ConfigError, DataError
from pipelines.finance_risk.config import IngestConfig, SynthConfig, parse_mapping
from pipelines.finance_risk.data import read_transactions
from pipelines.finance_risk.synth import generate, write_dataset
from tests.pipelines.finance_risk.conftest import small_cfg

HEADER = "transaction_id,user_id,timestamp,amount,merchant_id,label\n"


def write(tmp_path, body: str, name: str = "tx.csv", header: str = HEADER):
    p = tmp_path / name
    p.write_text(header + body)
    return p


def test_csv_and_parquet_from_the_generator_read_back_identically(tmp_path):
    pq, df = write_dataset(tmp_path / "s.parquet", small_cfg(n_users=40))
    csv, _ = write_dataset(tmp_path / "s.csv", small_cfg(n_users=40, format="csv"))
    a, b = read_transactions(pq), read_transactions(csv)
    assert a.rejected == b.rejected == 0 and a.quarantine is None
    assert a.frame.equals(b.frame)
    assert a.frame.equals(df.sort(["timestamp", "transaction_id"]))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = small_cfg(n_users=30)
    p1, _ = write_dataset(tmp_path / "a.parquet", cfg)
    p2, _ = write_dataset(tmp_path / "b.parquet", cfg)
    p3, _ = write_dataset(tmp_path / "c.parquet", small_cfg(n_users=30, seed=1))
    assert p1.read_bytes() == p2.read_bytes() != p3.read_bytes()
    c1, _ = write_dataset(tmp_path / "a.csv", small_cfg(n_users=30, format="csv"))
    c2, _ = write_dataset(tmp_path / "b.csv", small_cfg(n_users=30, format="csv"))
    assert c1.read_bytes() == c2.read_bytes()


def test_generator_draws_every_scenario_with_delayed_labels():
    df = generate(SynthConfig(n_users=800, days=30, fraud_users=0.05))
    fraud = df.filter(pl.col("label") == 1)
    assert set(fraud["scenario"].unique()) == {
        "card_testing",
        "account_takeover",
        "merchant_compromise",
        "velocity_burst",
        "bust_out",
    }
    assert (df.filter(pl.col("label") == 0)["scenario"] == "none").all()
    delay = (fraud["label_time"] - fraud["timestamp"]).dt.total_seconds() / 86400
    assert delay.min() >= 1.0 and delay.max() <= 20.0 and delay.std() > 2
    assert df["transaction_id"].n_unique() == df.height
    assert df["timestamp"].is_sorted()
    # a bust-out runs 14-28 days: in a 30-day stream many are still running at the end, and
    # their later transactions fall after it, not on its last second
    end = dt.datetime(2024, 1, 31, tzinfo=dt.UTC)
    assert df["timestamp"].max() < end
    assert fraud.group_by("timestamp").len()["len"].max() <= 2, "frauds piled on one second"


def test_a_users_own_layout_loads_through_a_mapping(tmp_path):
    p = write(
        tmp_path,
        "a1,c1,2024-01-01T10:00:00Z,12.5\na2,c1,2024-01-01T11:00:00Z,3\n",
        header="txn,customer,when,value\n",
    )
    with pytest.raises(DataError) as err:
        read_transactions(p)
    msg = str(err.value)
    assert "required columns ['transaction_id', 'user_id', 'timestamp', 'amount']" in msg
    assert "columns found: ['txn', 'customer', 'when', 'value']" in msg and "--map" in msg
    cfg = IngestConfig(
        column_map=parse_mapping(
            ["transaction_id=txn", "user_id=customer", "timestamp=when", "amount=value"]
        )
    )
    tx = read_transactions(p, cfg)
    assert tx.frame["amount"].to_list() == [12.5, 3.0] and tx.frame["user_id"][0] == "c1"
    with pytest.raises(DataError, match=r"no column 'custmer'.*did you mean"):
        read_transactions(p, IngestConfig(column_map={"user_id": "custmer"}))
    with pytest.raises(ConfigError, match="CANONICAL=SOURCE"):
        parse_mapping(["user_id"])
    with pytest.raises(ConfigError, match="unknown canonical"):
        IngestConfig(column_map={"userid": "x"})


def test_kaggle_creditcard_layout(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    cols = {"Time": np.sort(rng.integers(0, 172800, n)).astype(float)}
    cols |= {f"V{i}": rng.normal(size=n) for i in range(1, 29)}
    cols |= {
        "Amount": np.round(rng.lognormal(3, 1, n), 2),
        "Class": (rng.random(n) < 0.1).astype(int),
    }
    pl.DataFrame(cols).write_csv(tmp_path / "creditcard.csv")
    tx = read_transactions(tmp_path / "creditcard.csv", IngestConfig(preset="kaggle_creditcard"))
    f = tx.frame
    assert f.height == n and tx.rejected == 0 and len(tx.extra_features) == 28
    assert f["timestamp"].min() == dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=float(cols["Time"].min())
    )
    assert (
        f.sort("transaction_id")["x_V3"].to_list() != [] and f["label"].sum() == cols["Class"].sum()
    )
    assert (f["label_time"] - f["timestamp"]).dt.total_days().to_list() == [7] * n
    with pytest.raises(DataError, match="does not have the kaggle_creditcard layout"):
        read_transactions(
            write(tmp_path, "a,b,2024-01-01,1,m,0\n"), IngestConfig(preset="kaggle_creditcard")
        )


def test_paysim_layout(tmp_path):
    header = "step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,newbalanceDest,isFraud,isFlaggedFraud\n"
    body = (
        "1,PAYMENT,9839.64,C1231006815,170136.0,160296.36,M1979787155,0.0,0.0,0,0\n"
        "1,TRANSFER,181.0,C1305486145,181.0,0.0,C553264065,0.0,0.0,1,0\n"
        "3,CASH_OUT,181.0,C840083671,181.0,0.0,C38997010,21182.0,0.0,1,0\n"
    )
    tx = read_transactions(
        write(tmp_path, body, "paysim.csv", header), IngestConfig(preset="paysim")
    )
    f = tx.frame
    assert f["user_id"].to_list() == ["C1231006815", "C1305486145", "C840083671"]
    assert f["channel"].to_list() == ["PAYMENT", "TRANSFER", "CASH_OUT"]
    assert f["timestamp"][2] == dt.datetime(2024, 1, 1, 3, tzinfo=dt.UTC)
    assert f["x_oldbalanceDest"].to_list() == [0.0, 0.0, 21182.0]


def test_bad_rows_go_to_the_quarantine_with_their_reason(tmp_path):
    body = (
        "t1,u1,2024-01-01T10:00:00Z,10,m1,0\n"
        "t2,u1,yesterday,10,m1,0\n"
        "t3,u1,2024-01-01T10:00:00 Mars/Olympus,10,m1,0\n"
        "t4,u1,2024-01-01T10:00:00Z,-5,m1,0\n"
        "t5,u1,2024-01-01T10:00:00Z,NaN,m1,0\n"
        "t6,u1,2024-01-01T10:00:00Z,ten,m1,0\n"
        ",u1,2024-01-01T10:00:00Z,10,m1,0\n"
        "t8,,2024-01-01T10:00:00Z,10,m1,0\n"
        "t1,u2,2024-01-02T10:00:00Z,11,m1,1\n"
        "t10,u2,2024-01-02T10:00:00Z,11,m1,0.5\n"
        "t11,u2,2024-03-31T02:30:00 Europe/Berlin,11,m1,0\n"
        + "".join(f"g{i},u3,2024-01-0{1 + i % 9}T10:00:00Z,{i + 1},m2,\n" for i in range(12))
    )
    tx = read_transactions(write(tmp_path, body))
    assert tx.rows_read == 23 and tx.frame.height == 13 and tx.rejected == 10
    assert tx.reasons == {
        "bad_timestamp": 2,
        "unknown_time_zone": 1,
        "negative_amount": 1,
        "non_finite_amount": 1,
        "bad_amount": 1,
        "missing_transaction_id": 1,
        "missing_user_id": 1,
        "duplicate_transaction_id": 1,
        "bad_label": 1,
    }
    q = pl.read_csv(tx.quarantine, infer_schema=False)
    assert q.height == 10 and set(q.columns) >= {"row", "reason", "transaction_id", "amount"}
    why = dict(zip(q["row"].cast(int).to_list(), q["reason"].to_list(), strict=True))
    assert why[3] == "unknown time zone 'Mars/Olympus'"
    assert why[6] == "amount 'ten' is not a number"
    assert why[9] == "duplicate transaction_id (first at row 1)"
    assert "not a real local time" in why[11]  # 02:30 does not exist in Berlin that night
    assert tx.frame["label"].null_count() == 12  # unlabelled rows are kept, not rejected


def test_mixed_zones_become_one_utc_instant(tmp_path):
    body = (
        "a,u,2024-03-01T10:00:00+02:00,1,m,0\n"
        "b,u,2024-03-01T08:00:00Z,1,m,0\n"
        "c,u,2024-03-01 09:00 Europe/Berlin,1,m,0\n"
        "d,u,2024-03-01T03:00:00-0500,1,m,0\n"
        "e,u,2024-03-01T09:00:00,1,m,0\n"
    )
    p = write(tmp_path, body)
    got = read_transactions(p, IngestConfig(timezone="Europe/Paris")).frame
    want = dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)
    assert got["timestamp"].to_list() == [want] * 5
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        IngestConfig(timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "the file is empty"),
        (HEADER, "header but no rows"),
        (HEADER + "".join(f"t{i},u,soon,{i},m,0\n" for i in range(10)), "10 of 10 rows are bad"),
        (HEADER + "t1,u,2024-01-01,lots,m,0\nt2,u,2024-01-01,many,m,0\n", "bad_amount: 2"),
    ],
    ids=["empty", "header-only", "mostly-bad", "wrong-types"],
)
def test_files_that_cannot_be_used_are_clear_errors(tmp_path, content, match):
    p = tmp_path / "tx.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=match) as err:
        read_transactions(p)
    if "rows are bad" in str(err.value) or "bad_amount" in str(err.value):
        assert (tmp_path / "tx.csv.quarantine.csv").is_file()  # nothing lost


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "tx.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="unknown file type"):
        read_transactions(tmp_path / "tx.xlsx")
    with pytest.raises(DataError, match="no such file"):
        read_transactions(tmp_path / "none.csv")
