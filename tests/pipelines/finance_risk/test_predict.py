"""The scorer: the online path equals batch scoring, state survives a kill, duplicates count
once, bad events are named, identifiers never reach the logs raw."""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl
import pytest

from core.errors import DataError
from pipelines.finance_risk.config import EVENT_FIELDS
from pipelines.finance_risk.data import read_transactions
from pipelines.finance_risk.features import replay_order
from pipelines.finance_risk.predict import FraudScorer, hash_id
from pipelines.finance_risk.synth import write_dataset
from tests.pipelines.finance_risk.conftest import stream_cfg

pytestmark = pytest.mark.xdist_group("finance_risk_model")


@pytest.fixture(scope="module")
def fresh(trained, tmp_path_factory):
    """A stream the model has not seen (other seed), small enough to replay event by event."""
    path, _ = write_dataset(
        tmp_path_factory.mktemp("fr_fresh") / "new.parquet",
        stream_cfg(n_users=60, days=30, seed=11),
    )
    return path


def test_scoring_a_file_event_by_event_equals_batch_scoring(trained, fresh, tmp_path):
    scorer = FraudScorer(trained["model"])
    batch = scorer.score_frame(read_transactions(fresh).frame)
    online = FraudScorer(trained["model"])
    result = online.score_file(fresh, tmp_path / "scores.csv", progress=False)
    got = pl.read_csv(tmp_path / "scores.csv")
    assert result["scored"] == batch.height == got.height
    j = batch.select("transaction_id", "score", "alert").join(
        got, on="transaction_id", suffix="_online"
    )
    assert j.height == batch.height
    assert (j["score"] - j["score_online"]).abs().max() <= 1e-6
    assert (j["alert"] == j["alert_online"]).all() and batch["alert"].sum() > 0


def _events(path):
    return [
        (kind, {k: r.get(k) for k in EVENT_FIELDS} if kind == "tx" else r)
        for kind, r in replay_order(read_transactions(path).frame)
    ]


def _feed(scorer, events):
    out = {}
    for kind, r in events:
        if kind == "tx":
            out[r["transaction_id"]] = scorer.score_event(r)
        else:
            scorer.add_label(r["transaction_id"], int(r["label"]), r.get("merchant_id"))
    return out


def test_state_survives_a_kill_and_resent_events_count_once(trained, fresh, tmp_path):
    events = _events(fresh)
    straight = _feed(FraudScorer(trained["model"]), events)
    state = tmp_path / "state"
    a = FraudScorer(trained["model"], state, snapshot_every=700)
    cut = len(events) // 2
    first = _feed(a, events[:cut])
    a._log.flush()  # the process dies here: no close(), no final snapshot
    log = state / "events.jsonl"
    log.write_text(log.read_text() + '{"seq": 99999999, "kind": "tx", "ev')  # torn last write
    del a
    b = FraudScorer(trained["model"], state, snapshot_every=700)
    assert b.seq == sum(1 for _ in events[:cut])  # every applied event restored, once
    # the client resends from a little before the crash: those come back as duplicates
    resent = _feed(b, [e for e in events[cut - 30 : cut] if e[0] == "tx"])
    assert resent and all(d["duplicate"] for d in resent.values())
    rest = _feed(b, events[cut:])
    for tid, d in {**first, **rest}.items():
        assert d["score"] == pytest.approx(straight[tid]["score"], abs=1e-9), tid
        assert d["alert"] == straight[tid]["alert"]
    b.close()


