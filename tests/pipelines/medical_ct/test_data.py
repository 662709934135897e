"""DICOM ingestion: series choice, slice order, geometry (parity with SimpleITK), HU, and
every kind of bad folder the issue names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from core.errors import DataError
from pipelines.medical_ct.config import IngestConfig
from pipelines.medical_ct.data import (
    PHI_KEYWORDS,
    Volume,
    index_folder,
    read_dicom,
    read_nifti,
    write_nifti,
)
from pipelines.medical_ct.synth import render_study
from tests.pipelines.medical_ct.conftest import ramp, series, small_cfg

OBLIQUE = (0.9659258, 0.2588190, 0.0, -0.2241439, 0.8365163, 0.5)  # 15 deg in-plane, 30 deg tilt


def sitk_read(folder, uid: str | None = None, orthogonal: bool = True) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    ids = r.GetGDCMSeriesIDs(str(folder))
    files = r.GetGDCMSeriesFileNames(str(folder), uid or ids[0])
    r.SetFileNames(files)
    if not orthogonal:
        r.ForceOrthogonalDirectionOff()
    return r.Execute()


def assert_same_as_sitk(vol: Volume, img: sitk.Image) -> None:
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(img), atol=1e-3)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], rtol=1e-5)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.array(img.GetDirection()).reshape(3, 3), atol=1e-5)


# ------------------------------------------------------------------------ geometry parity
@pytest.mark.parametrize(
    "case",
    [
        "axial",
        "oblique",
        "reversed",
        "shuffled_instances",
        "non_square",
        "tilted",
        "uint12",
        "half_slope",
    ],
)
def test_volume_equals_simpleitk(tmp_path, case):
    kw: dict = {}
    if case == "oblique":
        kw["iop"] = OBLIQUE
    if case == "non_square":
        kw["spacing"] = (0.7, 0.95)
    if case == "tilted":
        kw["tilt"] = 12.0
    if case == "uint12":
        kw["encoding"] = "uint12"
    if case == "half_slope":
        kw["encoding"] = "uint16_half"
    if case == "reversed":  # file 1 / instance 1 is the top slice
        hu = ramp()
        pos = np.array([-10.0, -12.0, -50.0]) + np.arange(10)[::-1, None] * [0, 0, 2.0]
        kw["positions"] = pos
        kw["hu"] = hu
    if case == "shuffled_instances":
        kw["instance_numbers"] = list(np.random.default_rng(1).permutation(10) + 1)
        kw["file_names"] = [f"x{n}" for n in np.random.default_rng(2).permutation(10)]
    hu, _ = series(tmp_path, **kw)
    vol = read_dicom(tmp_path, IngestConfig(min_slices=2))
    assert_same_as_sitk(vol, sitk_read(tmp_path, orthogonal=case != "tilted"))
    if case == "reversed":  # ordered by position: the array's first slice is the lowest
        np.testing.assert_allclose(vol.array, hu[::-1], atol=1e-3)
    elif case == "half_slope":
        np.testing.assert_allclose(vol.array, hu, atol=0.26)
    else:
        np.testing.assert_allclose(vol.array, hu, atol=1e-3)
    if case == "tilted":
        assert vol.meta["gantry_tilt_deg"] == pytest.approx(12.0, abs=0.01)
        # the true slice-stacking direction is kept: index -> patient maps each slice's origin
        pos = [pydicom.dcmread(p).ImagePositionPatient for p in sorted(tmp_path.iterdir())]
        np.testing.assert_allclose(
            vol.index_to_patient([9, 0, 0]), np.array(pos[9], float), atol=1e-4
        )


def test_phantom_study_reads_like_simpleitk_and_matches_its_ground_truth(study):
    vol = read_dicom(study.folder / "dicom")
    assert vol.series_uid == study.series_uid
    skipped = {s["description"]: s["reason"] for s in vol.meta["skipped_series"]}
    assert skipped == {"SCOUT": "scout/localizer"}
    img = sitk_read(study.folder / "dicom", study.series_uid)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], rtol=1e-5)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    ref = sitk.GetArrayFromImage(img).astype(np.float32)
    pad = study.scanner["encoding"] in ("int16", "int16_zero")
    if pad:  # SimpleITK does not honour PixelPaddingValue; we set those voxels to air
        ref[ref < -2000] = -1024
    np.testing.assert_allclose(vol.array, ref, atol=1e-3)
    mask = read_nifti(study.folder / "mask.nii.gz")
    assert mask.shape == vol.shape
    np.testing.assert_allclose(mask.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(mask.spacing, vol.spacing, rtol=1e-5)
    rendered, labels, nodules, _ = render_study(small_cfg(seed=3), 0)
    inside = vol.array > -1024  # inside the reconstruction circle
    np.testing.assert_allclose(vol.array[inside], rendered.array[inside], atol=0.51)
    np.testing.assert_array_equal(mask.array.astype(np.uint8), labels)
    truth = json.loads((study.folder / "nodules.json").read_text())["nodules"]
    assert len(truth) == len(nodules) >= 1
    for t in truth:  # the recorded centre lies on its own label
        z, y, x = np.round(t["centre_voxel"]).astype(int)
        assert labels[z, y, x] == t["id"]
        # IPP and spacing are written with 6 decimals
        np.testing.assert_allclose(
            vol.index_to_patient(t["centre_voxel"]), t["centre_mm"], atol=1e-3
        )


def test_real_ct_slices_from_pydicom(tmp_path):
    """pydicom's CT_small.dcm (a real scanner's slice): alone, and as a series of copies."""
    src = get_testdata_file("CT_small.dcm")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(src, one / "CT_small.dcm")
    vol = read_dicom(one, IngestConfig(min_slices=1))
    img = sitk.ReadImage(src)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(img), atol=1e-3)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    assert vol.spacing[1:] == pytest.approx(img.GetSpacing()[1::-1])
    ds = pydicom.dcmread(src)
    stack = tmp_path / "stack"
    stack.mkdir()
    for k in range(9):
        ds.ImagePositionPatient = [
            ds.ImagePositionPatient[0],
            ds.ImagePositionPatient[1],
            -75.7 + 5.0 * k,
        ]
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["ct_small", str(k)])
        ds.save_as(stack / f"slice{(k * 7) % 9}")  # names do not follow position
    vol = read_dicom(stack)
    assert_same_as_sitk(vol, sitk_read(stack))
    assert vol.shape == (9, 128, 128)


def test_nifti_roundtrip_and_simpleitk_agree(tmp_path):
    series(tmp_path / "d", iop=OBLIQUE, spacing=(0.7, 0.9))
    vol = read_dicom(tmp_path / "d", IngestConfig(min_slices=2))
    p = write_nifti(vol, tmp_path / "v.nii.gz")
    back = read_nifti(p)
    np.testing.assert_allclose(back.array, vol.array)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    img = sitk.ReadImage(str(p))  # SimpleITK reads NIfTI into LPS like DICOM
    np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), vol.direction, atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-3)
    assert not list(tmp_path.glob(".tmp-*"))


def test_rle_compressed_series_decodes(tmp_path):
    hu, paths = series(tmp_path)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(p)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    np.testing.assert_allclose(
        read_dicom(tmp_path, IngestConfig(min_slices=2)).array, hu, atol=1e-3
    )


# ---------------------------------------------------------------------------- the rule
def test_pacs_export_with_dicomdir_and_other_series(tmp_path):
    from pydicom.fileset import FileSet

    src = tmp_path / "src"
    hu, _ = series(src / "ct", series_uid="1.2.3.1", series_number=3)
    series(src / "few", ramp(4), series_uid="1.2.3.2", description="CHEST 5mm")  # fewer slices
    series(src / "mr", series_uid="1.2.3.3", modality="MR")
    series(src / "sc", ramp(1), series_uid="1.2.3.4", image_type=("DERIVED", "SECONDARY"))
    fs = FileSet()
    for p in sorted(src.rglob("*.dcm")):
        fs.add(p)
    out = tmp_path / "export"
    fs.write(out)  # PT000000/ST000000/SE000000/IM000000 and a DICOMDIR, no extensions
    (out / "README.TXT").write_text("burned by PACS")
    cfg = IngestConfig(min_slices=5)
    vol = read_dicom(out, cfg)
    assert vol.series_uid == "1.2.3.1"
    np.testing.assert_allclose(vol.array, hu, atol=1e-3)
    reasons = {s["series_uid"]: s["reason"] for s in vol.meta["skipped_series"]}
    assert reasons["1.2.3.2"].startswith("too few images")
    assert reasons["1.2.3.3"] == "other modality (MR)"
    assert reasons["1.2.3.4"].startswith("derived image")
    assert vol.meta["skipped_files"] == {"DICOMDIR": 1, "not DICOM": 1}
    # never merged: naming the short series reads only its 4 slices
    few = read_dicom(out, IngestConfig(series_uid="1.2.3.2", min_slices=2))
    assert few.shape[0] == 4


def test_two_ct_series_in_one_folder(tmp_path):
    series(tmp_path, ramp(10), series_uid="1.9.1", file_names=[f"a{k}.dcm" for k in range(10)])
    series(
        tmp_path, ramp(10, seed=5), series_uid="1.9.2", file_names=[f"b{k}.dcm" for k in range(10)]
    )
    with pytest.raises(DataError, match=r"2 axial CT series with 10 images.*--series"):
        read_dicom(tmp_path, IngestConfig(min_slices=2))
    v = read_dicom(tmp_path, IngestConfig(series_uid="1.9.2", min_slices=2))
    np.testing.assert_allclose(v.array, ramp(10, seed=5), atol=1e-3)
    with pytest.raises(DataError, match=r"series 1.9.7 is not in the folder"):
        read_dicom(tmp_path, IngestConfig(series_uid="1.9.7"))


def test_list_rows_name_each_series_without_patient_data(study):
    idx = index_folder(study.folder / "dicom")
    from pipelines.medical_ct.data import choose_series

    choose_series(idx)
    rows = [s.row() for s in idx.series]
    assert [r["status"] for r in rows].count("chosen") == 1
    text = json.dumps(rows)
    ds = pydicom.dcmread(next((study.folder / "dicom").rglob("IM00001*")))
    for kw in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName"):
        assert str(ds.get(kw)) not in text
    vol = read_dicom(study.folder / "dicom")
    assert not set(vol.meta) & set(PHI_KEYWORDS)
    assert str(ds.PatientName) not in json.dumps(vol.meta, default=str)


# ------------------------------------------------------------------------- bad folders
def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataError, match=r"no DICOM image found \(2 not DICOM\)"):
        read_dicom(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        read_dicom(tmp_path / "missing")


def test_non_ct_modality(tmp_path):
    series(tmp_path, modality="MR")
    with pytest.raises(DataError, match=r"no axial CT series.*other modality \(MR\)"):
        read_dicom(tmp_path, IngestConfig(min_slices=2))


def test_missing_slice_is_an_error_or_an_announced_interpolation(tmp_path):
    hu, paths = series(tmp_path)
    by_z = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_z[4].unlink()
    with pytest.raises(
        DataError, match=r"1 slice\(s\) missing.*between IM00004.dcm and IM00006.dcm"
    ):
        read_dicom(tmp_path, IngestConfig(min_slices=2))
    vol = read_dicom(tmp_path, IngestConfig(min_slices=2, resample_gaps=True))
    assert vol.shape[0] == 10
    assert vol.meta["resampled_gaps"] == [{"after_mm": -44.0, "missing": 1}]
    np.testing.assert_allclose(vol.array[4], (hu[3] + hu[5]) / 2, atol=1e-3)
    np.testing.assert_allclose(vol.array[[0, 3, 5, 9]], hu[[0, 3, 5, 9]], atol=1e-3)


def test_duplicate_position(tmp_path):
    _, paths = series(tmp_path)
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = "1.2.3.999"
    ds.save_as(tmp_path / "copy_of_4.dcm")
    with pytest.raises(DataError, match=r"share the slice position -44.000 mm"):
        read_dicom(tmp_path, IngestConfig(min_slices=2))


def test_orientation_changing_inside_a_series(tmp_path):
    _, paths = series(tmp_path)
    ds = pydicom.dcmread(paths[6])
    ds.ImageOrientationPatient = list(OBLIQUE)
    ds.save_as(paths[6])
    with pytest.raises(
        DataError, match=r"orientation changes within the series \(at IM00007.dcm\)"
    ):
        read_dicom(tmp_path, IngestConfig(min_slices=2))


def test_missing_pixel_data(tmp_path):
    _, paths = series(tmp_path)
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    with pytest.raises(DataError, match=r"no pixel data.*IM00003.dcm"):
        read_dicom(tmp_path, IngestConfig(min_slices=2))


def test_compressed_syntax_without_decoder_names_syntax_and_package(tmp_path):
    """A real JPEG Lossless (process 14, SV1) codestream from pydicom's test data as the pixels
    of CT slices: no installed plugin decodes that syntax (pylibjpeg-libjpeg and python-gdcm
    are not dependencies)."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.pixels import get_decoder

    if get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here; the error path cannot occur")
    src = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    frame = next(generate_frames(src.PixelData, number_of_frames=1))
    _, paths = series(tmp_path, ramp(8, src.Rows, src.Columns))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.save_as(p, enforce_file_format=True)
    with pytest.raises(
        DataError, match=r"cannot decode compressed pixel data \(JPEG Lossless.*install pylibjpeg"
    ):
        read_dicom(tmp_path, IngestConfig(min_slices=2))


