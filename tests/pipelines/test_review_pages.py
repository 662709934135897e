"""Every domain's review page renders, and says so when its model failed to load: the page and
its own files come back, the page names the reason, and no template value is missing."""

from __future__ import annotations

import importlib
import re
import time

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer

DOMAINS = ["vision_qc", "medical_ct", "finance_risk", "nlp_service"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_page_says_no_model_is_loaded_and_serves_its_files(domain, monkeypatch):
    monkeypatch.delenv("DV_API_KEY", raising=False)
    serve = importlib.import_module(f"pipelines.{domain}.serve")

    def broken():
        raise FileNotFoundError("/srv/models/v7/model.onnx is missing")

    app = create_app(broken, ServeConfig(drain_s=0.2), routes=serve.ROUTES, ui=serve.UI)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for _ in range(100):  # the load fails in the background at start-up
            page = c.get("/ui/")
            if "failed to load" in page.text:
                break
            time.sleep(0.05)
        assert page.status_code == 200 and f"<h1>{serve.UI.title}</h1>" in page.text
        assert "No model is loaded: it failed to load" in page.text
        assert "model.onnx is missing" in page.text and "/srv/models" not in page.text
        files = re.findall(r'(?:src|href)="/ui/static/([^"]+)"', page.text)
        assert "dv.js" in files and "dv.css" in files and len(files) >= 4
        for name in files:
            assert c.get(f"/ui/static/{name}").status_code == 200, name
        # the page's API answers that the model is not there, with the reason
        first = next(r for r in serve.ROUTES if r.method == "GET" and "{" not in r.path)
        api = c.get(first.path)
        assert api.status_code == 503 and "failed to load" in api.json()["detail"]
