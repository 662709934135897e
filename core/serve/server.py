"""Running the app with uvicorn: blocking (``dv serve``) or in a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def _limits(app: Any) -> dict[str, Any]:
    """uvicorn's connection cap from the app's ServeConfig (``app.state.config``)."""
    cfg = getattr(getattr(app, "state", None), "config", None)
    return {"limit_concurrency": cfg.max_connections} if cfg is not None else {}


def serve(app: Any, host: str = "127.0.0.1", port: int = 8080, graceful_s: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``graceful_s`` to finish. Beyond
    ``ServeConfig.max_connections`` concurrent connections, uvicorn answers 503."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=graceful_s,
        **_limits(app),
    )


class BackgroundServer:
    """``with BackgroundServer(app) as srv: httpx.get(srv.url + "/v1/health/live")``; loopback only."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_s: float = 10.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        cfg = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=graceful_s,
            **_limits(app),
        )
        self.server = uvicorn.Server(cfg)
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
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
