"""The model server over real HTTP on loopback, serving a real digits model (ONNX Runtime)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import numpy as np
import pytest

from core.errors import ConfigError
from core.reference.digits import DigitsConfig, load_digits_splits, train_digits
from core.serve import ModelDirPredictor, ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from core.train import TrainerConfig


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two trained digits models (v1, v2) exported to ONNX directories."""
    from core.compress.workflow import export_model_dir

    root = tmp_path_factory.mktemp("serve")
    for v, seed in (("v1", 0), ("v2", 1)):
        cfg = DigitsConfig(
            out_dir=str(root / f"{v}-torch"),
            seed=seed,
            width=16,
            trainer=TrainerConfig(max_epochs=2, progress="off", optimizer={"lr": 3e-3}),
        )
        train_digits(cfg)
        export_model_dir(root / f"{v}-torch", root / v)
    return root


@pytest.fixture(scope="module")
def samples():
    x, _ = load_digits_splits(8, seed=0)["test"][:]
    return x.numpy()


class Slow(ModelDirPredictor):
    """The real predictor, made slow to exercise timeouts, queueing and readiness."""

    def __init__(self, *a, batch_s: float = 0.0, warm_s: float = 0.0, **kw) -> None:
        super().__init__(*a, **kw)
        self.batch_s, self.warm_s, self.batches = batch_s, warm_s, []

    def warmup(self) -> None:
        time.sleep(self.warm_s)
        super().warmup()

    def predict_batch(self, items):
        self.batches.append(len(items))
        time.sleep(self.batch_s)
        return super().predict_batch(items)


def post(url, name, body, **kw):
    return httpx.post(f"{url}/v1/models/{name}/predict", content=json.dumps(body), timeout=30, **kw)


def fill_queue(ex, srv, app, pred, body, queued):
    """One request running in ``pred`` and ``queued`` more waiting: the first is sent alone
    and seen running before the rest, so none of them can be shed on the way in."""
    started = len(pred.batches)
    futures = [ex.submit(post, srv.url, "digits", body)]
    deadline = time.monotonic() + 10
    while len(pred.batches) == started:  # the first is off the queue, running
        assert time.monotonic() < deadline
        time.sleep(0.02)
    futures += [ex.submit(post, srv.url, "digits", body) for _ in range(queued)]
    while app.state.batcher.depth < queued:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return futures


def wait_ready(url, timeout=30):
    wait_until_ready(url, timeout=timeout, interval=0.02)


def test_batched_answers_equal_unbatched_ones(model_dirs, samples):
    pred = Slow(model_dirs / "v1", name="digits", batch_s=0.02)
    app = create_app(pred, ServeConfig(max_batch_size=8, max_queue_delay_ms=20))
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        with cf.ThreadPoolExecutor(16) as ex:
            futs = [
                ex.submit(post, srv.url, "digits", {"inputs": [samples[i].tolist()]})
                for i in range(32)
            ]
            batched = [f.result().json()["predictions"][0] for f in futs]
        single = ModelDirPredictor(model_dirs / "v1")
        single.load()
        for i, got in enumerate(batched):
            ref = single.encode(single.predict_batch([samples[i]]))["predictions"][0]
            assert got["label"] == ref["label"]
            np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-5)
        assert max(pred.batches) > 1  # requests really were batched together
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'dv_requests_total{model="digits",status="200"} 32.0' in metrics
        assert (
            "dv_batch_size_bucket" in metrics
            and 'dv_model_version_info{model="digits",version="1"} 1.0' in metrics
        )


