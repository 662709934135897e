"""The HTTP model server: a FastAPI app factory around one predictor, with dynamic batching.

Endpoints::

    POST /v1/models/{name}/predict   JSON body -> the predictor's response
    GET  /v1/models                  [{name, version, alias}]
    GET  /v1/health/live             200 while the process runs
    GET  /v1/health/ready            200 once the model is loaded and warmed up, else 503
    GET  /metrics                    Prometheus text
    POST /v1/admin/reload            check the registry now (hot reload), when one is attached
    (a domain's own routes)          e.g. POST /v1/conversations/{id}/messages (``Route``)
    GET  /ui/                        the domain's review page, when one is given (``core.serve.ui``)

Limits and errors: body over ``max_body_bytes`` -> 413; invalid JSON or fields -> 422 with
field-level ``detail``; queue full -> 503 + ``Retry-After``; over ``request_timeout_s`` -> 504;
API key (when ``$DV_API_KEY`` or the configured variable is set) missing or wrong -> 401;
unknown model -> 404; not ready -> 503. A missing or corrupt model at start-up is logged and
the server never reports ready. Hot reload loads the new predictor beside the old one and
swaps it in between batches, so no request fails.

Overload is shed at admission: when the queued items plus the requests already admitted
(reading, parsing, decoding) reach ``max_queue``, a request is answered 503 before its body
is read, and sent after ``shed_delay_ms`` (250 ms: clients that retry at once without
honouring ``Retry-After`` then cost the cores a few hundred 503s a second, not thousands, and
the model keeps its CPU). Parsing and decoding run on their own small thread pool and the
model on its own single thread (the batcher's), so neither waits behind the other in
asyncio's shared pool.

Draining (``app.state.begin_drain()``, called by ``core.serve.server`` on SIGTERM): readiness
answers 503 and every response carries ``Connection: close``; the batcher finishes what is
queued when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import public_text
from core.serve.batcher import DynamicBatcher, QueueFull
from core.serve.metrics import ServeMetrics
from core.serve.predictor import (
    Binary,
    Conflict,
    MultipartBody,
    NotFound,
    Predictor,
    Ready,
    RequestError,
    Route,
    RouteCall,
    Upload,
)
from core.serve.ui import cookie_key, login_redirect, mount_ui, open_without_key

log = logging.getLogger("core.serve")


@dataclass
class ServeConfig:
    """Server limits and batching."""

    max_batch_size: int = 16  # items per forward
    # how long the first item of a batch waits for company. It should cover the time one wave
    # of requests takes to arrive: on 2 shared cores, 32 clients' next requests arrive over
    # 10-20 ms, and 5 ms cut them into small batches (benchmarks/serve.py runs 15 ms)
    max_queue_delay_ms: float = 5.0
    # >0: a batch also goes as soon as no item has arrived for this long, so a window sized for
    # bursts costs a lone client only the gap (0: always wait the whole window)
    quiet_gap_ms: float = 0.0
    max_queue: int = 256  # queued items before requests get 503
    # a shed request's 503 is sent after this long (an asyncio sleep: no CPU, body unread), so
    # clients that retry at once, ignoring Retry-After, cannot turn the cores into a 503
    # factory that starves the model (benchmarks/serve.py overload; 0: answer at once)
    shed_delay_ms: float = 250.0
    max_body_bytes: int = 1 << 20  # request body limit (413 above)
    request_timeout_s: float = 10.0  # per request (504 above)
    body_timeout_s: float = 10.0  # the whole body must arrive within this (408 above)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (408, closed)
    max_connections: int = 1024  # concurrent connections and requests; more get 503
    drain_s: float = 5.0  # on SIGTERM: readiness 503 + Connection: close this long at most
    decode_workers: int = 2  # threads parsing and decoding request bodies
    api_key_env: str = "DV_API_KEY"  # when this variable is set, requests need its value
    alias: str | None = None  # registry alias served, reported by /v1/models
    watch_interval_s: float = 0.0  # >0: poll the registry for a moved alias this often

    def __post_init__(self) -> None:
        from core.errors import ConfigError
        from core.typedconfig import check_types

        check_types(self)
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "decode_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", fix="use a positive limit")
        for name in (
            "max_queue_delay_ms",
            "quiet_gap_ms",
            "shed_delay_ms",
            "watch_interval_s",
            "drain_s",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0", fix="use 0 to disable it")
        for name in ("request_timeout_s", "body_timeout_s", "header_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0", fix="use e.g. 10")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be >= 1", fix="use e.g. 1024")


class ModelHandle:
    """The predictor being served; swapped atomically on reload."""

    def __init__(self) -> None:
        self.current: Predictor | None = None
        self.error: str | None = None
        self.loading = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.current is not None

    def load(self, factory: Callable[[], Predictor]) -> Predictor:
        """Build, load and warm a predictor, then make it current (old one keeps serving until then)."""
        with self._lock:
            self.loading = True
            try:
                pred = factory()
                pred.load()
                pred.warmup()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self.loading = False
            self.current, self.error = pred, None
            return pred


def create_app(
    predictor: Predictor | Callable[[], Predictor],
    config: ServeConfig | None = None,
    watcher: Any = None,
    routes: tuple[Route, ...] = (),
    ui: Any = None,
) -> FastAPI:
    """A FastAPI app serving ``predictor`` (or a factory building it at start-up).

    ``watcher`` (optional) has ``check() -> Callable[[], Predictor] | None``: a factory for a
    new predictor when the registry alias has moved. It is polled every ``watch_interval_s``
    and on ``POST /v1/admin/reload``. ``routes``: the domain's own endpoints (see
    :class:`~core.serve.predictor.Route`). ``ui``: the domain's review page
    (:class:`~core.serve.ui.UiPage`), served at ``/ui/``.
    """
    cfg = config or ServeConfig()
    factory: Callable[[], Predictor] = (
        predictor
        if callable(predictor) and not hasattr(predictor, "predict_batch")
        else (lambda: predictor)
    )  # type: ignore[assignment,return-value]
    handle = ModelHandle()
    metrics = ServeMetrics()
    draining = threading.Event()
    admitted = 0  # requests past admission whose items are not queued yet
    decode_pool: ThreadPoolExecutor | None = None

    def run_batch(items: list[Any]) -> list[Any]:
        pred = handle.current
        assert pred is not None
        return pred.predict_batch(items)

    batcher = DynamicBatcher(
        run_batch,
        cfg.max_batch_size,
        cfg.max_queue_delay_ms,
        cfg.max_queue,
        on_batch=metrics.observe_batch,
        quiet_gap_ms=cfg.quiet_gap_ms,
    )

    def load(f: Callable[[], Predictor]) -> str | None:
        """Load a predictor; returns None on success, else the error (also kept on the handle)."""
        try:
            pred = handle.load(f)
        except Exception:
            old = handle.current
            log.exception(
                "model failed to load; "
                + (
                    f"still serving version {old.version}"
                    if old is not None
                    else "the server will not report ready"
                )
            )
            return handle.error
        metrics.set_version(pred.name, pred.version)
        log.info("serving %s version %s", pred.name, pred.version)
        return None

    async def reload_from_watcher() -> tuple[bool, str | None]:
        """``(reloaded, error)``: a version that fails to load is not marked served, so the
        next poll or reload tries it again."""
        if watcher is None:
            return False, None
        new = await asyncio.to_thread(watcher.check)
        if new is None:
            return False, None
        err = await asyncio.to_thread(load, new)
        if err is None and hasattr(watcher, "confirm"):
            watcher.confirm()
        return err is None, err

    async def watch() -> None:
        while True:
            await asyncio.sleep(cfg.watch_interval_s)
            try:
                await reload_from_watcher()
            except Exception:
                log.exception("registry watch failed; keeping the current model")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal decode_pool
        decode_pool = ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="dv-decode")
        await batcher.start()
        loader = asyncio.create_task(asyncio.to_thread(load, factory))
        watch_task = (
            asyncio.create_task(watch())
            if watcher is not None and cfg.watch_interval_s > 0
            else None
        )
        try:
            yield
        finally:
            if watch_task:
                watch_task.cancel()
            await loader
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="DeepVerticals model server", lifespan=lifespan)
    app.state.handle, app.state.metrics, app.state.batcher = handle, metrics, batcher
    app.state.config = cfg
    app.state.begin_drain = draining.set

    def api_key() -> str | None:
        return os.environ.get(cfg.api_key_env) or None

    def authorized(headers: Headers) -> bool:
        key = api_key()
        if not key:
            return True
        given = (
            headers.get("x-api-key")
            or headers.get("authorization", "").removeprefix("Bearer ")
            or cookie_key(headers)
        )
        return hmac.compare_digest(given.encode(), key.encode())

    def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    def count(name: str, status: int, seconds: float) -> None:
        # only the served model's name labels metrics: names from URLs would let any client
        # create series without bound
        served = handle.current
        label = served.name if served is not None and name == served.name else "unknown"
        metrics.requests.labels(label, str(status)).inc()
        metrics.latency.labels(label).observe(seconds)

    posts = [
        re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(r.path)))
        for r in routes
        if r.method == "POST"
    ]

    def shed(scope: Scope) -> bytes | None:
        """The 503 body for a prediction the queue cannot take, else None. Checked before
        routing, so overload costs no body read, parse or decode, and as little as a request
        can cost (measured: the flood of 503s under 400 clients is what starves the model)."""
        if scope["method"] != "POST" or not (
            scope["path"].endswith("/predict") or any(rx.fullmatch(scope["path"]) for rx in posts)
        ):
            return None
        depth = batcher.depth
        if depth + admitted < cfg.max_queue:
            return None
        count(scope["path"].removeprefix("/v1/models/").removesuffix("/predict"), 503, 0.0)
        msg = f"server busy: {depth} items queued and {admitted} requests admitted (limit {cfg.max_queue})"
        return json.dumps({"detail": msg}).encode()

    app.add_middleware(
        _Gate,
        authorized=authorized,
        draining=draining,
        shed=shed,
        shed_delay_s=cfg.shed_delay_ms / 1000.0,
    )
    if ui is not None:
        mount_ui(app, ui, api_key)

    @app.get("/v1/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        if draining.is_set():
            return JSONResponse({"status": "draining", "reason": "shutting down"}, 503)
        if handle.ready:
            return JSONResponse({"status": "ready", "version": handle.current.version})
        status = "loading" if handle.loading or handle.error is None else "failed"
        return JSONResponse(
            {"status": status, "reason": public_text(handle.error)}, status_code=503
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        pred = handle.current
        rows = (
            []
            if pred is None
            else [
                {
                    "name": pred.name,
                    "version": pred.version,
                    "alias": cfg.alias,
                    "last_load_error": public_text(handle.error),
                }
            ]
        )
        return JSONResponse(rows)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(batcher.depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/admin/reload")
    async def admin_reload() -> JSONResponse:
        if watcher is None:
            return error(404, "no registry is attached to this server")
        changed, err = await reload_from_watcher()
        body = {"reloaded": changed, "version": handle.current.version if handle.current else None}
        if err is not None:
            body["error"] = public_text(err)
        return JSONResponse(body, status_code=200 if err is None else 500)

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            resp = await _predict(name, request)
        except Exception as exc:  # a failed batch or a predictor bug: answered and counted
            log.exception("prediction failed")
            resp = error(500, f"prediction failed ({type(exc).__name__})")
        count(name, resp.status_code, time.perf_counter() - t0)
        return resp

    def route_handler(route: Route) -> Callable[[Request], Any]:
        async def on_route(request: Request) -> Response:
            t0 = time.perf_counter()
            served = handle.current
            try:
                resp = await _predict(served.name if served else "", request, route)
            except Exception as exc:
                log.exception("request failed")
                resp = error(500, f"request failed ({type(exc).__name__})")
            count(served.name if served else "", resp.status_code, time.perf_counter() - t0)
            return resp

        return on_route

    for route in routes:
        app.add_api_route(route.path, route_handler(route), methods=[route.method], name=route.name)

    def parse_and_decode(
        pred: Predictor, ctype: str, body: Any, call: RouteCall | None = None
    ) -> list[Any] | JSONResponse:
        """On the decode pool: JSON (multipart was parsed on the loop) -> the predictor's items,
        or the 422 (404) that names what is wrong."""
        if call is not None and not body:
            payload: Any = None
        elif ctype.startswith("multipart/form-data"):
            payload = body
        else:
            try:
                payload = json.loads(body)
            except RecursionError:
                return error(422, [{"loc": ["body"], "msg": "invalid JSON: nested too deeply"}])
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limit
                return error(422, [{"loc": ["body"], "msg": f"invalid JSON: {exc}"}])
        if call is not None:
            call.body, payload = payload, call
        try:
            return pred.decode(payload)
        except RequestError as exc:
            return error(_status(exc), exc.errors)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # a predictor's decode met input it did not expect: still the request's fault
            return error(422, [{"loc": ["body"], "msg": f"invalid request: {exc}"[:500]}])

    async def _predict(name: str, request: Request, route: Route | None = None) -> Response:
        nonlocal admitted
        pred = handle.current
        if pred is None:
            if handle.error is not None and not handle.loading:  # retrying will not help
                return error(503, f"model failed to load: {public_text(handle.error)}")
            return error(503, "model not ready", {"Retry-After": "1"})
        if route is None and name != pred.name:
            return error(404, f"unknown model {name!r}; this server serves {pred.name!r}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return error(
                413, f"request body of {declared} bytes exceeds the {cfg.max_body_bytes}-byte limit"
            )
        admitted += 1
        call = (
            None
            if route is None
            else RouteCall(route.name, dict(request.path_params), None, dict(request.query_params))
        )
        try:
            items = await _read_and_decode(pred, request, call)
        finally:
            admitted -= 1
        if isinstance(items, JSONResponse):
            return items
        if len(items) == 1 and isinstance(items[0], Ready):  # answered by decode: no queue
            return _answer(pred, route, [items[0].value])
        try:
            outputs = await asyncio.wait_for(batcher.submit(items), cfg.request_timeout_s)
        except QueueFull as exc:
            return error(503, f"server busy: {exc}", {"Retry-After": "1"})
        except TimeoutError:
            return error(504, f"prediction took longer than {cfg.request_timeout_s:g} s")
        return _answer(pred, route, outputs)

    async def _read_and_decode(
        pred: Predictor, request: Request, call: RouteCall | None = None
    ) -> list[Any] | JSONResponse:
        body = bytearray()
        try:
            async with asyncio.timeout(cfg.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > cfg.max_body_bytes:
                        return error(
                            413, f"request body exceeds the {cfg.max_body_bytes}-byte limit"
                        )
        except TimeoutError:
            # a trickling client, or a Content-Length larger than the body it sends
            return error(
                408,
                f"request body not received within {cfg.body_timeout_s:g} s "
                f"({len(body)} bytes arrived)",
                {"Connection": "close"},
            )
        ctype = request.headers.get("content-type", "")
        payload: Any = bytes(body)
        if ctype.startswith("multipart/form-data"):
            try:
                payload = await _parse_multipart(request.headers, payload)
            except Exception as exc:  # malformed multipart: the client's fault
                return error(422, [{"loc": ["body"], "msg": f"invalid multipart body: {exc}"}])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(decode_pool, parse_and_decode, pred, ctype, payload, call)

    return app


def _answer(pred: Predictor, route: Route | None, outputs: list[Any]) -> Response:
    """The response for a request's outputs: an error the predictor found in the batch (under
    its lock: a decision made meanwhile), a route's binary answer, or the encoded JSON."""
    refused = next((o for o in outputs if isinstance(o, RequestError)), None)
    if refused is not None:
        return JSONResponse({"detail": refused.errors}, status_code=_status(refused))
    if route is not None and len(outputs) == 1 and isinstance(outputs[0], Binary):
        out = outputs[0]
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if out.filename:
            headers["Content-Disposition"] = f'attachment; filename="{out.filename}"'
        return Response(out.data, media_type=out.media_type, headers=headers)
    return JSONResponse(pred.encode(outputs))


