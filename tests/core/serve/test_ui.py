"""core.serve's review pages over real HTTP on loopback: the page and its files, the key rule
(login cookie, redirects, the same key for the API), the refusal to open beyond loopback
without a key, a page with no model, and static paths that must not leak the server's files."""

from __future__ import annotations

import sys
import time
import uuid

import httpx
import pytest

from core.errors import ConfigError
from core.serve import ServeConfig, UiPage, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from core.serve.ui import is_loopback

PAGE = """{% extends "base.html" %}
{% block main %}<p id="hello">Hello from {{ model.name if model else "nobody" }}</p>{% endblock %}
{% block scripts %}<script src="/ui/static/page.js"></script>{% endblock %}
"""


class Echo:
    name, version = "echo", "3"

    def load(self) -> None: ...
    def warmup(self) -> None: ...
    def decode(self, body):
        return [body]

    def predict_batch(self, items):
        return items

    def encode(self, outputs):
        return {"out": outputs[0]}


@pytest.fixture
def page(tmp_path, monkeypatch):
    """A throwaway package whose ui/ folder holds a page and a script."""
    name = f"uipkg_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    (pkg / "ui").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ui" / "page.html").write_text(PAGE)
    (pkg / "ui" / "page.js").write_text("document.body.dataset.ran = 'yes';\n")
    (pkg / "secret.py").write_text("KEY = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield UiPage("Test page", name)
    sys.modules.pop(name, None)


def _server(pred, page, host="127.0.0.1"):
    return BackgroundServer(create_app(pred, ServeConfig(), ui=page), host=host)


def test_the_page_renders_with_its_files_and_a_strict_policy(page, monkeypatch):
    monkeypatch.delenv("DV_API_KEY", raising=False)
    with _server(Echo(), page) as srv:
        wait_until_ready(srv.url, timeout=30)
        r = httpx.get(srv.url + "/ui/", timeout=10)
        assert r.status_code == 200 and "Hello from echo" in r.text
        assert "version 3" in r.text and "No model" not in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert httpx.get(srv.url + "/ui", timeout=10).status_code == 307
        js = httpx.get(srv.url + "/ui/static/page.js", timeout=10)
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        shared = httpx.get(srv.url + "/ui/static/dv.js", timeout=10)
        assert shared.status_code == 200 and "checkUpload" in shared.text
        # templates, Python files and anything outside the two folders stay unreachable
        for path in ("page.html", "secret.py", "..%2Fsecret.py", "%2E%2E%2Fsecret.py", ".js"):
            assert httpx.get(f"{srv.url}/ui/static/{path}", timeout=10).status_code == 404, path


def test_a_page_without_a_model_says_why_and_hides_where_files_are(page, monkeypatch):
    monkeypatch.delenv("DV_API_KEY", raising=False)

    def broken():
        raise FileNotFoundError("/srv/models/v9/model.onnx is missing")

    with _server(broken, page) as srv:
        for _ in range(100):  # the load runs in the background at start-up
            r = httpx.get(srv.url + "/ui/", timeout=10)
            if "failed to load" in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and "Hello from nobody" in r.text
        assert "No model is loaded: it failed to load" in r.text
        assert "model.onnx is missing" in r.text and "/srv/models" not in r.text


def test_with_a_key_the_page_needs_it_and_the_cookie_serves_the_api(page, monkeypatch):
    monkeypatch.setenv("DV_API_KEY", "s3cret&key")
    with _server(Echo(), page) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert c.get("/ui/login").status_code == 200
        assert c.get("/ui/static/dv.css").status_code == 200  # styles for the login form
        assert c.post("/v1/models/echo/predict", json={"a": 1}).status_code == 401
        wrong = c.post("/ui/login", data={"key": "guess"})
        assert wrong.status_code == 401 and "That key is not this server" in wrong.text
        assert "dv_key" not in c.cookies
        ok = c.post("/ui/login", data={"key": "s3cret&key"})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page_r = c.get("/ui/")
        assert page_r.status_code == 200 and "Sign out" in page_r.text
        assert c.post("/v1/models/echo/predict", json={"a": 1}).json() == {"out": {"a": 1}}
        c.post("/ui/logout")
        assert c.get("/ui/").status_code == 303  # the cookie is gone


def test_beyond_loopback_without_a_key_no_page_is_reachable(page, monkeypatch):
    monkeypatch.delenv("DV_API_KEY", raising=False)
    with _server(Echo(), page, host="0.0.0.0") as srv:
        url = f"http://127.0.0.1:{srv.port}"
        r = httpx.get(url + "/ui/", timeout=10)
        assert r.status_code == 403 and "DV_API_KEY" in r.text and "Hello" not in r.text
        assert httpx.get(url + "/ui/login", timeout=10).status_code == 403
        monkeypatch.setenv("DV_API_KEY", "k")  # with a key, the page is there behind login
        assert httpx.get(url + "/ui/", timeout=10).status_code == 303
        ok = httpx.get(url + "/ui/", cookies={"dv_key": "k"}, timeout=10)
        assert ok.status_code == 200 and "Hello from echo" in ok.text


def test_loopback_addresses_and_a_missing_template():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.0.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.2")
    assert not is_loopback("") and not is_loopback("example.com")
    with pytest.raises(ConfigError, match=r"page\.html not found"):
        create_app(Echo(), ServeConfig(), ui=UiPage("x", "core"))
