"""PS3.15 basic-profile de-identification: every attribute of the profile, checked in the
output; UIDs mapped consistently so the series still reads as one volume."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import Tag

from core.errors import DataError
from pipelines.medical_ct.anonymize import anonymize_folder, profile_actions
from pipelines.medical_ct.config import IngestConfig
from pipelines.medical_ct.data import read_dicom
from tests.pipelines.medical_ct.conftest import series

_DUMMY = {
    "DA": "19991231",
    "TM": "235959",
    "DT": "19991231235959",
    "AS": "042Y",
    "DS": "7.5",
    "IS": "7",
}
_NUMERIC = {"US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 7.5, "FD": 7.5}


def _poison(ds: pydicom.Dataset) -> dict[Tag, object]:
    """Give ``ds`` a value for every plain (non-sequence, non-range) attribute of the profile
    it lacks; returns tag -> value written."""
    written = {}
    for cat, tags in profile_actions().items():
        if cat == "ALL_TAGS":
            continue
        for t in tags:
            if len(t) != 2 or t[0] in (0x0000, 0x0002):
                continue
            tag = Tag(*t)
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
            if (
                tag in ds
                or "SQ" in vr
                or vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV", "US or SS")
            ):
                continue
            vr = vr.split(" or ")[0]
            if vr == "UI":
                val = f"1.2.3.{t[0]}.{t[1]}"
            elif vr in _NUMERIC:
                val = _NUMERIC[vr]
            else:
                val = _DUMMY.get(vr, f"PHI{t[0]:04X}{t[1]:04X}")
            ds.add_new(tag, vr, val)
            written[tag] = val
    ds.add_new(Tag(0x0029, 0x0010), "LO", "ACME PRIVATE")  # a private block with a name in it
    ds.add_new(Tag(0x0029, 0x1001), "LO", "Doe^Jane private copy")
    return written


def test_every_profile_attribute_is_handled_and_the_series_survives(tmp_path):
    src = tmp_path / "Doe_Jane_MRN4242"
    hu, paths = series(src, patient=("Doe^Jane", "MRN4242", "19600101"))
    for p in paths[:3]:
        ds = pydicom.dcmread(p)
        written = _poison(ds)
        ds.save_as(p)
    assert len(written) > 200
    rep = anonymize_folder(src, tmp_path / "out", key="k1")
    assert (rep.files, rep.series) == (10, 1)
    outs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert all("Doe" not in str(p) and "MRN" not in str(p) for p in outs)
    cats = profile_actions()
    removed = {Tag(*t) for t in cats["X_TAGS"] if len(t) == 2}
    uid_tags = {Tag(*t) for t in cats["U_TAGS"] if len(t) == 2}
    orig = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths}
    out_ds = [pydicom.dcmread(p) for p in outs]
    poisoned = [d for d in out_ds if "PatientIdentityRemoved" in d]
    assert len(poisoned) == 10
    for ds in out_ds:
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(el.tag.is_private for el in ds)
        for tag, val in written.items():
            el = ds.get(tag)
            if el is None:
                continue
            name = keyword_for_tag(tag)
            assert tag not in removed, f"{name} should be removed"
            if tag in uid_tags:
                assert el.value != val, f"{name} kept its UID"
            else:
                assert str(el.value) != str(val) or str(val) in ("0", ""), f"{name} kept {val!r}"
        for kw in (
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "InstitutionName",
            "PatientBirthDate",
        ):
            assert "Doe" not in str(ds.get(kw, "")) and "MRN4242" not in str(ds.get(kw, ""))
            assert str(ds.get(kw, "")) != str(orig[next(iter(orig))].get(kw))
        assert ds.SOPInstanceUID not in orig
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # one series, one frame of reference, new UIDs; the volume reads back unchanged
    assert len({d.SeriesInstanceUID for d in out_ds}) == 1
    assert len({d.FrameOfReferenceUID for d in out_ds}) == 1
    assert out_ds[0].SeriesInstanceUID != pydicom.dcmread(paths[0]).SeriesInstanceUID
    vol = read_dicom(tmp_path / "out", IngestConfig(min_slices=2))
    np.testing.assert_allclose(vol.array, hu, atol=1e-3)
    # the same key maps UIDs the same way; another key does not
    anonymize_folder(src, tmp_path / "again", key="k1")
    anonymize_folder(src, tmp_path / "other", key="k2")
    uid_of = lambda d: pydicom.dcmread(next((tmp_path / d).rglob("*.dcm"))).SeriesInstanceUID  # noqa: E731
    assert uid_of("again") == uid_of("out") != uid_of("other")


def test_refuses_output_inside_input_and_empty_input(tmp_path):
    series(tmp_path / "in")
    with pytest.raises(DataError, match="inside the input"):
        anonymize_folder(tmp_path / "in", tmp_path / "in" / "anon")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no DICOM file"):
        anonymize_folder(tmp_path / "empty", tmp_path / "o")
    assert not (tmp_path / "o").exists()