def test_real_jpeg2000_ct_slices_decode_like_simpleitk(tmp_path):
    """pydicom's 693_J2KI.dcm, a real JPEG 2000 CT slice (512x512), decoded by the installed
    plugin (Pillow's OpenJPEG) into a series of copies, equal to SimpleITK/GDCM's decoding."""
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    z0 = float(ds.ImagePositionPatient[2])
    for k in range(8):
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z0 + 2.0 * k]
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["j2k", str(k)])
        ds.save_as(tmp_path / f"{k}.dcm")
    with pytest.raises(DataError, match=r"derived image \(ImageType DERIVED/PRIMARY/AXIAL\)"):
        read_dicom(tmp_path)  # lossy JPEG 2000 is DERIVED: not chosen unless named
    vol = read_dicom(tmp_path, IngestConfig(series_uid=str(ds.SeriesInstanceUID)))
    img = sitk_read(tmp_path)
    ref = sitk.GetArrayFromImage(img).astype(np.float32)
    pad_hu = float(ds.PixelPaddingValue) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert (ref == pad_hu).sum() > 1000  # the real file has padded pixels; they become air
    ref[ref == pad_hu] = -1024
    np.testing.assert_allclose(vol.array, ref, atol=1e-3)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], rtol=1e-5)
    assert vol.shape == (8, 512, 512)


