"""Inspections over real HTTP: an uploaded image is judged exactly as ``DefectDetector`` judges
it and kept; the gallery filters by verdict, class and review; right/wrong marks are kept
(the latest counts) across a restart; the COCO export of the reviewed ones loads back with
``load_coco`` with the same boxes; and bad uploads, ids and bodies name what is wrong."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.vision_qc.data import load_coco, load_dataset
from pipelines.vision_qc.predict import DefectDetector
from pipelines.vision_qc.serve import ROUTES, DefectPredictor
from pipelines.vision_qc.train import partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vqc_trained")]


def _server(model_dir, folder, max_body=2_000_000):
    pred = DefectPredictor(model_dir, "vqc", inspections=folder)
    cfg = ServeConfig(max_body_bytes=max_body, drain_s=0.2)
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES))


def test_inspections_are_judged_kept_reviewed_and_exported(trained, tmp_path):
    test = partition(load_dataset(trained.data), trained.data)["test"]
    bad_part = next(s for s in test if s.defective)
    good_part = next(s for s in test if not s.defective)
    det = DefectDetector(trained.model_dir)
    folder = tmp_path / "inspections"
    with _server(trained.model_dir, folder) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        made = {}
        for s in (bad_part, good_part):
            r = c.post(
                "/v1/inspections", files={"file": (s.path.name, s.path.read_bytes(), "image/png")}
            )
            assert r.status_code == 200, r.text
            made[s.path.name] = r.json()
        a, b = made[bad_part.path.name], made[good_part.path.name]
        want = det.detect(bad_part.path)
        assert a["detections"] == want["detections"] and a["defective"] == want["defective"]
        assert a["verdict"] == ("fail" if want["defective"] else "pass")
        assert a["threshold"] == pytest.approx(det.threshold) and a["width"] == bad_part.width
        assert a["filename"] == bad_part.path.name and "file" not in a  # no server paths
        img = c.get(f"/v1/inspections/{a['id']}/image")
        assert (
            img.content == bad_part.path.read_bytes() and img.headers["content-type"] == "image/png"
        )

        listed = c.get("/v1/inspections").json()
        assert [x["id"] for x in listed["inspections"]] == [b["id"], a["id"]]  # newest first
        assert listed["classes"] == list(trained.classes)
        fails = c.get("/v1/inspections", params={"verdict": "fail"}).json()["inspections"]
        assert {x["id"] for x in fails} == {x["id"] for x in (a, b) if x["defective"]}
        cls = a["detections"][0]["class"] if a["detections"] else trained.classes[0]
        by_class = c.get("/v1/inspections", params={"class": cls}).json()["inspections"]
        assert {x["id"] for x in by_class} == {x["id"] for x in (a, b) if cls in x["classes"]}

        for q in ("verdict=maybe", "class=rust", "review=x", "limit=0"):
            assert c.get(f"/v1/inspections?{q}").status_code == 422, q
        for bad in ({}, {"correct": "yes"}, {"correct": True, "note": 3}, [1]):
            assert c.post(f"/v1/inspections/{a['id']}/review", json=bad).status_code == 422, bad
        assert (
            c.post(f"/v1/inspections/{'0' * 16}/review", json={"correct": True}).status_code == 404
        )
        assert c.get(f"/v1/inspections/{'0' * 16}").status_code == 404
        assert c.get(f"/v1/inspections/{'0' * 16}/image").status_code == 404
        two = c.post("/v1/inspections", files=[("f", ("a.png", b"x")), ("g", ("b.png", b"y"))])
        assert two.status_code == 422 and "one image" in two.text
        junk = c.post("/v1/inspections", files={"file": ("x.png", b"garbage", "image/png")})
        assert junk.status_code == 422 and junk.json()["detail"][0]["loc"] == [
            "body",
            "files",
            "x.png",
        ]
        assert (
            c.post("/v1/inspections", files={"file": ("big.png", b"\0" * 2_100_000)}).status_code
            == 413
        )
        assert len(c.get("/v1/inspections").json()["inspections"]) == 2  # refusals keep nothing

        assert (
            c.post(f"/v1/inspections/{a['id']}/review", json={"correct": False}).status_code == 200
        )
        r = c.post(
            f"/v1/inspections/{a['id']}/review", json={"correct": True, "note": "ok on 2nd look"}
        )
        assert r.json()["review"]["verdict"] == "right"
        assert (
            c.post(f"/v1/inspections/{b['id']}/review", json={"correct": False}).status_code == 200
        )
        exported = c.get("/v1/inspections/export")
        assert exported.headers["content-type"] == "application/zip"
        assert "attachment" in exported.headers["content-disposition"]

    # a restart keeps the marks with their history
    with _server(trained.model_dir, folder) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        got = c.get(f"/v1/inspections/{a['id']}").json()
        assert got["review"]["verdict"] == "right" and [h["verdict"] for h in got["history"]] == [
            "wrong",
            "right",
        ]
        reviewed = c.get("/v1/inspections", params={"review": "decided"}).json()["inspections"]
        assert {x["id"] for x in reviewed} == {a["id"], b["id"]}

    # the export loads back as a COCO data set: the right one with its boxes, the wrong one listed
    out = tmp_path / "coco"
    zipfile.ZipFile(io.BytesIO(exported.content)).extractall(out)
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 1 and len(coco["needs_relabel"]) == 1
    ds = load_coco(out / "annotations.json", out, tuple(trained.classes))
    (sample,) = ds.samples
    assert sample.labels == [d["class"] for d in a["detections"]]
    np.testing.assert_allclose(sample.boxes, [d["bbox"] for d in a["detections"]], atol=1e-6)
    assert (out / coco["needs_relabel"][0]).read_bytes() == good_part.path.read_bytes()
