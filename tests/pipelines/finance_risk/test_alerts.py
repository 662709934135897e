"""The analyst's alert queue over real HTTP: the test period's events streamed in time order
fill the queue with exactly the alerts the scorer answered, by score; an alert shows the
user's own recent transactions; a decision becomes a label once and is final; bad queries and
bodies are 422s; and every decision is still there after a server restart."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import polars as pl
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.finance_risk.serve import RECENT, ROUTES, RiskPredictor

pytestmark = pytest.mark.xdist_group("finance_risk_model")


def test_events(data, n: int) -> list[dict]:
    """The last ``n`` events of the stream, in time order, as JSON events (no labels)."""
    df = pl.read_parquet(data).sort("timestamp").tail(n)
    keep = ["transaction_id", "user_id", "timestamp", "amount", "merchant_id",
            "merchant_category", "device_id", "country", "channel"]  # fmt: skip
    rows = df.select(keep).with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ"))
    return rows.to_dicts()


test_events.__test__ = False  # a helper, not a test


def _labels(log) -> int:
    """Labels in the scorer's event log (the log restarts only at a snapshot)."""
    return sum(json.loads(line)["kind"] == "label" for line in log.read_text().splitlines())


def _server(model, state):
    pred = RiskPredictor(model, "fr", state_dir=state)
    cfg = ServeConfig(max_body_bytes=4 * 2**20, drain_s=0.2)
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES))


def test_the_queue_holds_the_alerts_and_decisions_become_final_labels(trained, tmp_path):
    state = tmp_path / "state"
    events = test_events(trained["data"], 1500)
    with _server(trained["model"], state) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        answered = []
        for i in range(0, len(events), 500):
            r = c.post("/v1/models/fr/predict", json={"events": events[i : i + 500]})
            assert r.status_code == 200, r.text
            answered += r.json()["decisions"]
        alerts = [d for d in answered if d["alert"]]
        assert len(alerts) >= 3, "the test period should raise a few alerts"
        # a resent event is a duplicate: it must not enter the queue twice
        c.post("/v1/models/fr/predict", json=events[-1])

        q = c.get("/v1/alerts", params={"limit": 1000}).json()
        assert q["open"] == len(alerts) and q["decided"] == 0 and q["budget_per_day"] == 5.0
        assert sorted(a["id"] for a in q["alerts"]) == sorted(a["transaction_id"] for a in alerts)
        scores = [a["score"] for a in q["alerts"]]
        assert scores == sorted(scores, reverse=True)
        by_id = {d["transaction_id"]: d for d in alerts}
        top = q["alerts"][0]
        assert top["payload"]["top_features"] == by_id[top["id"]]["top_features"]

        # alerts per day, by the events' own dates
        want = Counter(e["timestamp"][:10] for e in events if e["transaction_id"] in by_id)
        days = c.get("/v1/alerts/per-day", params={"days": 366}).json()["days"]
        assert {d["day"]: d["alerts"] for d in days} == dict(want)

        # the alert with the user's own recent transactions, newest first, itself among them
        detail = c.get(f"/v1/alerts/{top['id']}").json()
        user = detail["alert"]["group"]
        recent = detail["recent_transactions"]
        assert recent and len(recent) <= RECENT and all(t["group"] == user for t in recent)
        mine = [e for e in events if str(e["user_id"]) == user]
        assert [t["id"] for t in recent] == [e["transaction_id"] for e in mine][::-1][:RECENT]

        # decisions: bad input, unknown alert, first decision, repeat, contradiction
        for bad in ({}, {"label": 2}, {"label": True}, {"label": 1, "note": 5}, [1]):
            assert c.post(f"/v1/alerts/{top['id']}/decision", json=bad).status_code == 422, bad
        assert c.post("/v1/alerts/nope/decision", json={"label": 1}).status_code == 404
        assert c.get("/v1/alerts/nope").status_code == 404
        for q_bad in ("status=maybe", "limit=0", "offset=x"):
            assert c.get(f"/v1/alerts?{q_bad}").status_code == 422, q_bad
        log = state / "events.jsonl"
        labels_before = _labels(log)
        made = c.post(f"/v1/alerts/{top['id']}/decision",
                      json={"label": 1, "note": "card used abroad", "reviewer": "ana"})  # fmt: skip
        assert made.status_code == 200, made.text
        made = made.json()
        assert made["verdict"] == "fraud" and made["at"] > 0 and not made["duplicate"]
        assert _labels(log) == labels_before + 1  # now a label
        again = c.post(f"/v1/alerts/{top['id']}/decision", json={"label": 1}).json()
        assert again["duplicate"] and again["at"] == made["at"]
        flip = c.post(f"/v1/alerts/{top['id']}/decision", json={"label": 0})
        assert flip.status_code == 409 and "final" in flip.text
        assert _labels(log) == labels_before + 1  # added once
        second = q["alerts"][1]["id"]
        assert c.post(f"/v1/alerts/{second}/decision", json={"label": 0}).status_code == 200

    # a new server on the same state: the decisions and the queue are all there
    with _server(trained["model"], state) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        decided = c.get("/v1/alerts", params={"status": "decided"}).json()
        assert decided["decided"] == 2 and decided["open"] == len(alerts) - 2
        got = {a["id"]: a["decision"] for a in decided["alerts"]}
        assert got[top["id"]]["verdict"] == "fraud" and got[top["id"]]["note"] == "card used abroad"
        assert got[second]["verdict"] == "not_fraud"
        days = c.get("/v1/alerts/per-day", params={"days": 366}).json()["days"]
        assert sum(d["verdicts"].get("fraud", 0) for d in days) == 1