def test_error_codes_over_http(model_dirs, samples, monkeypatch):
    app = create_app(
        ModelDirPredictor(model_dirs / "v1", name="digits"), ServeConfig(max_body_bytes=20_000)
    )
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        ok = {"inputs": [samples[0].tolist()]}
        assert post(srv.url, "digits", ok).status_code == 200
        r = post(srv.url, "digits", {"inputs": [samples[0].tolist()] * 200})
        assert r.status_code == 413 and "20000-byte limit" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/models/digits/predict", content=b"{not json")
        assert r.status_code == 422 and "invalid JSON" in r.json()["detail"][0]["msg"]
        r = post(
            srv.url,
            "digits",
            {"inputs": [np.zeros((3, 3)).tolist(), samples[1].tolist(), [[float("nan")] * 8] * 8]},
        )
        detail = r.json()["detail"]
        assert r.status_code == 422 and [d["loc"] for d in detail] == [
            ["body", "inputs", 0],
            ["body", "inputs", 2],
        ]
        assert "does not match the model's [1, 8, 8]" in detail[0]["msg"]
        r = httpx.post(f"{srv.url}/v1/models/digits/predict", content=b'{"x": 1}')
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs"]
        assert post(srv.url, "other", ok).status_code == 404
        monkeypatch.setenv("DV_API_KEY", "s3cret")
        assert post(srv.url, "digits", ok).status_code == 401
        assert post(srv.url, "digits", ok, headers={"x-api-key": "wrong"}).status_code == 401
        assert (
            post(srv.url, "digits", ok, headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert httpx.get(f"{srv.url}/v1/health/live").status_code == 200  # health needs no key


def test_timeout_answers_504(model_dirs, samples):
    app = create_app(
        Slow(model_dirs / "v1", name="digits", batch_s=1.0), ServeConfig(request_timeout_s=0.2)
    )
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        r = post(srv.url, "digits", {"inputs": [samples[0].tolist()]})
        assert r.status_code == 504 and "longer than 0.2 s" in r.json()["detail"]


def test_full_queue_answers_503_with_retry_after(model_dirs, samples):
    pred = Slow(model_dirs / "v1", name="digits", batch_s=0.5)
    app = create_app(pred, ServeConfig(max_batch_size=1, max_queue=2, max_queue_delay_ms=0))
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        with cf.ThreadPoolExecutor(8) as ex:
            rs = list(
                ex.map(
                    lambda i: post(srv.url, "digits", {"inputs": [samples[i].tolist()]}), range(8)
                )
            )
        codes = sorted(r.status_code for r in rs)
        assert codes.count(503) >= 3 and codes.count(200) >= 2
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "server busy" in busy.json()["detail"]


def test_ready_only_after_warmup(model_dirs, samples):
    app = create_app(Slow(model_dirs / "v1", name="digits", warm_s=1.0))
    with BackgroundServer(app) as srv:
        assert httpx.get(f"{srv.url}/v1/health/live").status_code == 200
        r = httpx.get(f"{srv.url}/v1/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert post(srv.url, "digits", {"inputs": [samples[0].tolist()]}).status_code == 503
        wait_ready(srv.url)
        assert httpx.get(f"{srv.url}/v1/models").json() == [
            {"name": "digits", "version": "1", "alias": None, "last_load_error": None}
        ]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_model_never_becomes_ready(model_dirs, tmp_path, damage, caplog):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dirs / "v1", d)
    if damage == "missing":
        (d / "config.json").unlink()
    else:
        (d / "model.onnx").write_bytes(b"\x08\x01garbage")
    with (
        caplog.at_level("ERROR"),
        BackgroundServer(create_app(ModelDirPredictor(d, name="digits"))) as srv,
    ):
        time.sleep(0.5)
        r = httpx.get(f"{srv.url}/v1/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert (
            "lacks config.json" if damage == "missing" else "model.onnx is corrupt"
        ) in r.json()["reason"]
    assert "model failed to load" in caplog.text


class _Watcher:
    """A registry stand-in for this test: the alias points at v1, then moves to v2."""

    def __init__(self, model_dirs) -> None:
        self.model_dirs, self.version, self.served = model_dirs, "1", "1"

    def check(self):
        if self.version == self.served:
            return None
        self.served = v = self.version
        return lambda: ModelDirPredictor(self.model_dirs / f"v{v}", name="digits", version=v)


def test_hot_reload_under_concurrent_requests_drops_nothing(model_dirs, samples):
    watcher = _Watcher(model_dirs)
    app = create_app(
        lambda: ModelDirPredictor(model_dirs / "v1", name="digits", version="1"),
        ServeConfig(max_queue_delay_ms=2),
        watcher=watcher,
    )
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(
                    f"{srv.url}/v1/models/digits/predict",
                    content=json.dumps({"inputs": [samples[0].tolist()]}),
                )
                results.append((r.status_code, r.json().get("version", "")))

    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        watcher.version = "2"
        r = httpx.post(f"{srv.url}/v1/admin/reload", timeout=30)
        assert r.json() == {"reloaded": True, "version": "2"}
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
    codes = {c for c, _ in results}
    versions = [v for _, v in results]
    assert codes == {200} and len(results) > 20
    assert versions[0] == "1" and versions[-1] == "2"


def test_graceful_shutdown_finishes_in_flight_requests(model_dirs, samples):
    app = create_app(Slow(model_dirs / "v1", name="digits", batch_s=0.8))
    srv = BackgroundServer(app).__enter__()
    wait_ready(srv.url)
    with cf.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(post, srv.url, "digits", {"inputs": [samples[0].tolist()]})
        time.sleep(0.2)
        srv.stop()  # like SIGTERM: stop accepting, drain, exit
        assert fut.result().status_code == 200


def test_dv_serve_command_serves_a_model_directory(model_dirs, samples):
    import signal
    import subprocess
    import sys

    from core.train.distributed import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core.cli",
            "serve",
            str(model_dirs / "v1"),
            "--name",
            "digits",
            "--port",
            str(port),
            "--no-batching",
            "--max-body-bytes",
            "3000",
            "--request-timeout",
            "5",
            "--max-queue",
            "64",
            "--quiet-gap-ms",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, timeout=60, proc=proc)
        r = post(url, "digits", {"inputs": [samples[0].tolist(), samples[1].tolist()]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        r = post(url, "digits", {"inputs": [s.tolist() for s in samples[:12]]})
        assert r.status_code == 413 and "3000-byte limit" in r.json()["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
    assert code in (0, -signal.SIGTERM)
    assert "Finished server process" in proc.stderr.read().decode()


def test_hostile_json_bodies_are_422_naming_the_problem_never_500(model_dirs, samples):
    app = create_app(ModelDirPredictor(model_dirs / "v1", name="digits"), ServeConfig())
    good = samples[0].tolist()

    def with_value(v: str) -> bytes:  # sample 0 with its first pixel replaced by raw JSON text
        row = json.dumps(good[0][0][1:])[1:]
        rest = json.dumps(good[0][1:])[1:-1]
        return f'{{"inputs": [[[[{v}, {row}, {rest}]]]}}'.encode()

    cases = [
        (b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
        (b'{"inputs": [[[[' + b"9" * 5000 + b"]]]]}", "invalid JSON"),  # beyond the digit limit
        (with_value("1e39"), "beyond float32's range"),
        (with_value('"0.5"'), "a string '0.5' where a number belongs"),
        (with_value("true"), "true/false where a number belongs"),
        (with_value("null"), "null where a number belongs"),
        (with_value("1" + "0" * 400), "numbers out of range"),
    ]
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        r = httpx.post(f"{srv.url}/v1/models/digits/predict", content=with_value("0.25"))
        assert r.status_code == 200  # the template itself is a valid request
        for body, message in cases:
            r = httpx.post(f"{srv.url}/v1/models/digits/predict", content=body, timeout=30)
            assert r.status_code == 422, (message, r.status_code, r.text[:300])
            assert message in json.dumps(r.json()), (message, r.text[:300])
        ok = httpx.post(f"{srv.url}/v1/models/digits/predict", content=with_value("0.25"))
        assert ok.status_code == 200  # and the server is still fine


def test_dv_serve_refuses_a_bad_limit_in_one_line(model_dirs):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "serve", str(model_dirs / "v1"), "--max-queue", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().endswith("use a positive limit")
    assert "max_queue must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


class Failing(ModelDirPredictor):
    """The real predictor, whose batch fails when a sample's first pixel is 7."""

    def predict_batch(self, items):
        if any(float(x.flat[0]) == 7.0 for x in items):
            raise RuntimeError("batch failed")
        return super().predict_batch(items)


class Gated(ModelDirPredictor):
    """The real predictor, whose warm-up waits until the test opens the gate."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()

    def warmup(self) -> None:
        assert self.gate.wait(60)
        super().warmup()


def test_failures_are_counted_and_metric_labels_stay_bounded(model_dirs, samples):
    pred = Gated(model_dirs / "v1", name="digits")
    with BackgroundServer(create_app(pred, ServeConfig())) as srv:
        for i in range(40):  # while not ready, to names nobody serves
            assert post(srv.url, f"name-{i}", {"inputs": [samples[0].tolist()]}).status_code == 503
        pred.gate.set()
        wait_ready(srv.url)
        for i in range(10):
            assert post(srv.url, f"other-{i}", {"inputs": [samples[0].tolist()]}).status_code == 404
        text = httpx.get(f"{srv.url}/metrics").text
    series = [ln for ln in text.splitlines() if ln.startswith("dv_requests_total{")]
    assert sorted(series) == [
        'dv_requests_total{model="unknown",status="404"} 10.0',
        'dv_requests_total{model="unknown",status="503"} 40.0',
    ]
    bad = samples[0].copy()
    bad.flat[0] = 7.0
    with BackgroundServer(
        create_app(Failing(model_dirs / "v1", name="digits"), ServeConfig())
    ) as srv:
        wait_ready(srv.url)
        assert post(srv.url, "digits", {"inputs": [samples[0].tolist()]}).status_code == 200
        r = post(srv.url, "digits", {"inputs": [bad.tolist()]})
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        text = httpx.get(f"{srv.url}/metrics").text
    assert 'dv_requests_total{model="digits",status="500"} 1.0' in text
    assert 'dv_request_latency_seconds_count{model="digits"} 2.0' in text


class OneVersionWatcher:
    """A registry watcher offering version 2 (from ``path``) until the server confirms it."""

    def __init__(self, path) -> None:
        self.path, self.served, self.offers = path, "1", 0

    def check(self):
        if self.served == "2":
            return None
        self.offers += 1
        return lambda: ModelDirPredictor(self.path, name="digits", version="2")

    def confirm(self) -> None:
        self.served = "2"


def test_a_failed_hot_reload_says_why_and_is_retried_once_fixed(model_dirs, samples, tmp_path):
    import shutil

    v2 = tmp_path / "v2"
    shutil.copytree(model_dirs / "v2", v2)
    good = (v2 / "model.onnx").read_bytes()
    (v2 / "model.onnx").write_bytes(good[:100])  # the new version's file is corrupt
    watcher = OneVersionWatcher(v2)
    app = create_app(ModelDirPredictor(model_dirs / "v1", name="digits"), ServeConfig(), watcher)
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        r = httpx.post(f"{srv.url}/v1/admin/reload", timeout=30)
        assert r.status_code == 500 and r.json()["reloaded"] is False
        assert r.json()["version"] == "1" and "model.onnx is corrupt" in r.json()["error"]
        assert str(tmp_path) not in r.text  # no absolute paths in responses
        row = httpx.get(f"{srv.url}/v1/models").json()[0]
        assert row["version"] == "1" and "model.onnx is corrupt" in row["last_load_error"]
        assert post(srv.url, "digits", {"inputs": [samples[0].tolist()]}).status_code == 200
        (v2 / "model.onnx").write_bytes(good)  # the file is restored
        r = httpx.post(f"{srv.url}/v1/admin/reload", timeout=30)
        assert r.status_code == 200 and r.json() == {"reloaded": True, "version": "2"}
        assert httpx.get(f"{srv.url}/v1/models").json()[0]["last_load_error"] is None
        assert httpx.post(f"{srv.url}/v1/admin/reload").json()["reloaded"] is False  # served
    assert watcher.offers == 2


def test_a_model_that_failed_to_load_says_so_instead_of_retry_after(model_dirs, samples, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dirs / "v1", d)
    (d / "model.onnx").write_bytes(b"\x08\x01garbage")
    with BackgroundServer(create_app(ModelDirPredictor(d, name="digits"))) as srv:
        deadline = time.monotonic() + 20
        while httpx.get(f"{srv.url}/v1/health/ready").json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = post(srv.url, "digits", {"inputs": [samples[0].tolist()]})
        assert r.status_code == 503 and "Retry-After" not in r.headers
        assert r.json()["detail"].startswith("model failed to load: ModelLoadError: model.onnx")
        reason = httpx.get(f"{srv.url}/v1/health/ready").json()["reason"]
        assert "model.onnx is corrupt" in reason and str(tmp_path) not in reason


def test_with_an_api_key_only_liveness_is_open(model_dirs, monkeypatch):
    monkeypatch.setenv("DV_API_KEY", "s3cret")
    app = create_app(ModelDirPredictor(model_dirs / "v1", name="digits"), ServeConfig())
    with BackgroundServer(app) as srv:
        assert httpx.get(f"{srv.url}/v1/health/live").status_code == 200
        key = {"x-api-key": "s3cret"}
        deadline = time.monotonic() + 30
        while httpx.get(f"{srv.url}/v1/health/ready", headers=key).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for path in ("/docs", "/openapi.json", "/v1/health/ready", "/metrics", "/v1/models"):
            assert httpx.get(f"{srv.url}{path}").status_code == 401, path
            assert httpx.get(f"{srv.url}{path}", headers=key).status_code == 200, path


def test_a_body_that_never_arrives_is_a_408_and_connections_are_capped(model_dirs, samples):
    import socket

    cfg = ServeConfig(body_timeout_s=1.0, max_connections=4)
    app = create_app(ModelDirPredictor(model_dirs / "v1", name="digits"), cfg)
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                b'{"inputs": '  # then nothing more: the declared body never arrives
            )
            t0 = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):  # the server closes the connection after its answer
                reply += chunk
            reply = reply.decode()
            waited = time.monotonic() - t0
        assert reply.startswith("HTTP/1.1 408") and "not received within 1 s" in reply
        assert waited < 8
        # four idle connections hold the cap: the next request is turned away, not queued
        idle = [socket.create_connection((srv.host, srv.port), timeout=10) for _ in range(4)]
        try:
            time.sleep(0.3)
            r = post(srv.url, "digits", {"inputs": [samples[0].tolist()]})
            assert r.status_code == 503
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 10
        while post(srv.url, "digits", {"inputs": [samples[0].tolist()]}).status_code != 200:
            assert time.monotonic() < deadline  # capacity comes back when they leave
            time.sleep(0.2)


def _start_dv_serve(model_dir, *extra):
    """``dv serve`` in a subprocess on a free port, once ready: ``(proc, port)``; its output
    goes to a file (a pipe nobody reads would fill with access-log lines and block it)."""
    import subprocess
    import sys
    import tempfile

    from core.train.distributed import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "core.cli", "serve", str(model_dir), "--name", "digits"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), *extra],
        stdout=tempfile.TemporaryFile(),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    wait_until_ready(f"http://127.0.0.1:{port}", timeout=90, proc=proc)
    return proc, port


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_under_16_keep_alive_clients_leaves_no_request_unanswered(model_dirs, samples):
    """Each client keeps one connection and sends request after request. SIGTERM arrives
    mid-stream: every request written to a connection gets a full response, the responses
    during the drain say ``Connection: close``, and connections that were idle when the
    signal came are still answered: readiness with 503, a prediction with 200."""
    import http.client
    import signal

    proc, port = _start_dv_serve(model_dirs / "v1", "--drain-seconds", "5")
    body = json.dumps({"inputs": [samples[0].tolist()]})
    sent_after_term = threading.Event()
    stats = {"ok": 0, "closed": 0, "lost": [], "after_close": []}
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        while True:
            try:
                conn.request("POST", "/v1/models/digits/predict", body)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:  # sent, never answered
                with lock:
                    stats["lost"].append(f"client {k}: {type(exc).__name__}: {exc}")
                return
            with lock:
                stats["ok"] += resp.status == 200 and b"predictions" in data
            if (resp.getheader("connection") or "").lower() == "close":
                with lock:
                    stats["closed"] += 1
                sent_after_term.set()
                break
        conn.close()

    # two more connections, opened before the signal and idle when it comes (the ones
    # uvicorn's own shutdown closed at once): one asks for readiness, one for a prediction
    idle = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(2)]
    for c in idle:
        c.connect()

    def late_requests() -> None:
        sent_after_term.wait(30)
        idle[0].request("GET", "/v1/health/ready")
        r = idle[0].getresponse()
        ready = [r.status, json.loads(r.read())["status"], r.getheader("connection")]
        idle[1].request("POST", "/v1/models/digits/predict", body)
        r = idle[1].getresponse()
        with lock:
            stats["after_close"] = [*ready, r.status, r.getheader("connection")]
        r.read()

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        threads.append(threading.Thread(target=late_requests))
        for t in threads:
            t.start()
        time.sleep(1.5)
        assert stats["ok"] > 16  # the clients really were busy when the signal came
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stats["lost"] == []
    assert stats["closed"] == 16  # every client was told to leave, none was cut off
    assert stats["after_close"] == [503, "draining", "close", 200, "close"]
    assert code in (0, -signal.SIGTERM)


def test_headers_must_arrive_within_the_header_timeout(model_dirs, samples):
    """A client that connects and sends nothing, and one that trickles its headers, are both
    cut off after ``header_timeout_s`` (trickling does not extend it); a kept-alive connection
    is on the clock again from its next request's first byte."""
    import socket

    cfg = ServeConfig(header_timeout_s=1.0)
    app = create_app(ModelDirPredictor(model_dirs / "v1", name="digits"), cfg)

    def read_all(s: socket.socket) -> bytes:
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply

    def read_one(s: socket.socket) -> bytes:  # one response on a kept-alive connection
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
        head, _, body = reply.partition(b"\r\n\r\n")
        size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < size:
            body += s.recv(4096)
        return head

    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        t0 = time.monotonic()
        with socket.create_connection((srv.host, srv.port), timeout=10) as silent:
            assert read_all(silent).startswith(b"HTTP/1.1 408")
        assert 0.8 < time.monotonic() - t0 < 5
        with socket.create_connection((srv.host, srv.port), timeout=10) as trickle:
            t0 = time.monotonic()
            closed = False
            for ch in b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890":
                try:
                    trickle.sendall(bytes([ch]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.05)
                if time.monotonic() - t0 > 4:
                    break
            reply = b"" if closed else read_all(trickle)
            assert closed or reply.startswith(b"HTTP/1.1 408")
            assert b"headers not received within 1 s" in reply or closed
            assert time.monotonic() - t0 < 4
        # keep-alive: a complete request, an idle pause below the keep-alive timeout, then a
        # second complete request on the same connection is answered normally
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            req = b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            s.sendall(req)
            assert read_one(s).startswith(b"HTTP/1.1 200")
            time.sleep(0.6)
            s.sendall(req)
            assert read_one(s).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /v1/health/live HTTP/1.1\r\n")  # then stalls
            assert read_all(s).startswith(b"HTTP/1.1 408")


def test_overload_is_shed_at_admission_before_the_body_is_read(model_dirs, samples):
    """With the queue full, a request whose body never arrives is answered 503 at once (before
    its body is read), not 408 after the body timeout."""
    import socket

    pred = Slow(model_dirs / "v1", name="digits", batch_s=1.5)
    cfg = ServeConfig(max_batch_size=1, max_queue=2, body_timeout_s=8.0)
    app = create_app(pred, cfg)
    ok = {"inputs": [samples[0].tolist()]}
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        with cf.ThreadPoolExecutor(3) as ex:
            busy = fill_queue(ex, srv, app, pred, ok, queued=2)
            with socket.create_connection((srv.host, srv.port), timeout=10) as s:
                t0 = time.monotonic()
                s.sendall(
                    b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                )
                reply = ""
                while "\r\n\r\n" not in reply or not reply.endswith("}"):
                    reply += s.recv(4096).decode()
                waited = time.monotonic() - t0
            assert reply.startswith("HTTP/1.1 503") and "retry-after: 1" in reply.lower()
            assert "server busy" in reply and waited < 1.0
            # answered before routing, and still counted under the served model's name
            metrics = httpx.get(f"{srv.url}/metrics").text
            assert 'dv_requests_total{model="digits",status="503"} 1.0' in metrics
            assert [f.result().status_code for f in busy] == [200, 200, 200]


def test_shed_503_is_held_for_shed_delay_without_blocking_the_server(model_dirs, samples):
    """A request shed while the queue is full gets its 503 only after ``shed_delay_ms`` (so a
    client that retries at once cannot flood the cores), while the server keeps answering
    others meanwhile; with 0 the 503 comes at once."""
    pred = Slow(model_dirs / "v1", name="digits", batch_s=2.5)
    ok = {"inputs": [samples[0].tolist()]}
    for delay_ms in (1500.0, 0.0):
        cfg = ServeConfig(max_batch_size=1, max_queue=1, shed_delay_ms=delay_ms)
        app = create_app(pred, cfg)
        with BackgroundServer(app) as srv, cf.ThreadPoolExecutor(4) as ex:
            wait_ready(srv.url)
            running = fill_queue(ex, srv, app, pred, ok, queued=1)
            t0 = time.monotonic()
            shed = ex.submit(post, srv.url, "digits", ok)
            time.sleep(0.1)
            live = httpx.get(f"{srv.url}/v1/health/live", timeout=5)
            live_s = time.monotonic() - t0
            r = shed.result()
            waited = time.monotonic() - t0
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "server busy" in r.json()["detail"]
            if delay_ms:
                assert live.status_code == 200 and live_s < 1.0  # not blocked by the held 503
                assert waited >= 1.5
            else:
                assert waited < 1.0
            assert [f.result().status_code for f in running] == [200, 200]
    with pytest.raises(ConfigError, match="shed_delay_ms"):
        ServeConfig(shed_delay_ms=-1)


def test_model_and_decoding_run_on_their_own_threads(model_dirs, samples):
    """Batches run on the batcher's model thread and bodies are decoded on the decode pool,
    not in asyncio's shared default pool (where each would wait behind the other)."""
    seen: dict[str, set[str]] = {"decode": set(), "batch": set()}

    class Where(ModelDirPredictor):
        def decode(self, body):
            seen["decode"].add(threading.current_thread().name)
            return super().decode(body)

        def predict_batch(self, items):
            seen["batch"].add(threading.current_thread().name)
            return super().predict_batch(items)

    app = create_app(Where(model_dirs / "v1", name="digits"), ServeConfig(decode_workers=2))
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        with cf.ThreadPoolExecutor(8) as ex:
            futs = [
                ex.submit(post, srv.url, "digits", {"inputs": [samples[i].tolist()]})
                for i in range(24)
            ]
            assert {f.result().status_code for f in futs} == {200}
    assert seen["batch"] and all(n.startswith("dv-model") for n in seen["batch"])
    assert len(seen["batch"]) == 1  # one model thread: batches never run concurrently
    assert seen["decode"] and all(n.startswith("dv-decode") for n in seen["decode"])


@pytest.mark.parametrize(
    "lengths", [[7, 30, 8, 29, 10, 12, 30, 7], [5], [16] * 9, list(range(1, 65))]
)
def test_length_groups_bound_the_padding_and_keep_every_item_once(lengths):
    from core.serve import length_groups

    groups = length_groups(lengths, max_waste=1.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= 1.25 * real
    if lengths == [16] * 9:
        assert len(groups) == 1  # equal lengths: one forward, no split
