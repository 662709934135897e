"""The phantom generator: same seed same bytes, real DICOM with every trap the issue names,
ground truth that matches the image."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from core.errors import ConfigError
from pipelines.medical_ct.config import SynthConfig
from pipelines.medical_ct.data import read_dicom, read_nifti
from pipelines.medical_ct.synth import write_dataset, write_study
from tests.pipelines.medical_ct.conftest import small_cfg


def _bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_study(tmp_path):
    a = write_dataset(small_cfg(out_dir=str(tmp_path / "a"), n_cases=2, seed=7))
    write_dataset(small_cfg(out_dir=str(tmp_path / "b"), n_cases=2, seed=7))
    write_dataset(small_cfg(out_dir=str(tmp_path / "c"), n_cases=2, seed=8))
    ba, bb, bc = (_bytes(tmp_path / k) for k in "abc")
    assert ba == bb
    assert len(ba) > 30
    differ = [k for k in ba if k.endswith("mask.nii.gz") and bc.get(k) != ba[k]]
    assert differ, "another seed must give other studies"
    assert len({s.series_uid for s in a}) == 2


def test_rewriting_a_study_replaces_it_whole(tmp_path):
    write_study(small_cfg(seed=1, thickness_mm=(1.25,)), 0, tmp_path / "s")
    n_before = len(list((tmp_path / "s").rglob("*")))
    write_study(small_cfg(seed=1, thickness_mm=(2.5,)), 0, tmp_path / "s")  # other slice count
    vol = read_dicom(tmp_path / "s" / "dicom")  # no stale slice of the first one
    assert vol.spacing[0] == pytest.approx(2.5)
    assert len(list((tmp_path / "s").rglob("*"))) < n_before
    assert not list(tmp_path.glob(".tmp-*"))


def test_study_holds_real_ct_and_truth_that_fits_the_image(study):
    files = [p for p in (study.folder / "dicom").rglob("*") if p.is_file()]
    cts = [pydicom.dcmread(p) for p in files]
    cts = [d for d in cts if "LOCALIZER" not in d.ImageType]
    d0 = cts[0]
    assert d0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    for kw in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleIntercept",
        "RescaleSlope",
        "Rows",
    ):
        assert kw in d0, kw
    # InstanceNumber and file names do not follow position in every layout; position does
    z = [float(d.ImagePositionPatient[2]) for d in cts]
    assert len(set(z)) == len(cts)
    vol = read_dicom(study.folder / "dicom")
    mask = read_nifti(study.folder / "mask.nii.gz").array
    truth = json.loads((study.folder / "nodules.json").read_text())["nodules"]
    lung = vol.array[(vol.array > -950) & (vol.array < -700)]
    assert lung.size > 1000  # a lung around -850 HU is there
    for t in truth:
        m = mask == t["id"]
        voxel_mm3 = float(np.prod(vol.spacing))
        # the label map's volume agrees with the recorded true volume (voxelisation aside)
        assert m.sum() * voxel_mm3 == pytest.approx(t["volume_mm3"], rel=0.35)
        assert t["diameter_mm"] == pytest.approx((6 * t["volume_mm3"] / np.pi) ** (1 / 3), rel=1e-3)
        expect = {"ground_glass": (-800, -300), "calcified": (-500, 1500)}.get(
            t["type"], (-700, 200)
        )
        assert expect[0] < t["mean_hu"] < expect[1], t


def test_config_refuses_impossible_values():
    with pytest.raises(ConfigError, match="fewer than 8 slices"):
        SynthConfig(z_extent_mm=5.0)
    with pytest.raises(ConfigError, match="type_weights needs 4"):
        SynthConfig(type_weights=(1.0, 1.0))
