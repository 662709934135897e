"""Reading CT studies as they come from scanners and PACS exports: a folder of DICOM files
(any depth, any file names) or a NIfTI file, to one :class:`Volume`.

A :class:`Volume` is ``(D, H, W)`` float32 Hounsfield units with spacing ``(z, y, x)`` in mm,
the patient-space (DICOM LPS, mm) position of voxel ``[0, 0, 0]`` as ``origin``, and a 3x3
``direction`` whose columns are the LPS unit vectors of the column (x), row (y) and slice (z)
index axes, the convention of ITK/SimpleITK (whose ``ImageSeriesReader`` this module matches,
tested). Its ``meta`` holds the few de-identified header fields a report needs, never a
patient-identifying one (:data:`PHI_KEYWORDS`).

Reading a folder is two passes. :func:`index_folder` reads headers only
(``stop_before_pixels``), groups files by ``SeriesInstanceUID`` (two series are never merged)
and counts what it skipped (non-DICOM files, DICOMDIR, empty files). :func:`choose_series`
picks the axial CT series by a stated rule: Modality CT, CT Image Storage, ImageType ORIGINAL
and not a localizer, one orientation, axial, enough slices; then the most slices (a tie is an
error that asks for ``series_uid``). Every other series gets the reason it was passed over.
:func:`load_series` orders slices by ``ImagePositionPatient`` projected on the slice normal
(never by ``InstanceNumber`` or file name), checks the spacing (a missing slice, a duplicate
position or a changing orientation is an error naming the files), keeps a gantry tilt as a
sheared direction, converts to HU in float64 (no integer overflow) and sets
``PixelPaddingValue`` voxels (or the ``PixelPaddingRangeLimit`` range) to air; after lossy
compression the padding is smeared and only exact values are caught. Compressed transfer syntaxes decode through the handlers
pydicom finds (pylibjpeg, gdcm, Pillow); without one, the error names the syntax and what to
install. Not here: resampling to a training spacing and HU windowing (``train.py``),
de-identification of files (``anonymize.py``), phantom generation (``synth.py``).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from pipelines.medical_ct.config import IngestConfig

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"  # DICOMDIR
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
STRUCTURED_REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88"
AIR_HU = -1024.0  # what PixelPaddingValue voxels become
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # a file so named is meant to be DICOM

# Tags that identify a patient: never in a log line, an error, a report or a response.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)
# Header fields a report may carry (none identifies the patient).
META_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "SeriesDescription",
    "BodyPartExamined",
)
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelPaddingValue",
    "SamplesPerPixel",
    "MediaStorageSOPClassUID",
    *META_KEYWORDS,
]
_PIXEL_TAGS = [  # what the pixel pass needs (the header pass read the rest)
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PixelData",
]
_JPEG = "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm, or Pillow"
_JPEG_LOSSLESS = "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm"
_JPEG_LS = "pyjpegls, or pylibjpeg + pylibjpeg-libjpeg, or python-gdcm"
_J2K = "pylibjpeg + pylibjpeg-openjpeg, or python-gdcm, or Pillow"
_CODECS = {  # transfer syntax UID -> what decodes it
    "1.2.840.10008.1.2.4.50": _JPEG,
    "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG_LOSSLESS,
    "1.2.840.10008.1.2.4.70": _JPEG_LOSSLESS,
    "1.2.840.10008.1.2.4.80": _JPEG_LS,
    "1.2.840.10008.1.2.4.81": _JPEG_LS,
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
}


# ----------------------------------------------------------------------------------- Volume
@dataclass
class Volume:
    """One CT volume: ``array`` ``(D, H, W)`` float32 HU; ``spacing`` ``(z, y, x)`` mm;
    ``origin`` LPS mm of voxel ``[0, 0, 0]``; ``direction`` 3x3, columns = LPS unit vectors of
    the x, y, z index axes (orthonormal unless the stack is gantry-tilted)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source_files: tuple[str, ...] = ()  # the DICOM file of each slice, in array order

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise DataError(f"a volume is (D, H, W); got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if min(self.spacing) <= 0:
            raise DataError(f"spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from index ``(x, y, z, 1)`` (column, row, slice) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.array(self.spacing[::-1])[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_patient(self, zyx: Iterable[float] | np.ndarray) -> np.ndarray:
        """Voxel index ``(z, y, x)`` (fractional allowed; ``(N, 3)`` too) -> LPS mm ``(x, y, z)``."""
        p = np.atleast_2d(np.asarray(zyx, dtype=np.float64))[:, ::-1]
        out = p @ self.affine[:3, :3].T + self.affine[:3, 3]
        return out[0] if np.ndim(zyx) == 1 else out

    def patient_to_index(self, xyz: Iterable[float] | np.ndarray) -> np.ndarray:
        """LPS mm ``(x, y, z)`` -> fractional voxel index ``(z, y, x)``."""
        p = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        out = np.linalg.solve(self.affine[:3, :3], (p - self.affine[:3, 3]).T).T[:, ::-1]
        return out[0] if np.ndim(xyz) == 1 else out


# ------------------------------------------------------------------------------- indexing
@dataclass
class SliceHeader:
    """What the header pass learns about one image file."""

    path: Path
    sop_uid: str
    series_uid: str
    sop_class: str
    modality: str
    image_type: tuple[str, ...]
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    cols: int
    frames: int
    instance: int | None
    series_number: int | None
    meta: dict[str, Any]


@dataclass
class SeriesInfo:
    """One series of a folder: its files and whether the rule chose it (and why not)."""

    uid: str
    slices: list[SliceHeader]
    chosen: bool = False
    reason: str = ""  # why it was passed over ("" for the chosen one)

    @property
    def modality(self) -> str:
        return self.slices[0].modality

    @property
    def description(self) -> str:
        return str(self.slices[0].meta.get("SeriesDescription", ""))

    @property
    def n_slices(self) -> int:
        return sum(s.frames for s in self.slices)

    def row(self) -> dict[str, Any]:
        """A line of ``medical-ct ingest --list`` (no patient-identifying field)."""
        s = self.slices[0]
        return {
            "series_uid": self.uid,
            "number": s.series_number,
            "modality": self.modality,
            "description": self.description,
            "images": self.n_slices,
            "size": f"{s.rows}x{s.cols}",
            "thickness_mm": s.meta.get("SliceThickness"),
            "status": "chosen" if self.chosen else "skipped",
            "reason": self.reason,
        }


@dataclass
class FolderIndex:
    """The series of a folder, and the files that were not images of any series."""

    root: Path
    series: list[SeriesInfo]
    skipped_files: dict[str, list[Path]]  # reason -> files
    n_files: int

    def skipped_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.skipped_files.items())}


