"""The report folder: JSON, Markdown, overlays, NIfTI mask and a DICOM SEG that reads back
with highdicom and references the source series; no patient data outside the SEG."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom

from pipelines.medical_ct.data import read_dicom, read_nifti
from pipelines.medical_ct.nodules import find_nodules
from pipelines.medical_ct.predict import StudyResult
from pipelines.medical_ct.report import write_report


def test_report_folder_from_a_study(study, tmp_path):
    vol = read_dicom(study.folder / "dicom")
    truth = read_nifti(study.folder / "mask.nii.gz").array
    found, labels = find_nodules((truth > 0).astype(np.float32) * 0.8, vol)
    assert found
    res = StudyResult(vol, found, labels, (truth > 0).astype(np.float32), 1.0, {"name": "oracle"})
    out = write_report(res, tmp_path / "report")
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_nodules"] == len(found) and rep["series_uid"] == study.series_uid

    for f in rep["files"]:
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert md.count("| ") > len(found) and "nodule 1" in md
    mask = read_nifti(out / "mask.nii.gz")
    np.testing.assert_array_equal(mask.array.astype(np.uint16), labels)
    # the DICOM SEG references the source series and reproduces the label map
    seg = hd.seg.segread(out / "seg.dcm")
    src = [pydicom.dcmread(p) for p in vol.source_files]
    assert seg.get_segment_numbers() == [n.id for n in found]
    ref_series = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert ref_series == {study.series_uid}
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in src],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(px, labels)
    # no patient data in what a person or a log reads
    phi = [str(src[0].PatientName), str(src[0].PatientID), str(src[0].AccessionNumber)]
    for f in ("report.json", "report.md"):
        text = (out / f).read_text()
        assert not any(p in text for p in phi), f
