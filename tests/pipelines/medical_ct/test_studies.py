"""Studies for review over real HTTP: an uploaded DICOM series is segmented as ``/predict``
segments it and kept; slices come back under the asked window, pixel for pixel; contours are
exactly the outlines of the label map; accept/reject marks are kept across a restart; the
reports download (DICOM SEG only for a DICOM study); hostile uploads leave nothing behind."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.medical_ct.data import read_dicom
from pipelines.medical_ct.serve import ROUTES, NodulePredictor
from pipelines.medical_ct.studies import WINDOWS, StudyArchive
from tests.pipelines.medical_ct.conftest import truth, zipped_series

pytestmark = pytest.mark.xdist_group("ct_tiny")


def _server(model, folder):
    pred = NodulePredictor(model, "ct", studies=folder)
    cfg = ServeConfig(
        max_body_bytes=50 * 2**20, max_batch_size=1, request_timeout_s=300, drain_s=0.2
    )
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES))


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_an_uploaded_study_is_segmented_kept_and_shown_slice_by_slice(model_and_case, tmp_path):
    model, case = model_and_case
    folder = tmp_path / "studies"
    upload = zipped_series(case)
    vol = read_dicom(case / "dicom")
    with _server(model, folder) as srv, httpx.Client(base_url=srv.url, timeout=300) as c:
        wait_until_ready(srv.url, timeout=120)
        r = c.post("/v1/studies", files={"file": ("case0.zip", upload, "application/zip")})
        assert r.status_code == 200, r.text
        study = r.json()["study"]
        same = c.post("/v1/models/ct/predict", files={"file": ("case0.zip", upload)}).json()[
            "study"
        ]
        assert [n["id"] for n in study["nodules"]] == [n["id"] for n in same["nodules"]]
        assert study["shape"] == list(vol.shape) and study["filename"] == "case0.zip"
        assert not (folder / ".incoming").exists() or not any((folder / ".incoming").iterdir())
        sid = study["id"]
        assert [s["id"] for s in c.get("/v1/studies").json()["studies"]] == [sid]

        # a slice under each window is the windowed HU, pixel for pixel
        z = vol.shape[0] // 2
        for name, (level, width) in WINDOWS.items():
            got = _png(c.get(f"/v1/studies/{sid}/slices/{z}", params={"window": name}).content)
            hu = np.rint(vol.array[z]).astype(np.float32)
            want = np.clip((hu - (level - width / 2)) / width * 255, 0, 255).astype(np.uint8)
            assert got.shape == vol.shape[1:] and np.abs(got.astype(int) - want).max() <= 1, name
        for bad in (f"slices/{vol.shape[0]}", "slices/-1", "slices/x", "contours/999"):
            assert c.get(f"/v1/studies/{sid}/{bad}").status_code == 422, bad
        assert c.get(f"/v1/studies/{sid}/slices/0?window=soft").status_code == 422
        assert c.get(f"/v1/studies/{'0' * 16}").status_code == 404
        assert c.get(f"/v1/studies/{sid}/report/pdf").status_code == 422
        md = c.get(f"/v1/studies/{sid}/report/md")
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert (
            json.loads(c.get(f"/v1/studies/{sid}/report/json").content)["series_uid"]
            == vol.series_uid
        )

        # a hostile upload is refused and leaves neither a study nor staged files
        evil = io.BytesIO()
        with zipfile.ZipFile(evil, "w") as z_:
            z_.writestr("../../escape.dcm", b"x")
        bad = c.post("/v1/studies", files={"file": ("evil.zip", evil.getvalue())})
        assert bad.status_code == 422 and "leaves the upload folder" in bad.text
        assert len(c.get("/v1/studies").json()["studies"]) == 1
        assert not any((folder / ".incoming").glob("*"))


def test_contours_reviews_and_reports_of_a_study_with_nodules(model_and_case, tmp_path):
    model, case = model_and_case
    folder = tmp_path / "studies"
    res = truth(case)
    assert res.nodules, "the phantom has nodules"
    arc = StudyArchive(folder)
    sid = arc.add(res, "truth.zip")["id"]
    arc.close()
    with _server(model, folder) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        study = c.get(f"/v1/studies/{sid}").json()["study"]
        assert [n["id"] for n in study["nodules"]] == [n.id for n in res.nodules]
        assert set(study["reports"]) == {"md", "json", "seg"}  # a DICOM study gets its SEG
        seg = c.get(f"/v1/studies/{sid}/report/seg")
        assert seg.status_code == 200 and seg.content[128:132] == b"DICM"

        # the contour image is exactly the outline of the label map on that slice
        n1 = study["nodules"][0]
        rgba = _png(c.get(f"/v1/studies/{sid}/contours/{n1['slice']}").content)
        lab = res.labels[n1["slice"]] > 0
        edge = lab & ~ndimage.binary_erosion(lab, np.ones((3, 3), bool))
        assert rgba.shape == (*lab.shape, 4) and edge.any()
        assert np.array_equal(rgba[..., 3] > 0, edge)
        empty = next(z for z in range(res.labels.shape[0]) if not res.labels[z].any())
        assert not _png(c.get(f"/v1/studies/{sid}/contours/{empty}").content)[..., 3].any()

        url = f"/v1/studies/{sid}/nodules/{n1['id']}/review"
        for bad in ({}, {"accept": "yes"}, {"accept": True, "note": 1}):
            assert c.post(url, json=bad).status_code == 422, bad
        assert (
            c.post(f"/v1/studies/{sid}/nodules/99/review", json={"accept": True}).status_code == 404
        )
        assert c.post(url, json={"accept": False}).status_code == 200
        assert (
            c.post(url, json={"accept": True, "note": "8 mm solid, follow up"}).status_code == 200
        )
        listed = c.get("/v1/studies").json()["studies"]
        assert listed[0]["reviewed"] == 1

    with _server(model, folder) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        wait_until_ready(srv.url, timeout=120)
        again = c.get(f"/v1/studies/{sid}").json()["study"]["nodules"][0]["review"]
        assert again["verdict"] == "accepted" and again["note"] == "8 mm solid, follow up"

    nifti = StudyArchive(tmp_path / "nii")
    res.volume.source_files = ()  # as a NIfTI upload: no DICOM to refer to
    nid = nifti.add(res, "study.nii.gz")["id"]
    assert nifti.get(nid)["reports"] == ["md", "json"]
    with pytest.raises(KeyError):
        nifti.report(nid, "seg")