def is_dicom_file(path: Path, size: int) -> bool:
    """A Part-10 file (``DICM`` at byte 128) or a preamble-less one that opens with a group
    0x0008 tag (old exports write those)."""
    with path.open("rb") as f:
        head = f.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return (
        size >= 8
        and head[:2] == b"\x08\x00"
        and head[2:4] in (b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00")
    )


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> SliceHeader | str:
    """The header of one file, or the reason it is no image of a series (``"DICOMDIR"``,
    ``"not an image (no SeriesInstanceUID)"``...). A file that starts as DICOM but cannot be
    parsed raises :class:`DataError` naming it."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # pydicom raises many kinds on a truncated or garbled header
        raise DataError(
            f"truncated or corrupt DICOM file ({type(exc).__name__})",
            where=str(path),
            fix="re-export the series, or skip such files with skip_corrupt",
        ) from exc
    fm = getattr(ds, "file_meta", None)
    media = str(getattr(fm, "MediaStorageSOPClassUID", "") or "")
    if media == MEDIA_DIRECTORY_STORAGE or path.name.upper() == "DICOMDIR":
        return "DICOMDIR"
    series = str(ds.get("SeriesInstanceUID", "") or "")
    if not series:
        return "not an image (no SeriesInstanceUID)"
    sop_class = str(ds.get("SOPClassUID", "") or media)
    meta = {}
    for k in META_KEYWORDS:
        v = ds.get(k)
        if v is None or v == "":
            continue
        try:
            meta[k] = float(v) if k in ("KVP", "SliceThickness") else str(v)
        except (TypeError, ValueError):
            meta[k] = str(v)
    ps = _floats(ds.get("PixelSpacing"), 2)
    return SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_uid=series,
        sop_class=sop_class,
        modality=str(ds.get("Modality", "") or ""),
        image_type=tuple(str(x).strip().upper() for x in (ds.get("ImageType") or ())),
        iop=_floats(ds.get("ImageOrientationPatient"), 6),
        ipp=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        pixel_spacing=ps,  # type: ignore[arg-type]
        rows=_int(ds.get("Rows")) or 0,
        cols=_int(ds.get("Columns")) or 0,
        frames=_int(ds.get("NumberOfFrames")) or 1,
        instance=_int(ds.get("InstanceNumber")),
        series_number=_int(ds.get("SeriesNumber")),
        meta=meta,
    )


def index_folder(root: str | os.PathLike[str], cfg: IngestConfig | None = None) -> FolderIndex:
    """Headers of every DICOM file under ``root`` (any depth, with or without ``.dcm``),
    grouped by series. Raises :class:`DataError` when the folder is missing, too large, or holds
    no DICOM image."""
    cfg = cfg or IngestConfig()
    root = Path(root)
    if not root.exists():
        raise DataError("no such folder", where=str(root), fix="pass the folder of a DICOM series")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    if len(paths) > cfg.max_files:
        raise DataError(
            f"{len(paths)} files exceed the limit of {cfg.max_files}",
            where=str(root),
            fix="point at one study's folder, or raise max_files",
        )
    skipped: dict[str, list[Path]] = defaultdict(list)
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for p in paths:
        size = p.stat().st_size
        bad = (
            ("empty file", "zero-byte DICOM file (an interrupted copy?)", "copy the series again")
            if size == 0
            else (
                "not DICOM",
                "file named as DICOM is not DICOM (no 'DICM' marker)",
                "re-export it",
            )
            if not is_dicom_file(p, size)
            else None
        )
        if bad:  # a file named .dcm that is not DICOM is an error; any other is skipped
            if p.suffix.lower() in DICOM_SUFFIXES and not cfg.skip_corrupt:
                raise DataError(
                    bad[1], where=str(p), fix=f"{bad[2]}, or skip such files with skip_corrupt"
                )
            skipped[bad[0]].append(p)
            continue
        try:
            h = read_header(p)
        except DataError:
            if not cfg.skip_corrupt:
                raise
            skipped["corrupt DICOM"].append(p)
            continue
        if isinstance(h, str):
            skipped[h].append(p)
        else:
            by_series[h.series_uid].append(h)
    if not by_series:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(skipped.items())) or "no files"
        raise DataError(
            f"no DICOM image found ({counts})",
            where=str(root),
            fix="pass the folder that holds the CT series' .dcm files",
        )
    series = [SeriesInfo(uid, sl) for uid, sl in by_series.items()]
    series.sort(key=lambda s: (s.slices[0].series_number or 0, s.uid))
    return FolderIndex(root, series, dict(skipped), len(paths))


# ----------------------------------------------------------------------------- the rule
def _normal(iop: tuple[float, ...]) -> np.ndarray:
    r, c = np.array(iop[:3]), np.array(iop[3:])
    n = np.cross(r, c)
    return n / (np.linalg.norm(n) or 1.0)


def _ineligible(s: SeriesInfo, cfg: IngestConfig) -> str:
    """Why a series is not the axial CT series ('' when it may be)."""
    h = s.slices[0]
    if h.modality != "CT":
        return f"other modality ({h.modality or 'none'})"
    if h.sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    if h.sop_class.startswith(STRUCTURED_REPORT_PREFIX) or "DOSE" in " ".join(h.image_type):
        return "dose report"
    if any(t in ("LOCALIZER", "SCOUT") for t in h.image_type):
        return "scout/localizer"
    if h.sop_class == ENHANCED_CT_STORAGE:
        return "enhanced (multi-frame) CT is not read; export as CT Image Storage"
    if h.sop_class and h.sop_class != CT_IMAGE_STORAGE:
        return f"not CT Image Storage (SOP class {h.sop_class})"
    if h.image_type and h.image_type[0] != "ORIGINAL":
        return f"derived image (ImageType {'/'.join(h.image_type[:3])})"
    missing = [
        f"{k} in {x.path.name}"
        for x in s.slices
        for k, v in (
            ("ImageOrientationPatient", x.iop),
            ("ImagePositionPatient", x.ipp),
            ("PixelSpacing", x.pixel_spacing),
        )
        if v is None
    ]
    if missing:
        return f"no patient geometry ({missing[0]})"
    iop0 = np.array(h.iop)
    for x in s.slices:
        if np.abs(np.array(x.iop) - iop0).max() > 1e-4:
            return f"orientation changes within the series (at {x.path.name})"
    if abs(_normal(h.iop)[2]) < np.cos(np.deg2rad(45)):  # type: ignore[arg-type]
        return "not axial (a sagittal or coronal stack)"
    if s.n_slices < cfg.min_slices:
        return f"too few images ({s.n_slices} < {cfg.min_slices})"
    return ""


def choose_series(index: FolderIndex, cfg: IngestConfig | None = None) -> SeriesInfo:
    """The axial CT series of ``index`` by the rule in the module docstring, or the one named
    by ``cfg.series_uid``; every series gets ``chosen``/``reason`` set."""
    cfg = cfg or IngestConfig()
    for s in index.series:
        s.chosen, s.reason = False, _ineligible(s, cfg)
    if cfg.series_uid:
        named = [s for s in index.series if s.uid == cfg.series_uid]
        if not named:
            raise DataError(
                f"series {cfg.series_uid} is not in the folder",
                where=str(index.root),
                fix="list the series with `medical-ct ingest --list`",
            )
        pick = named[0]
        if pick.reason.startswith(("orientation", "no patient geometry", "other modality")):
            raise DataError(
                f"series {pick.uid} cannot be read: {pick.reason}", where=str(index.root)
            )
        for s in index.series:
            if s is not pick:
                s.reason = s.reason or "another series was named (series_uid)"
    else:
        ok = [s for s in index.series if not s.reason]
        if not ok:
            why = "; ".join(f"{s.uid}: {s.reason}" for s in index.series)
            raise DataError(
                f"no axial CT series among {len(index.series)} series ({why})",
                where=str(index.root),
                fix="pass a folder with an axial CT series, or name one with series_uid",
            )
        top = max(s.n_slices for s in ok)
        best = [s for s in ok if s.n_slices == top]
        if len(best) > 1:
            raise DataError(
                f"{len(best)} axial CT series with {top} images each: "
                + ", ".join(f"{s.uid} ({s.description or 'no description'})" for s in best),
                where=str(index.root),
                fix="name one with --series UID (see `medical-ct ingest --list`)",
            )
        pick = best[0]
        for s in ok:
            if s is not pick:
                s.reason = f"another axial CT series has more images ({s.n_slices} < {top})"
    pick.chosen, pick.reason = True, ""
    return pick


# ---------------------------------------------------------------------------- loading
def _decoder_error(path: Path, ds: Any, exc: Exception) -> DataError:
    ts = ds.file_meta.TransferSyntaxUID
    if getattr(ts, "is_compressed", False):
        need = _CODECS.get(str(ts), "a pixel-data plugin that pydicom supports for it")
        return DataError(
            f"cannot decode compressed pixel data ({ts.name}, {ts})",
            where=str(path),
            fix=f"install {need}",
        )
    return DataError(f"unreadable pixel data ({exc})", where=str(path), fix="re-export the series")


def _pixels(h: SliceHeader) -> tuple[np.ndarray, float, float, tuple[float, float] | None]:
    import pydicom

    try:
        ds = pydicom.dcmread(h.path, force=True, specific_tags=_PIXEL_TAGS)
    except Exception as exc:  # truncated after the header pass read it
        raise DataError(
            f"truncated or corrupt DICOM file ({type(exc).__name__})", where=str(h.path)
        ) from exc
    if "PixelData" not in ds:
        raise DataError(
            "no pixel data in an image of the series", where=str(h.path), fix="re-export the series"
        )
    try:
        a = ds.pixel_array
    except Exception as exc:
        raise _decoder_error(h.path, ds, exc) from exc
    if a.shape != (h.rows, h.cols):
        raise DataError(
            f"pixel array has shape {a.shape}, header says {h.rows}x{h.cols} (one grayscale frame)",
            where=str(h.path),
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return a, slope, intercept, None
    limit = ds.get("PixelPaddingRangeLimit", pad)  # padding may be a range of stored values
    return a, slope, intercept, (float(min(pad, limit)), float(max(pad, limit)))


def _order(slices: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray]:
    n = _normal(slices[0].iop)  # type: ignore[arg-type]
    proj = np.array([np.dot(n, s.ipp) for s in slices])  # type: ignore[arg-type]
    order = np.argsort(proj, kind="stable")
    return [slices[i] for i in order], proj[order]


def load_series(series: SeriesInfo, cfg: IngestConfig | None = None) -> Volume:
    """The volume of one series: ordered, checked, in HU."""
    cfg = cfg or IngestConfig()
    sl = series.slices
    h0 = sl[0]
    if any(s.frames != 1 for s in sl):
        raise DataError(
            "multi-frame images are not read", where=str(h0.path), fix="export single-frame CT"
        )
    if any((s.rows, s.cols, s.pixel_spacing) != (h0.rows, h0.cols, h0.pixel_spacing) for s in sl):
        odd = next(
            s
            for s in sl
            if (s.rows, s.cols, s.pixel_spacing) != (h0.rows, h0.cols, h0.pixel_spacing)
        )
        raise DataError(
            "slices of one series differ in size or pixel spacing",
            where=f"{h0.path.name} vs {odd.path.name}",
        )
    if len(sl) * h0.rows * h0.cols > cfg.max_voxels:
        raise DataError(
            f"volume of {len(sl)}x{h0.rows}x{h0.cols} voxels exceeds the limit of {cfg.max_voxels}",
            where=str(h0.path.parent),
            fix="raise max_voxels if the machine has the memory",
        )
    reason = _ineligible(series, IngestConfig(min_slices=2))
    if reason.startswith(("orientation", "no patient geometry")):
        raise DataError(f"series cannot be read: {reason}", where=str(h0.path.parent))
    sl, proj = _order(sl)
    gaps = np.diff(proj)
    for i, g in enumerate(gaps):
        if g < 1e-3:
            raise DataError(
                f"two images share the slice position {proj[i]:.3f} mm",
                where=f"{sl[i].path} and {sl[i + 1].path}",
                fix="remove the duplicate file (or the second series mixed into this folder)",
            )
    step = float(np.median(gaps)) if len(gaps) else float(h0.meta.get("SliceThickness", 1.0))
    bad = np.abs(gaps - step) > cfg.spacing_tolerance * step
    resampled: list[dict[str, Any]] = []
    if bad.any():
        i = int(np.argmax(bad))
        missing = round(gaps[i] / step) - 1
        if missing >= 1 and np.all(np.abs(gaps[bad] / step - np.round(gaps[bad] / step)) < 0.25):
            if not cfg.resample_gaps:
                raise DataError(
                    f"{missing} slice(s) missing: {gaps[i]:.3f} mm between positions {proj[i]:.3f} "
                    f"and {proj[i + 1]:.3f} (spacing {step:.3f} mm)",
                    where=f"between {sl[i].path.name} and {sl[i + 1].path.name} in {h0.path.parent}",
                    fix="re-export the complete series, or interpolate with resample_gaps",
                )
            resampled = [
                {"after_mm": float(proj[j]), "missing": round(gaps[j] / step) - 1}
                for j in np.flatnonzero(bad)
            ]
        else:
            raise DataError(
                f"non-uniform slice spacing: {gaps[i]:.3f} mm where the median is {step:.3f} mm",
                where=f"between {sl[i].path.name} and {sl[i + 1].path.name} in {h0.path.parent}",
                fix="re-export a uniformly spaced series",
            )
    planes = []
    for s in sl:
        a, slope, intercept, pad = _pixels(s)
        hu = a.astype(np.float64) * slope + intercept
        if pad is not None:
            hu[(a >= pad[0]) & (a <= pad[1])] = AIR_HU
        planes.append(hu.astype(np.float32))
    arr = np.stack(planes)
    iop = np.array(h0.iop)
    row, col = iop[:3], iop[3:]
    normal = _normal(h0.iop)  # type: ignore[arg-type]
    first, last = np.array(sl[0].ipp), np.array(sl[-1].ipp)
    stack = (last - first) / max(len(sl) - 1, 1)
    tilt = np.linalg.norm(np.cross(stack / (np.linalg.norm(stack) or 1.0), normal)) > 1e-4
    if resampled:
        arr = _fill_gaps(arr, proj, step)
        stack = normal * step
    dz = float(np.linalg.norm(stack)) if len(sl) > 1 else step
    zdir = stack / dz if (tilt and len(sl) > 1) else normal
    direction = np.stack([row, col, zdir], axis=1)
    meta = dict(h0.meta)
    meta["n_files"] = len(series.slices)
    if resampled:
        meta["resampled_gaps"] = resampled
        log.warning(
            "series %s: interpolated %d missing slice(s)",
            series.uid,
            sum(r["missing"] for r in resampled),
        )
    if tilt:
        meta["gantry_tilt_deg"] = float(np.degrees(np.arccos(min(1.0, abs(np.dot(zdir, normal))))))
    ps = h0.pixel_spacing
    return Volume(
        array=arr,
        spacing=(dz if tilt else step, ps[0], ps[1]),  # type: ignore[index]
        origin=tuple(first),  # type: ignore[arg-type]
        direction=direction,
        series_uid=series.uid,
        meta=meta,
        source_files=() if resampled else tuple(str(s.path) for s in sl),
    )


def _fill_gaps(arr: np.ndarray, proj: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation onto the uniform grid ``proj[0] + k * step``."""
    n = round((proj[-1] - proj[0]) / step) + 1
    z = proj[0] + step * np.arange(n)
    j = np.clip(np.searchsorted(proj, z, side="right") - 1, 0, len(proj) - 2)
    w = ((z - proj[j]) / (proj[j + 1] - proj[j])).astype(np.float32)[:, None, None]
    return (arr[j] * (1 - w) + arr[j + 1] * w).astype(np.float32)


def read_dicom(root: str | os.PathLike[str], cfg: IngestConfig | None = None) -> Volume:
    """The axial CT volume of a folder (index, choose, load)."""
    cfg = cfg or IngestConfig()
    index = index_folder(root, cfg)
    series = choose_series(index, cfg)
    vol = load_series(series, cfg)
    vol.meta["skipped_series"] = [s.row() for s in index.series if not s.chosen]
    vol.meta["skipped_files"] = index.skipped_counts()
    return vol


# ----------------------------------------------------------------------------- NIfTI
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_nifti(vol: Volume, path: str | os.PathLike[str], array: np.ndarray | None = None) -> Path:
    """``vol`` (or ``array``, e.g. a mask, on ``vol``'s grid) as NIfTI-1 with the same
    geometry (NIfTI stores RAS; the affine is converted). Written atomically."""
    import nibabel as nib

    from core.atomic import atomic_file

    a = vol.array if array is None else np.asarray(array)
    if a.shape != vol.shape:
        raise DataError(f"array of shape {a.shape} is not on the volume's grid {vol.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(a.transpose(2, 1, 0)), _LPS_RAS @ vol.affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))
    return path


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """A NIfTI file (``.nii`` / ``.nii.gz``) as a :class:`Volume` in LPS."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(
            f"unreadable NIfTI file ({type(exc).__name__}: {exc})", where=str(path)
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"a CT volume is 3-D; the file holds shape {data.shape}", where=str(path))
    a = _LPS_RAS @ img.affine
    m = a[:3, :3]
    sp = np.linalg.norm(m, axis=0)
    if np.any(sp <= 0) or not np.all(np.isfinite(a)):
        raise DataError("degenerate affine (zero spacing or non-finite)", where=str(path))
    arr = np.ascontiguousarray(data.transpose(2, 1, 0)).astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError("the volume holds NaN or infinite values", where=str(path))
    return Volume(
        arr, (sp[2], sp[1], sp[0]), tuple(a[:3, 3]), m / sp[None, :], meta={"source": "nifti"}
    )
