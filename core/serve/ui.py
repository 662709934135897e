"""Review pages: the screen a person uses to check a model's work, served at ``/ui/``.

A domain describes its page with :class:`UiPage`: a title and the package whose ``ui/``
folder holds ``page.html`` (a Jinja2 template extending ``base.html`` from
``core/serve/templates``) and the page's own ``.js``/``.css``. :func:`mount_ui` adds to a
:func:`~core.serve.app.create_app` app::

    GET  /ui/                 the page, rendered on the server; says so when no model is loaded
    GET  /ui/static/{file}    the page's files and the shared ones (dv.css, dv.js); no CDN
    GET  /ui/login            a form for the API key (only when a key is set)
    POST /ui/login            key -> an HttpOnly, SameSite=Strict cookie; POST /ui/logout clears it

A page reads and writes only through the domain's JSON API, under the same key rule as any
client: with ``$DV_API_KEY`` (or the configured variable) set, the page and every call need
the key (header, or the cookie the login form sets: ``SameSite=Strict`` keeps other sites from
using it). Without a key the pages answer only while the server listens on a loopback
address: bound to ``0.0.0.0`` with no key, ``/ui/`` is a 403 that says why and how to fix it.
Pages carry a Content-Security-Policy that allows only the server's own scripts and styles.

Not here: the JSON API and the key check itself (``app.py``), what a page shows (the domain's
``ui/`` folder and routes), stored reviewer decisions (``core.reviews``).
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from core.errors import public_text

COOKIE = "dv_key"
_SHARED = Path(__file__).with_name("templates")
_STATIC = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(js|css|svg|png)")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "png": "image/png"}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


_LOGIN = {
    "model": None,
    "status": "login",
    "reason": "",
    "max_body_bytes": 0,
    "key_required": False,
}


@dataclass(frozen=True)
class UiPage:
    """A domain's review page."""

    title: str  # the page heading, e.g. "Conversations"
    package: str  # the package whose ui/ folder holds page.html and its files
    template: str = "page.html"
    # extra template values from the served predictor (None while no model is loaded)
    context: Callable[[Any], dict[str, Any]] | None = None

    def folder(self) -> Path:
        mod = importlib.import_module(self.package)
        return Path(mod.__file__ or "").parent / "ui"


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for wildcard and other addresses."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cookie_key(headers: Any) -> str:
    """The API key from the login cookie, or ``""``."""
    raw = headers.get("cookie")
    if not raw:
        return ""
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def open_without_key(path: str) -> bool:
    """Paths the key never guards: liveness, the login form, and static files."""
    return path in ("/v1/health/live", "/ui/login") or path.startswith("/ui/static/")


def login_redirect(scope: Any) -> Response:
    return RedirectResponse("/ui/login", status_code=303)


def mount_ui(app: FastAPI, page: UiPage, api_key: Callable[[], str | None]) -> None:
    """Add ``page`` and its login, static and logout routes to ``app``."""
    import jinja2

    folder = page.folder()
    if not (folder / page.template).is_file():
        from core.errors import ConfigError

        raise ConfigError(
            f"review page template {page.template} not found in {folder}",
            fix=f"add {page.package.replace('.', '/')}/ui/{page.template}",
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(folder), str(_SHARED)]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )

    def render(name: str, code: int = 200, **values: Any) -> HTMLResponse:
        html = env.get_template(name).render(title=page.title, **values)
        return HTMLResponse(html, status_code=code, headers=_HEADERS)

    def refused(request: Request) -> HTMLResponse | None:
        """The 403 while the server listens beyond loopback with no key set."""
        if api_key():
            return None
        host = getattr(app.state, "bind_host", None) or (request.scope.get("server") or ("",))[0]
        if is_loopback(host):
            return None
        return render(
            "refused.html",
            403,
            host=host,
            variable=app.state.config.api_key_env,
            key_required=False,
        )

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_page(request: Request) -> Response:
        if (resp := refused(request)) is not None:
            return resp
        handle, cfg = app.state.handle, app.state.config
        pred = handle.current
        if pred is not None:
            status = "ready"
        else:
            status = "loading" if handle.loading or handle.error is None else "failed"
        extra = page.context(pred) if page.context is not None else {}
        return render(
            page.template,
            model=None if pred is None else {"name": pred.name, "version": pred.version},
            status=status,
            reason=public_text(handle.error) or "",
            max_body_bytes=cfg.max_body_bytes,
            key_required=bool(api_key()),
            **extra,
        )

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def ui_static(name: str) -> Response:
        match = _STATIC.fullmatch(name)
        path = next((d / name for d in (folder, _SHARED) if (d / name).is_file()), None)
        if match is None or path is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=_TYPES[match.group(1)], headers=_HEADERS)

    @app.get("/ui/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if not api_key():
            return resp if (resp := refused(request)) else RedirectResponse("/ui/", 303)
        return render("login.html", **_LOGIN, error="")

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        key = api_key()
        if not key:
            return RedirectResponse("/ui/", 303)
        body = await request.body()
        given = parse_qs(body[:4096].decode("utf-8", "replace")).get("key", [""])[0]
        if not hmac.compare_digest(given.encode(), key.encode()):
            return render(
                "login.html", 401, **_LOGIN, error="That key is not this server's API key."
            )
        resp = RedirectResponse("/ui/", 303)
        resp.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
        return resp

    @app.post("/ui/logout", include_in_schema=False)
    async def logout() -> Response:
        resp = RedirectResponse("/ui/login" if api_key() else "/ui/", 303)
        resp.delete_cookie(COOKIE, path="/")
        return resp