def _status(exc: RequestError) -> int:
    return 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422


class _Gate:
    """Pure ASGI middleware in front of every route: with an API key set only liveness is
    open (docs, schema, readiness, metrics and models need the key); a prediction the queue
    cannot take is answered 503 here, before routing; and while draining every response
    carries ``Connection: close`` so keep-alive clients leave after their request.
    (Starlette's ``BaseHTTPMiddleware`` would cost a task group and a body stream per request.)"""

    def __init__(
        self,
        app: ASGIApp,
        authorized: Callable[[Headers], bool],
        draining: threading.Event,
        shed: Callable[[Scope], bytes | None],
        shed_delay_s: float = 0.0,
    ) -> None:
        self.app, self.authorized, self.draining, self.shed = app, authorized, draining, shed
        self.shed_delay_s = shed_delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not open_without_key(scope["path"]) and not self.authorized(Headers(scope=scope)):
            resp = (
                login_redirect(scope)
                if scope["path"].startswith("/ui") and scope["method"] == "GET"
                else JSONResponse({"detail": "missing or wrong API key"}, status_code=401)
            )
            await resp(scope, receive, self._closing(send))
            return
        busy = self.shed(scope)
        if busy is not None:  # 503 before routing: the body is never read
            if self.shed_delay_s > 0:  # slows clients that retry at once; costs no CPU
                await asyncio.sleep(self.shed_delay_s)
            send = self._closing(send)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(busy)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": busy})
            return
        await self.app(scope, receive, self._closing(send))

    def _closing(self, send: Send) -> Send:
        if not self.draining.is_set():
            return send

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return send_closing


