"""Running the app with uvicorn: blocking (``dv serve``) or in a background thread (tests, notebooks).

Two things uvicorn does not do on its own live here, both read from the app's ``ServeConfig``
(``app.state.config``):

* **Header timeout.** A connection must deliver a request's complete headers within
  ``header_timeout_s`` of opening (or of the request's first byte on a kept-alive connection);
  otherwise it gets ``408`` and is closed. uvicorn has a keep-alive timeout but none for a
  client that connects and trickles (or never sends) its headers, so 1,000 such clients would
  hold 1,000 connection slots.
* **Drain on SIGTERM.** uvicorn's own shutdown closes idle keep-alive connections at once,
  which resets requests that clients are sending on them at that moment. Here shutdown first
  drains for up to ``drain_s``: the listener stays open, readiness answers 503 and every
  response carries ``Connection: close``, so each client finishes the request it is on and
  then leaves; the drain ends early once no connection is left. Only then does uvicorn's
  shutdown run (listener closed, remaining idle connections closed, in-flight requests given
  ``graceful_s``, the batcher drained).

What is not here: the routes, limits and batching (``core.serve.app``). A client that connects
at the instant the listener closes is refused by the kernel; the drain window is what lets a
load balancer, seeing readiness 503, stop sending before that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

try:  # httptools' C parser where installed (a dependency), else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTP
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTP

log = logging.getLogger("core.serve")

_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class _HeaderTimeout(_HTTP):
    """uvicorn's HTTP protocol with a deadline for each request's headers (both of uvicorn's
    protocols make ``self.cycle`` when a request's headers are complete)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if before is None or before.response_complete:
            self._arm()  # the first bytes of a request: its headers are on the clock
        super().data_received(data)
        if self.cycle is not before:  # the parser produced a request: headers complete
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        msg = f"request headers not received within {self.header_timeout_s:g} s".encode()
        self.transport.write(_408 % (len(msg), msg))
        self.transport.close()


def _protocol(header_timeout_s: float) -> type[_HTTP]:
    return type("HeaderTimeoutHTTP", (_HeaderTimeout,), {"header_timeout_s": header_timeout_s})


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose shutdown drains first (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        cfg = getattr(getattr(app, "state", None), "config", None)
        self.drain_s = float(getattr(cfg, "drain_s", 0.0))
        self.begin_drain = getattr(getattr(app, "state", None), "begin_drain", None)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.begin_drain is not None:
            self.begin_drain()
        if self.drain_s > 0 and self.server_state.connections and not self.force_exit:
            log.info(
                "draining %d connection(s) for up to %g s (readiness 503, Connection: close)",
                len(self.server_state.connections),
                self.drain_s,
            )
            deadline = time.monotonic() + self.drain_s
            while (
                self.server_state.connections
                and time.monotonic() < deadline
                and not self.force_exit
            ):
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def _config(app: Any, graceful_s: float, host: str = "127.0.0.1", **kw: Any) -> uvicorn.Config:
    state = getattr(app, "state", None)
    if state is not None:  # the review pages refuse to open beyond loopback without a key
        state.bind_host = host
    cfg = getattr(state, "config", None)
    limits: dict[str, Any] = {}
    if cfg is not None:
        limits = {
            "limit_concurrency": cfg.max_connections,
            "http": _protocol(cfg.header_timeout_s),
        }
    return uvicorn.Config(app, host=host, timeout_graceful_shutdown=graceful_s, **limits, **kw)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    graceful_s: float = 30.0,
    access_log: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM: drain (``ServeConfig.drain_s``), then in-flight requests get
    ``graceful_s`` to finish. Beyond ``ServeConfig.max_connections`` concurrent connections,
    uvicorn answers 503."""
    cfg = _config(app, graceful_s, host=host, port=port, log_level="info", access_log=access_log)
    DrainingServer(cfg, app).run()


def wait_until_ready(
    url: str,
    timeout: float = 60.0,
    proc: Any = None,
    interval: float = 0.1,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``url``'s ``/v1/health/ready`` until it answers 200. ``proc`` (a ``Popen`` running
    the server) ends the wait early if it exits; ``headers`` go with each poll (an API key).
    Raises RuntimeError naming what happened."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with status {proc.returncode}")
        try:
            req = urllib.request.Request(f"{url}/v1/health/ready", headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while loading: poll again
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} was not ready after {timeout:g} s")
        time.sleep(interval)


class BackgroundServer:
    """``with BackgroundServer(app) as srv: httpx.get(srv.url + "/v1/health/live")``; loopback only."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_s: float = 10.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        cfg = _config(app, graceful_s, self.host, log_level="warning", lifespan="on")
        self.server = DrainingServer(cfg, app)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Like SIGTERM: drain, stop accepting, let in-flight requests finish, exit."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
