"""The nodule predictor behind core.serve over real HTTP: zipped DICOM and NIfTI uploads, and
the hostile ones (path traversal, zip bomb, too many files, symlinks, not a study)."""

from __future__ import annotations

import gzip
import io
import json
import stat
import zipfile

import httpx
import pydicom
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.medical_ct.predict import NoduleSegmenter
from pipelines.medical_ct.serve import NodulePredictor, UploadLimits

pytestmark = pytest.mark.xdist_group("ct_tiny")


def _zip(files: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_and_nifti_uploads_over_http_and_hostile_ones(model_and_case, tmp_path):
    model, case = model_and_case
    series = {
        f"PATIENT_X/{p.relative_to(case / 'dicom')}": p.read_bytes()
        for p in (case / "dicom").rglob("*")
        if p.is_file()
    }
    good = _zip(series)
    nii = (case / "mask.nii.gz").read_bytes()
    expected = NoduleSegmenter(model).predict(case / "dicom").summary()
    pred = NodulePredictor(
        model,
        "ct",
        limits=UploadLimits(max_files=400, max_uncompressed_bytes=60_000_000, max_voxels=300_000),
    )
    app_ = create_app(pred, ServeConfig(max_body_bytes=20_000_000, max_batch_size=1))
    with BackgroundServer(app_) as srv:
        wait_until_ready(srv.url, timeout=120)
        url = f"{srv.url}/v1/models/ct/predict"
        r = httpx.post(url, files={"study": ("study.zip", good, "application/zip")}, timeout=120)
        assert r.status_code == 200, r.text
        study = r.json()["study"]
        assert (
            study["series_uid"] == expected["series_uid"]
            and study["nodules"] == expected["nodules"]
        )
        src = pydicom.dcmread(next(p for p in (case / "dicom").rglob("*") if p.is_file()))
        for phi in (src.PatientName, src.PatientID, src.AccessionNumber, src.InstitutionName):
            assert str(phi) not in r.text, phi
        r = httpx.post(url, files={"study": ("mask.nii.gz", nii)}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["study"]["shape"] == study["shape"]

        bomb = _zip({"a.dcm": b"\0" * 50_000_000})
        big_gz = gzip.compress(b"\0" * 40_000_000)
        hostile = [
            (_zip({"../../evil.dcm": b"x"}), "leaves the upload folder"),
            (_zip({"/abs/evil.dcm": b"x"}), "leaves the upload folder"),
            (_zip({"ok.dcm": b"x"}, symlink="link.dcm"), "symbolic link"),
            (bomb, "zip bomb"),
            (_zip({f"f{i}": b"x" for i in range(401)}), "over the limit of 400"),
            (_zip({"readme.txt": b"hello"}), "no DICOM image found"),
            (b"PK\x03\x04 truncated", "not a readable zip"),
            (b"plain bytes", "send a zip of one DICOM series or a NIfTI"),
        ]
        for data, msg in hostile:
            r = httpx.post(url, files={"study": ("up.zip", data)}, timeout=120)
            assert r.status_code == 422, (msg, r.status_code, r.text[:300])
            assert msg in r.json()["detail"][0]["msg"], (msg, r.text[:300])
            assert "/tmp/" not in r.text  # no server path in a response
        r = httpx.post(url, files={"study": ("v.nii.gz", big_gz)}, timeout=120)  # a gzip bomb
        assert r.status_code == 422 and "expands beyond a 300000-voxel volume" in r.text, r.text[
            :200
        ]
        r = httpx.post(url, json={"study": "x"}, timeout=60)
        assert r.status_code == 422 and "multipart/form-data" in r.text
        r = httpx.post(url, files=[("a", ("a.zip", good)), ("b", ("b.zip", good))], timeout=60)
        assert r.status_code == 422 and "one study per request" in r.text
    assert json.dumps(study)  # JSON-ready
