"""The conversation endpoints over real HTTP on loopback: create, message, read back; ids
that are malformed or unknown; oversized and malformed bodies; concurrent conversations
batched together without mixing their states; and a restart that keeps them."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.nlp_service.serve import ROUTES, DialoguePredictor

pytestmark = pytest.mark.xdist_group("nlp_model")


def _server(model, store, max_body=64_000):
    pred = DialoguePredictor(model, "nlp", store=store)
    cfg = ServeConfig(max_body_bytes=max_body, max_batch_size=16, max_queue_delay_ms=10)
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES))


def test_conversations_over_http(trained, tmp_path):
    store = tmp_path / "conv.sqlite"
    with _server(trained["model"], store) as srv:
        wait_until_ready(srv.url, timeout=120)
        c = httpx.Client(base_url=srv.url, timeout=30)
        made = c.post("/v1/conversations", json={})
        assert made.status_code == 200, made.text
        cid = made.json()["conversation_id"]
        r = c.post(f"/v1/conversations/{cid}/messages", json={"text": "where is my order 4821339"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert {"intent", "confidence", "slots", "state", "reply", "escalate"} <= set(body)
        first = c.post("/v1/conversations", json={"text": "hi"}).json()
        assert first["conversation_id"] != cid and "intent" in first
        got = c.get(f"/v1/conversations/{cid}").json()
        assert got["id"] == cid and len(got["turns"]) == 2
        # the transcript list: most recently active first, with paging that is checked
        listed = c.get("/v1/conversations").json()["conversations"]
        assert [x["id"] for x in listed] == [first["conversation_id"], cid]
        assert listed[1]["user_turns"] == 1 and listed[1]["last_message"].endswith("4821339")
        assert [
            x["id"] for x in c.get("/v1/conversations?limit=1&offset=1").json()["conversations"]
        ] == [cid]
        for q in ("limit=0", "limit=x", "offset=-1", "limit=100000"):
            assert c.get(f"/v1/conversations?{q}").status_code == 422, q
        # ids: malformed -> 422, unknown -> 404, and nothing is created by either
        assert c.get("/v1/conversations/123").status_code == 422
        assert c.get(f"/v1/conversations/{'a' * 32}").status_code == 404
        assert (
            c.post(f"/v1/conversations/{'b' * 32}/messages", json={"text": "hi"}).status_code == 404
        )
        assert c.post("/v1/conversations/%2e%2e/messages", json={"text": "hi"}).status_code in (
            404,
            422,
        )
        # bodies
        for bad in ({"text": ""}, {"text": 5}, {"message": "hi"}, [1]):
            assert c.post(f"/v1/conversations/{cid}/messages", json=bad).status_code == 422, bad
        big = c.post(f"/v1/conversations/{cid}/messages", json={"text": "x" * 100_000})
        assert big.status_code == 413
        raw = c.post(
            f"/v1/conversations/{cid}/messages",
            content=b'{"text": "\xff\xfe"}',
            headers={"content-type": "application/json"},
        )
        assert raw.status_code == 422 and "invalid JSON" in raw.text
        assert len(c.get(f"/v1/conversations/{cid}").json()["turns"]) == 2  # nothing written
        # stateless reading
        p = c.post("/v1/models/nlp/predict", json={"text": "my card was stolen"})
        assert p.status_code == 200 and "intent" in p.json()


def test_concurrent_conversations_keep_their_own_state(trained, tmp_path):
    with _server(trained["model"], tmp_path / "c.sqlite") as srv:
        wait_until_ready(srv.url, timeout=120)
        c = httpx.Client(base_url=srv.url, timeout=60)
        ids = [c.post("/v1/conversations", json={}).json()["conversation_id"] for _ in range(12)]

        def talk(i: int) -> str:
            with httpx.Client(base_url=srv.url, timeout=60) as cl:
                r = cl.post(
                    f"/v1/conversations/{ids[i]}/messages",
                    json={"text": f"my email is user{i}@example.com"},
                )
                assert r.status_code == 200, r.text
                return ids[i]

        with cf.ThreadPoolExecutor(12) as pool:
            list(pool.map(talk, range(12)))
        for i, cid in enumerate(ids):
            turns = c.get(f"/v1/conversations/{cid}").json()["turns"]
            assert [t["text"] for t in turns if t["role"] == "user"] == [
                f"my email is user{i}@example.com"
            ]
        metrics = c.get("/metrics").text
        assert "dv_batch_size" in metrics or "dv_requests_total" in metrics
    # restart on the same store: every conversation is still there
    with _server(trained["model"], tmp_path / "c.sqlite") as srv:
        wait_until_ready(srv.url, timeout=120)
        assert httpx.get(f"{srv.url}/v1/conversations/{ids[3]}", timeout=30).json()["id"] == ids[3]