def test_truncated_file(tmp_path):
    _, paths = series(tmp_path)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"IM00006.dcm") as e:
        read_dicom(tmp_path, IngestConfig(min_slices=2))
    assert "truncated" in str(e.value) or "pixel data" in str(e.value)


def test_zero_byte_file(tmp_path):
    hu, _ = series(tmp_path)
    (tmp_path / "IM00011.dcm").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero-byte DICOM file .*at .*IM00011.dcm"):
        read_dicom(tmp_path, IngestConfig(min_slices=2))
    vol = read_dicom(tmp_path, IngestConfig(min_slices=2, skip_corrupt=True))
    assert vol.meta["skipped_files"] == {"empty file": 1}
    np.testing.assert_allclose(vol.array, hu, atol=1e-3)


def test_volume_over_the_size_limit_is_refused_before_pixels_are_read(tmp_path):
    _, paths = series(tmp_path)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData  # would fail if pixels were read first
    ds.save_as(paths[0])
    with pytest.raises(DataError, match=r"10x24x20 voxels exceeds the limit of 4000"):
        read_dicom(tmp_path, IngestConfig(min_slices=2, max_voxels=4000))


def test_errors_name_no_patient_data(tmp_path):
    _, paths = series(tmp_path, patient=("Secret^Person", "MRN-4242", "19450505"))
    ds = pydicom.dcmread(paths[6])
    ds.ImageOrientationPatient = list(OBLIQUE)
    ds.save_as(paths[6])
    with pytest.raises(DataError) as e:
        read_dicom(tmp_path, IngestConfig(min_slices=2))
    for secret in ("Secret", "MRN-4242", "19450505", "Synthetic General Hospital"):
        assert secret not in str(e.value)