def test_an_unknown_user_is_scored_cold(trained):
    d = FraudScorer(trained["model"]).score_event(
        {
            "transaction_id": "t1",
            "user_id": "never-seen",
            "timestamp": "2024-03-01T10:00:00Z",
            "amount": 12.0,
        }
    )
    assert 0.0 <= d["score"] <= 1.0 and d["duplicate"] is False and d["top_features"]


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (
            {"user_id": "u", "timestamp": "2024-03-01T10:00:00Z", "amount": 1.0},
            "transaction_id is missing",
        ),
        (
            {"transaction_id": "t", "user_id": "u", "timestamp": "soon", "amount": 1.0},
            "not ISO 8601",
        ),
        (
            {
                "transaction_id": "t",
                "user_id": "u",
                "timestamp": "2024-03-01 10:00 Mars/Base",
                "amount": 1.0,
            },
            "unknown time zone",
        ),
        (
            {
                "transaction_id": "t",
                "user_id": "u",
                "timestamp": "2024-03-31 02:30 Europe/Berlin",
                "amount": 1.0,
            },
            "DST gap",
        ),
        (
            {
                "transaction_id": "t",
                "user_id": "u",
                "timestamp": "2024-03-01T10:00:00Z",
                "amount": -3,
            },
            "must be finite and >= 0",
        ),
        (
            {
                "transaction_id": "t",
                "user_id": "u",
                "timestamp": "2024-03-01T10:00:00Z",
                "amount": "12",
            },
            "is not a number",
        ),
        (
            {
                "transaction_id": "t",
                "user_id": "u",
                "timestamp": "2024-03-01T10:00:00Z",
                "amount": 1,
                "cvv": 1,
            },
            "unknown fields",
        ),
    ],
    ids=["no-id", "bad-time", "bad-zone", "dst-gap", "negative", "string-amount", "unknown-field"],
)
def test_bad_events_name_the_field_and_change_nothing(trained, event, match):
    scorer = FraudScorer(trained["model"])
    with pytest.raises(DataError, match=match):
        scorer.score_event(event)
    assert scorer.seq == 0 and not scorer.features.users


def test_identifiers_are_logged_hashed_never_raw(trained, caplog):
    scorer = FraudScorer(trained["model"])
    t0 = dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    with caplog.at_level(logging.INFO, logger="pipelines.finance_risk"):
        for i in range(12):  # a burst of tiny charges from a new device abroad: an alert
            scorer.score_event(
                {
                    "transaction_id": f"CARD-4111111111111111-{i}",
                    "user_id": "ACCT-0042",
                    "timestamp": t0 + dt.timedelta(seconds=20 * i),
                    "amount": 1.0 + i,
                    "merchant_id": "m-x",
                    "device_id": "dev-new",
                    "country": "BR",
                    "channel": "online",
                }
            )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "alert" in text and hash_id("ACCT-0042") in text
    assert "4111111111111111" not in text and "ACCT-0042" not in text


_WORKER = """
import json, sys
from pipelines.finance_risk.predict import FraudScorer
scorer = FraudScorer(sys.argv[1], sys.argv[2], snapshot_every=150)
for line in sys.stdin:
    d = scorer.score_event(json.loads(line))
    print(json.dumps({"id": d["transaction_id"], "score": d["score"], "dup": d["duplicate"]}), flush=True)
"""


@pytest.mark.multiprocess
def test_a_sigkilled_scorer_loses_nothing_and_counts_nothing_twice(trained, fresh, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    txs = [r for kind, r in _events(fresh) if kind == "tx"][:400]
    lines = [json.dumps({**r, "timestamp": r["timestamp"].isoformat()}) for r in txs]
    straight = FraudScorer(trained["model"])
    want = {r["transaction_id"]: straight.score_event(r)["score"] for r in txs}
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-c", _WORKER, str(trained["model"]), str(tmp_path / "state")]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    for line in lines[:250]:  # a client that sends one event and waits for its answer
        p.stdin.write(line + "\n")
        p.stdin.flush()
        acked.append(json.loads(p.stdout.readline()))
    os.kill(p.pid, signal.SIGKILL)  # no close, no final snapshot
    p.wait()
    # the client resends from its last 20 acknowledged events on
    q = subprocess.run(
        cmd,
        input="\n".join(lines[230:]) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert q.returncode == 0, q.stderr[-2000:]
    again = [json.loads(x) for x in q.stdout.splitlines()]
    assert all(a["dup"] for a in again[:20]) and not any(a["dup"] for a in again[20:])
    got = {a["id"]: a["score"] for a in acked + again[20:]}
    assert set(got) == set(want)
    assert all(got[k] == pytest.approx(want[k], abs=1e-9) for k in want)