async def _parse_multipart(headers: Any, body: bytes) -> MultipartBody:
    """A size-checked body parsed by Starlette's multipart parser (python-multipart)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    form = await MultiPartParser(headers, stream(), max_files=1000, max_fields=1000).parse()
    out = MultipartBody()
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            out.files.append(Upload(key, value.filename, value.content_type, await value.read()))
        else:
            out.fields[key] = str(value)
    await form.close()
    return out


def app_for(
    predictor: Callable[[Any, str, str], Predictor],
    config: ServeConfig,
    model_dir: Any = None,
    registry: str | None = None,
    name: str | None = None,
    alias: str | None = None,
    watch_interval_s: float | None = None,
    routes: tuple[Route, ...] = (),
    ui: Any = None,
) -> FastAPI:
    """The app for a model directory, or for a registered model's alias (``alias``, else
    ``config.alias``, else ``"production"``) with hot reload, polled every
    ``watch_interval_s`` (else ``config.watch_interval_s``); ``predictor(path, name,
    version)`` builds the domain's predictor."""
    from pathlib import Path

    from core.errors import ConfigError

    if registry:
        from core.registry import ModelRegistry, RegistryWatcher

        cfg_alias = alias or config.alias or "production"
        if watch_interval_s is not None:
            config.watch_interval_s = watch_interval_s
        watcher = RegistryWatcher(ModelRegistry(), registry, cfg_alias, predictor=predictor)
        config.alias = cfg_alias
        return create_app(watcher.current(), config, watcher=watcher, routes=routes, ui=ui)
    if model_dir is None:
        raise ConfigError("nothing to serve", fix="pass a MODEL_DIR or --registry NAME")
    path = Path(model_dir)
    return create_app(predictor(path, name or path.name, "1"), config, routes=routes, ui=ui)
