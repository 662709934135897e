"""A domain's own routes on core.serve: path and query parameters reach decode, NotFound is a
404, Conflict a 409 and RequestError a 422 (raised in decode or returned from the batch), route calls share the dynamic batch with each other, and overload and the
API key apply to them as to /predict."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx

from core.serve import (
    Conflict,
    NotFound,
    Ready,
    RequestError,
    Route,
    RouteCall,
    ServeConfig,
    create_app,
)
from core.serve.server import BackgroundServer, wait_until_ready

ROUTES = (
    Route("GET", "/v1/peek", "peek"),
    Route("POST", "/v1/things/{thing}/echo", "echo"),
    Route("GET", "/v1/things/{thing}", "get"),
)


class Things:
    name, version = "things", "1"

    def __init__(self, delay: float = 0.0) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def load(self) -> None: ...
    def warmup(self) -> None: ...

    def decode(self, body):
        assert isinstance(body, RouteCall)
        if body.route == "peek":
            return [Ready({"batches": len(self.batches)})]
        thing = body.params["thing"]
        if thing == "missing":
            raise NotFound([{"loc": ["path", "thing"], "msg": "no such thing"}])
        if thing == "taken":
            raise Conflict([{"loc": ["path", "thing"], "msg": "decided before"}])
        if body.route == "echo" and not isinstance(body.body, dict):
            raise RequestError([{"loc": ["body"], "msg": "send an object"}])
        return [(body.route, thing, body.body if body.route == "echo" else body.query)]

    def predict_batch(self, items):
        self.gate.wait(30)
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(len(items))
        return [
            NotFound([{"loc": ["path", "thing"], "msg": "gone meanwhile"}])
            if t == "gone"
            else {"route": r, "thing": t, "body": b}
            for r, t, b in items
        ]

    def encode(self, outputs):
        return outputs[0]


def _server(pred, **kw):
    cfg = ServeConfig(max_batch_size=16, max_queue_delay_ms=20, **kw)
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES))


def test_routes_dispatch_and_map_errors():
    pred = Things()
    with _server(pred) as srv:
        wait_until_ready(srv.url, timeout=30)
        r = httpx.post(f"{srv.url}/v1/things/abc/echo", json={"x": 1}, timeout=10)
        assert r.json() == {"route": "echo", "thing": "abc", "body": {"x": 1}}
        assert httpx.get(f"{srv.url}/v1/things/xyz", timeout=10).json()["body"] == {}
        query = httpx.get(f"{srv.url}/v1/things/xyz?limit=5&q=a%20b", timeout=10).json()
        assert query["body"] == {"limit": "5", "q": "a b"}  # the query reaches decode
        taken = httpx.get(f"{srv.url}/v1/things/taken", timeout=10)
        assert taken.status_code == 409 and taken.json()["detail"][0]["msg"] == "decided before"
        # an error the predictor finds in the batch (under its lock) is answered as such
        gone = httpx.get(f"{srv.url}/v1/things/gone", timeout=10)
        assert gone.status_code == 404 and gone.json()["detail"][0]["msg"] == "gone meanwhile"
        miss = httpx.get(f"{srv.url}/v1/things/missing", timeout=10)
        assert miss.status_code == 404 and miss.json()["detail"][0]["msg"] == "no such thing"
        assert httpx.post(f"{srv.url}/v1/things/a/echo", json=[1], timeout=10).status_code == 422
        bad = httpx.post(f"{srv.url}/v1/things/a/echo", content=b"{", timeout=10)
        assert bad.status_code == 422 and "invalid JSON" in bad.text
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        assert 'dv_requests_total{model="things",status="404"}' in metrics


def test_route_calls_are_batched_together():
    pred = Things(delay=0.05)
    with _server(pred) as srv:
        wait_until_ready(srv.url, timeout=30)

        def call(i):
            return httpx.post(f"{srv.url}/v1/things/t{i}/echo", json={"i": i}, timeout=30).json()

        with cf.ThreadPoolExecutor(16) as pool:
            out = list(pool.map(call, range(32)))
        assert [o["body"]["i"] for o in out] == list(range(32))
        assert max(pred.batches) > 1  # several conversations shared one forward


def test_overload_and_api_key_apply_to_routes(monkeypatch):
    pred = Things(delay=0.3)
    with _server(pred, max_queue=2) as srv:
        wait_until_ready(srv.url, timeout=30)

        def call(i):
            return httpx.post(f"{srv.url}/v1/things/t{i}/echo", json={}, timeout=30).status_code

        with cf.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(call, range(12)))
        assert 503 in codes and 200 in codes
        monkeypatch.setenv("DV_API_KEY", "k")
        assert httpx.get(f"{srv.url}/v1/things/a", timeout=10).status_code == 401
        ok = httpx.get(f"{srv.url}/v1/things/a", headers={"x-api-key": "k"}, timeout=10)
        assert ok.status_code == 200


def test_a_ready_answer_skips_the_queue_while_the_model_is_busy():
    pred = Things()
    with _server(pred) as srv:
        wait_until_ready(srv.url, timeout=30)
        pred.gate.clear()  # the model is stuck in a batch
        with cf.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(httpx.post, f"{srv.url}/v1/things/a/echo", json={}, timeout=30)
            time.sleep(0.2)
            peek = httpx.get(f"{srv.url}/v1/peek", timeout=5)  # answered while it waits
            assert peek.status_code == 200 and peek.json() == {"batches": 0}
            assert not stuck.done()
            pred.gate.set()
            assert stuck.result().status_code == 200
