"""The online scorer behind core.serve over real HTTP: events, batches, labels, malformed and
oversized requests, and state that survives a server restart."""

from __future__ import annotations

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.finance_risk.serve import RiskPredictor

pytestmark = pytest.mark.xdist_group("finance_risk_model")


def ev(i: int, user: str = "u1", amount: float = 20.0, **kw) -> dict:
    return {
        "transaction_id": f"t{i}",
        "user_id": user,
        "timestamp": f"2024-03-01T10:{i:02d}:00Z",
        "amount": amount,
        "merchant_id": "m1",
        "channel": "pos",
        **kw,
    }


def _server(model, state, max_body=64_000):
    pred = RiskPredictor(model, "fr", state_dir=state, max_events=50)
    return BackgroundServer(
        create_app(pred, ServeConfig(max_body_bytes=max_body, max_batch_size=16))
    )


def test_events_labels_and_bad_requests_over_http(trained, tmp_path):
    state = tmp_path / "state"
    with _server(trained["model"], state) as srv:
        wait_until_ready(srv.url, timeout=120)
        url = f"{srv.url}/v1/models/fr/predict"
        one = httpx.post(url, json=ev(0), timeout=30)
        assert one.status_code == 200, one.text
        d = one.json()["decisions"][0]
        assert d["transaction_id"] == "t0" and 0 <= d["score"] <= 1 and not d["duplicate"]
        many = httpx.post(url, json={"events": [ev(i) for i in range(1, 6)]}, timeout=30).json()
        assert [x["transaction_id"] for x in many["decisions"]] == [f"t{i}" for i in range(1, 6)]
        again = httpx.post(url, json=ev(3), timeout=30).json()["decisions"][0]
        assert again["duplicate"] and again["score"] == many["decisions"][2]["score"]
        lab = httpx.post(
            url, json={"type": "label", "transaction_id": "t1", "label": 1}, timeout=30
        )
        assert lab.status_code == 200 and lab.json()["label"] == "recorded"
        # a malformed event in a batch: 422 naming position and field; nothing applied
        bad = httpx.post(url, json={"events": [ev(6), ev(7, amount=-1)]}, timeout=30)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "events", 1, "amount"]
        assert httpx.post(url, json=ev(6), timeout=30).json()["decisions"][0]["duplicate"] is False
        assert httpx.post(url, json=[1, 2], timeout=30).status_code == 422
        assert (
            httpx.post(url, json={"events": [ev(i) for i in range(51)]}, timeout=30).status_code
            == 422
        )
        big = httpx.post(
            url, json={"events": [ev(i, note="x" * 2000) for i in range(40)]}, timeout=30
        )
        assert big.status_code == 413
        seq_before = httpx.post(url, json=ev(8), timeout=30).json()["decisions"][0]
    # a new server on the same state: the user's history and the ids are still there
    with _server(trained["model"], state) as srv:
        wait_until_ready(srv.url, timeout=120)
        url = f"{srv.url}/v1/models/fr/predict"
        dup = httpx.post(url, json=ev(8), timeout=30).json()["decisions"][0]
        assert dup["duplicate"] and dup["score"] == seq_before["score"]
        nxt = httpx.post(url, json=ev(9), timeout=30).json()["decisions"][0]
        assert not nxt["duplicate"]
    fresh = RiskPredictor(trained["model"], state_dir=state)
    fresh.load()
    assert fresh.scorer.features.users["u1"].times  # eight transactions of u1 kept
    assert len(fresh.scorer.features.users["u1"].times) == 9
