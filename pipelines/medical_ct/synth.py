"""Seeded chest-CT phantoms with exact ground truth, written as real DICOM series.

Each study is a section of a chest: body outline with a fat layer, chest wall muscle, ribs
(descending bone tubes with marrow), spine, heart and mediastinum, trachea and main bronchi,
two lungs around -850 HU with parenchymal texture and a posterior density gradient, branching
vessel trees (the classic false positives), and nodules of four kinds (solid, part-solid,
ground-glass, calcified; 3-30 mm; lobulated; some attached to the pleura or to a vessel). The
scanner varies per study: slice thickness 0.625-2.5 mm, pixel spacing (field of view), noise
(dose), point-spread blur, and the stored-pixel encoding (signed/unsigned, intercept, slope,
``PixelPaddingValue`` outside the reconstruction circle).

A study folder holds the CT series (CT Image Storage, every type-1 attribute, readable by
pydicom, SimpleITK and any viewer) under ``dicom/`` in one of several file layouts (with and
without ``.dcm``, nested, shuffled ``InstanceNumber``), a one-image scout (localizer) beside it
as every PACS export has, ``mask.nii.gz`` (nodule ``k`` labelled ``k`` on the CT grid) and
``nodules.json`` (centre in patient LPS mm and voxels, equivalent-sphere diameter, volume,
type, attachment). Same seed, same bytes. Patient tags hold made-up values, so the
de-identification can be tested on them.

:func:`write_series` (any geometry: oblique, tilted, reversed, non-square pixels) is also what
the tests use to build the traps. Not here: reading (``data.py``), training patches
(``train.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipelines.medical_ct.config import NODULE_TYPES, SynthConfig
from pipelines.medical_ct.data import Volume, write_nifti

log = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root: UIDs derived from the seed
AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ENCODINGS = {  # name -> (pixel representation, intercept, slope, bits stored, padding value)
    "int16": (1, -1024.0, 1.0, 16, -2000),
    "uint12": (0, -1024.0, 1.0, 12, None),
    "int16_zero": (1, 0.0, 1.0, 16, -3024),
    "uint16_half": (0, -1024.0, 0.5, 16, None),
}
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 45.0,
    "blood": 40.0,
    "bone": 700.0,
    "marrow": 220.0,
    "lung": -850.0,
    "heart": 40.0,
}


def uid(*parts: Any) -> str:
    """A valid DICOM UID fixed by ``parts`` (same parts, same UID)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return UID_ROOT + str(int.from_bytes(h[:16], "big"))[:30]


# ------------------------------------------------------------------------------ DICOM out
@dataclass
class SeriesSpec:
    """Geometry and encoding of one written series."""

    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x) mm
    positions: np.ndarray  # (D, 3) ImagePositionPatient per slice, LPS mm
    iop: tuple[float, ...] = AXIAL_IOP  # row direction cosines, then column direction cosines
    thickness: float = 1.0  # SliceThickness, mm
    encoding: str = "int16"  # a key of ENCODINGS
    series_uid: str = ""
    study_uid: str = ""
    frame_uid: str = ""
    series_number: int = 2
    description: str = "CHEST 1.0 LUNG"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    modality: str = "CT"
    instance_numbers: Sequence[int] | None = None  # default 1..D in position order
    file_names: Sequence[str] | None = None  # default IM00001.dcm...
    kvp: float = 120.0
    kernel: str = "LUNG"
    patient: tuple[str, str, str] = ("Doe^Jane", "PID-000001", "19600101")  # name, ID, birth


def _stored(hu: np.ndarray, encoding: str, outside: np.ndarray | None) -> np.ndarray:
    rep, intercept, slope, bits, pad = ENCODINGS[encoding]
    s = np.rint((hu.astype(np.float64) - intercept) / slope)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if rep else (0, 2**bits - 1)
    s = np.clip(s, lo, hi)
    if outside is not None and pad is not None:
        s[outside] = pad
    return s.astype(np.int16 if rep else np.uint16)


def write_series(
    hu: np.ndarray,
    spec: SeriesSpec,
    out_dir: str | Path,
    outside: np.ndarray | None = None,
    study: dict[str, str] | None = None,
) -> list[Path]:
    """Slices ``hu[k]`` (``(D, H, W)`` HU) as CT Image Storage files at ``spec.positions[k]``;
    ``outside``: ``(H, W)`` pixels outside the reconstruction circle (padded when the
    encoding has a ``PixelPaddingValue``). Returns the written paths."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d, rows, cols = hu.shape
    rep, intercept, slope, bits, pad = ENCODINGS[spec.encoding]
    study = study or {}
    inst = list(spec.instance_numbers or range(1, d + 1))
    names = list(spec.file_names or [f"IM{k + 1:05d}.dcm" for k in range(d)])
    series_uid = spec.series_uid or uid("series", spec.description, d, rows)
    paths = []
    for k in range(d):
        sop = generate_uid(UID_ROOT, entropy_srcs=[series_uid, str(k)])
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        fm.MediaStorageSOPInstanceUID = sop
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = UID_ROOT + "1"
        fm.ImplementationVersionName = "DV_SYNTH_1"
        ds = Dataset()
        ds.file_meta = fm
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(spec.image_type)
        ds.SOPClassUID = fm.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.get("date", "20260115")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = study.get("accession", "ACC0001")
        ds.Modality = spec.modality
        ds.Manufacturer = "DeepVerticals Phantom"
        ds.InstitutionName = study.get("institution", "Synthetic General Hospital")
        ds.ReferringPhysicianName = "Who^Doctor"
        ds.StationName = "SYNTH-CT1"
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = spec.description
        ds.ManufacturerModelName = study.get("model", "Phantom 64")
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = spec.patient
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{spec.thickness:g}"
        ds.KVP = f"{spec.kvp:g}"
        ds.ConvolutionKernel = spec.kernel
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = spec.study_uid or uid("study", series_uid)
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = spec.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(inst[k])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in spec.positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in spec.iop]
        ds.FrameOfReferenceUID = spec.frame_uid or uid("frame", series_uid)
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(spec.positions[k][2]):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{spec.pixel_spacing[0]:.6f}", f"{spec.pixel_spacing[1]:.6f}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = rep
        if pad is not None and outside is not None:
            ds.PixelPaddingValue = pad
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", f"{slope:g}"
        ds.RescaleType = "HU"
        ds.PixelData = _stored(hu[k], spec.encoding, outside).tobytes()
        p = out_dir / names[k]
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def axial_positions(
    origin: Sequence[float], step: float, n: int, tilt_deg: float = 0.0
) -> np.ndarray:
    """``n`` slice positions from ``origin`` going superior by ``step`` mm; a gantry tilt
    shifts each slice along y by ``step * tan(tilt)``."""
    k = np.arange(n)[:, None]
    shift = np.array([0.0, np.tan(np.deg2rad(tilt_deg)), 1.0]) * step
    return np.asarray(origin, dtype=np.float64)[None, :] + k * shift


# ------------------------------------------------------------------------------- phantom
@dataclass
class Nodule:
    """One ground-truth nodule (``centre_mm`` LPS, ``centre_voxel`` ``(z, y, x)``)."""

    id: int
    type: str
    centre_mm: tuple[float, float, float]
    centre_voxel: tuple[float, float, float]
    diameter_mm: float  # equivalent-sphere diameter of the true (lobulated) shape
    volume_mm3: float
    attached: str  # "", "pleura" or "vessel"
    mean_hu: float


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


class _Phantom:
    """Renders one study on its voxel grid (z, y, x), in mm coordinates centred in-plane."""

    def __init__(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
    ):
        self.rng = rng
        self.shape = shape
        self.spacing = np.array(spacing)
        d, h, w = shape
        self.z = (np.arange(d) * spacing[0])[:, None, None]
        self.y = ((np.arange(h) - (h - 1) / 2) * spacing[1])[None, :, None]
        self.x = ((np.arange(w) - (w - 1) / 2) * spacing[2])[None, None, :]
        self.hu = np.full(shape, HU["air"], dtype=np.float32)
        self.zext = d * spacing[0]
        self.segments: list[tuple[np.ndarray, np.ndarray, float]] = []  # vessels (a, b, r) in mm
        self._dist: np.ndarray | None = None

    def mm(self, idx: np.ndarray) -> np.ndarray:  # (.., 3) (z, y, x) index -> (z, y, x) mm
        c = np.array([0.0, (self.shape[1] - 1) / 2, (self.shape[2] - 1) / 2])
        return (idx - c) * self.spacing

    def idx(self, mm: np.ndarray) -> np.ndarray:
        c = np.array([0.0, (self.shape[1] - 1) / 2, (self.shape[2] - 1) / 2])
        return mm / self.spacing + c

    def soft(self, inside_dist: np.ndarray) -> np.ndarray:
        """Partial-volume fraction from a signed distance (mm, positive inside)."""
        return np.clip(0.5 + inside_dist / self.spacing[1:].mean(), 0.0, 1.0).astype(np.float32)

    def paint(self, frac: np.ndarray, value: float, where: tuple[slice, ...] | None = None) -> None:
        t = self.hu if where is None else self.hu[where]
        t += frac * (value - t)

    def body(self, fov: float) -> None:
        rng = self.rng
        self.ax = rng.uniform(0.36, 0.44) * fov  # body half-width
        self.ay = self.ax * rng.uniform(0.62, 0.74)
        r = np.sqrt((self.x / self.ax) ** 2 + (self.y / self.ay) ** 2)
        self.body_r = r
        self.paint(self.soft((1 - r) * self.ay), HU["fat"])
        fat = rng.uniform(8, 20)
        self.paint(self.soft((1 - r) * self.ay - fat), HU["muscle"])
        # lungs: two super-ellipses that shrink toward the apex; heart cuts the left one
        taper = 1 - 0.3 * (self.z / self.zext) ** 2
        self.lung = np.zeros(self.shape, bool)
        lung_frac = np.zeros(self.shape, np.float32)
        for side in (-1, 1):
            cx = side * self.ax * rng.uniform(0.42, 0.5)
            lx, ly = (
                self.ax * rng.uniform(0.34, 0.4) * taper,
                self.ay * rng.uniform(0.72, 0.8) * taper,
            )
            cy = self.ay * rng.uniform(-0.05, 0.08)
            e = rng.uniform(2.2, 3.0)
            q = (np.abs(self.x - cx) / lx) ** e + (np.abs(self.y - cy) / ly) ** e
            dist = (1 - q ** (1 / e)) * np.minimum(lx, ly)
            lung_frac = np.maximum(lung_frac, self.soft(dist))
        hx, hy = self.ax * rng.uniform(0.22, 0.28), self.ay * rng.uniform(0.3, 0.38)
        hz = (self.z < self.zext * rng.uniform(0.45, 0.7)).astype(np.float32)
        hq = np.sqrt(((self.x - 0.25 * self.ax) / hx) ** 2 + ((self.y + 0.25 * self.ay) / hy) ** 2)
        heart = self.soft((1 - hq) * hy) * hz
        lung_frac *= 1 - np.clip(heart * 1.5, 0, 1)
        mediast = np.abs(self.x) < self.ax * 0.12
        lung_frac[np.broadcast_to(mediast, self.shape)] = 0
        self.lung = lung_frac > 0.5
        tex = ndimage.gaussian_filter(
            rng.standard_normal(self.shape).astype(np.float32), 2.0 / self.spacing
        )
        tex *= 25.0 / (tex.std() + 1e-6)
        grad = 50.0 * np.clip(self.y / self.ay, -1, 1)  # dependent (posterior) lung is denser
        self.paint(lung_frac, HU["lung"])
        self.hu += lung_frac * (tex + grad)
        self.paint(heart, HU["heart"])

    def bones(self) -> None:
        rng = self.rng
        sy = self.ay * rng.uniform(0.62, 0.72)
        rv = self.ax * rng.uniform(0.09, 0.12)
        d = np.sqrt(self.x**2 + (self.y - sy) ** 2)
        self.paint(self.soft(np.broadcast_to(rv - d, self.shape)), HU["bone"])
        self.paint(self.soft(np.broadcast_to(rv - 3.0 - d, self.shape)), HU["marrow"])
        # ribs: tubes along the chest wall, descending laterally, every ~25 mm
        theta = np.arctan2(self.y / self.ay, self.x / self.ax)
        wall = 1 - 14.0 / self.ay
        rib_r = rng.uniform(3.0, 4.5)
        for z0 in np.arange(rng.uniform(0, 25), self.zext + 40, rng.uniform(22, 28)):
            zc = z0 - 30.0 * np.abs(np.sin(theta / 2))  # lower at the sides than at the back
            dr = (self.body_r - wall) * self.ay
            dist = np.sqrt(dr**2 + (self.z - zc) ** 2)
            band = np.abs(np.sin(theta)) > 0.25  # no ribs in front of the sternum line
            frac = self.soft(rib_r - dist) * band
            self.paint(frac, HU["bone"])
            self.paint(self.soft(rib_r - 1.2 - dist) * band, HU["marrow"])
        self.lung &= self.hu < -400  # bone painted over the lung edge is no lung

    def airways(self) -> None:
        rng = self.rng
        r = rng.uniform(7, 10)
        top = np.array([self.zext + 5, -self.ay * 0.15, 0.0])
        carina = np.array([self.zext * rng.uniform(0.35, 0.6), -self.ay * 0.12, 0.0])
        segs = [(top, carina, r)]
        for side in (-1, 1):
            end = carina + np.array([-25.0, 5.0, side * self.ax * 0.3])
            segs.append((carina, end, r * 0.7))
        for a, b, rr in segs:
            self._tube(a, b, rr + 1.5, HU["muscle"])
            self._tube(a, b, rr, HU["air"])

    def _box(
        self, lo_mm: np.ndarray, hi_mm: np.ndarray
    ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
        """The voxels between two (z, y, x) mm corners, clipped to the volume: their slice,
        first index and centres in mm (``(..., 3)``); None when the box lies outside."""
        lo = np.maximum(np.floor(self.idx(lo_mm)).astype(int), 0)
        hi = np.minimum(np.ceil(self.idx(hi_mm)).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        sl = tuple(slice(int(a0), int(b0)) for a0, b0 in zip(lo, hi, strict=True))
        idx = np.meshgrid(
            *(np.arange(a0, b0) for a0, b0 in zip(lo, hi, strict=True)), indexing="ij"
        )
        return sl, lo, self.mm(np.stack(idx, -1).astype(np.float64))

    def _tube(self, a: np.ndarray, b: np.ndarray, r: float, value: float) -> None:
        box = self._box(np.minimum(a, b) - r - 2, np.maximum(a, b) + r + 2)
        if box is not None:
            sl, _, p = box
            self.paint(self.soft(r - _segment_distance(p, a, b)), value, sl)

    def vessels(self) -> None:
        """Three trees per lung (upper, middle, lower lobe) from the hilum; a branch that
        would leave the lung tries other directions before it stops."""
        rng = self.rng
        inside = ndimage.binary_erosion(self.lung, iterations=1)
        for side in (-1, 1):
            hilum = np.array(
                [self.zext * rng.uniform(0.35, 0.6), -self.ay * 0.05, side * self.ax * 0.2]
            )
            stack = [
                (hilum, np.array([dz, 0.0, float(side)]), rng.uniform(3.5, 5.0), 0)
                for dz in (0.8, 0.0, -0.8)
            ]
            while stack:
                a, direc0, r, depth = stack.pop()
                if r < 0.6 or depth > 9:
                    continue
                for _ in range(4):
                    direc = direc0 + rng.normal(0, 0.35, 3)
                    direc /= np.linalg.norm(direc)
                    length = rng.uniform(10, 24) * (r / 4.0) ** 0.5 + 5
                    b = a + direc * length
                    bi = np.round(self.idx(b)).astype(int)
                    if np.all(bi >= 0) and np.all(bi < self.shape) and inside[tuple(bi)]:
                        break
                else:
                    if depth > 0:
                        continue
                self._tube(a, b, r, HU["blood"])
                self.segments.append((a, b, r))
                for turn in (-1, 1):
                    ortho = np.cross(direc, rng.normal(0, 1, 3))
                    ortho /= np.linalg.norm(ortho) + 1e-9
                    ang = np.deg2rad(rng.uniform(20, 45))
                    nd = np.cos(ang) * direc + turn * np.sin(ang) * ortho
                    stack.append((b, nd, r * rng.uniform(0.7, 0.82), depth + 1))

    def nodule(
        self, k: int, kind: str, diameter: float, attach: str
    ) -> tuple[Nodule, np.ndarray] | None:
        rng = self.rng
        rad = diameter / 2
        if self._dist is None:  # mm to the nearest non-lung voxel (vessels do not change it)
            self._dist = ndimage.distance_transform_edt(self.lung, sampling=self.spacing)
        dist = self._dist
        if attach == "pleura":
            cand = np.argwhere((dist > 0.5 * rad) & (dist < 0.5 * rad + 1.5))
        elif attach == "vessel" and self.segments:
            a, b, vr = self.segments[rng.integers(len(self.segments))]
            c = a + rng.uniform(0.2, 0.8) * (b - a)
            off = np.cross(b - a, rng.normal(0, 1, 3))
            c = c + off / (np.linalg.norm(off) + 1e-9) * (rad + vr * 0.4)
            ci = np.round(self.idx(c)).astype(int)
            ok = np.all(ci >= 0) and np.all(ci < self.shape) and dist[tuple(ci)] > rad
            cand = ci[None] if ok else np.argwhere(dist > rad + 2)
            attach = attach if ok else ""
        else:
            cand = np.argwhere(dist > rad + 2)
        if len(cand) == 0:
            return None
        ci = cand[rng.integers(len(cand))].astype(np.float64)
        c = self.mm(ci)
        # lobulated shape: radius modulated by a few random low-order waves over direction
        waves = [
            (rng.normal(0, 1, 3), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.12))
            for _ in range(3)
        ]

        def r_of(u: np.ndarray) -> np.ndarray:
            f = sum(
                amp * np.cos(2.5 * (u @ (w / np.linalg.norm(w))) * np.pi + ph)
                for w, ph, amp in waves
            )
            return rad * (1 + f)

        ext = rad * 1.5 + 2
        box = self._box(c - ext, c + ext)  # c lies inside the lung, so the box is not empty
        assert box is not None
        sl, lo, p = box
        p = p - c
        dn = np.linalg.norm(p, axis=-1)
        u = p / np.maximum(dn, 1e-9)[..., None]
        lung_box = ndimage.binary_dilation(
            self.lung[sl], iterations=1
        )  # touches, never enters, the wall
        inside = np.where(lung_box, r_of(u) - dn, -np.inf)
        frac = self.soft(inside)
        solid = rng.normal(35, 12)
        core = {"part_solid": 0.45, "calcified": 0.6}.get(kind)
        base = rng.uniform(-650, -450) if kind in ("ground_glass", "part_solid") else solid
        self.paint(frac, base, sl)
        if core is not None:
            inner = np.where(lung_box, core * r_of(u) - dn, -np.inf)
            self.paint(
                self.soft(inner), solid if kind == "part_solid" else rng.uniform(300, 900), sl
            )
        mask = np.zeros(self.shape, bool)
        mask[sl] = inside > 0
        # true volume: Monte Carlo over the box, inside the shape and the (dilated) lung
        pts = rng.uniform(-ext, ext, (40000, 3))
        dn_p = np.linalg.norm(pts, axis=1)
        in_shape = dn_p < r_of(pts / np.maximum(dn_p, 1e-9)[:, None])
        vi = np.round(self.idx(pts + c)).astype(int) - lo
        ok = np.all((vi >= 0) & (vi < np.array(lung_box.shape)), axis=1)
        in_lung = np.zeros(len(pts), bool)
        in_lung[ok] = lung_box[tuple(vi[ok].T)]
        vol = float((2 * ext) ** 3 * np.mean(in_shape & in_lung))
        return (
            Nodule(
                k, kind, (0.0, 0.0, 0.0), tuple(ci), (6 * vol / np.pi) ** (1 / 3), vol, attach, 0.0
            ),
            mask,
        )


@dataclass
class Study:
    """What :func:`write_study` wrote."""

    folder: Path
    series_uid: str
    nodules: list[Nodule]
    scanner: dict[str, Any]


def render_study(
    cfg: SynthConfig, case: int
) -> tuple[Volume, np.ndarray, list[Nodule], dict[str, Any]]:
    """One phantom study in memory: the CT volume, the nodule label map, the nodules and the
    scanner parameters (all fixed by ``cfg.seed`` and ``case``)."""
    rng = np.random.default_rng([cfg.seed, case])
    rows, cols = cfg.shape
    fov = rng.uniform(*cfg.fov_mm)
    px = fov / cols
    thick = float(rng.choice(cfg.thickness_mm))
    n = max(8, round(cfg.z_extent_mm / thick))
    ph = _Phantom(rng, (n, rows, cols), (thick, px, px))
    ph.body(fov)
    ph.bones()
    ph.airways()
    ph.vessels()
    labels = np.zeros(ph.shape, np.uint8)
    nodules: list[Nodule] = []
    w = np.array(cfg.type_weights) / sum(cfg.type_weights)
    for _ in range(int(rng.integers(cfg.nodules[0], cfg.nodules[1] + 1))):
        kind = str(rng.choice(NODULE_TYPES, p=w))
        dia = float(np.exp(rng.uniform(np.log(cfg.diameter_mm[0]), np.log(cfg.diameter_mm[1]))))
        attach = str(rng.choice(["", "pleura", "vessel"], p=[0.6, 0.2, 0.2]))
        got = ph.nodule(len(nodules) + 1, kind, dia, attach)
        if got is None:
            continue
        nod, mask = got
        mask &= labels == 0
        if not mask.any():
            continue
        labels[mask] = nod.id
        nodules.append(nod)
    # scanner: point-spread blur, slice profile, correlated noise
    sig_xy = rng.uniform(0.4, 0.7)
    hu = ndimage.gaussian_filter(ph.hu, (0.35, sig_xy, sig_xy))
    noise_sd = rng.uniform(*cfg.noise_hu)
    noise = ndimage.gaussian_filter(rng.standard_normal(ph.shape).astype(np.float32), (0, 0.6, 0.6))
    hu += noise * (noise_sd / (noise.std() + 1e-6))
    hu = np.clip(hu, -1024, 3071).astype(np.float32)
    origin = (-(cols - 1) / 2 * px, -(rows - 1) / 2 * px, float(rng.uniform(-250, -150)))
    vol = Volume(hu, (thick, px, px), origin, np.eye(3))
    for nod in nodules:
        m = labels == nod.id
        nod.centre_mm = tuple(float(v) for v in vol.index_to_patient(nod.centre_voxel))
        nod.centre_voxel = tuple(float(v) for v in nod.centre_voxel)
        nod.mean_hu = float(hu[m].mean())
        nod.diameter_mm, nod.volume_mm3 = round(nod.diameter_mm, 3), round(nod.volume_mm3, 2)
    scanner = {
        "pixel_spacing_mm": px,
        "slice_thickness_mm": thick,
        "slices": n,
        "noise_hu": noise_sd,
        "psf_sigma_px": sig_xy,
        "encoding": str(rng.choice(list(ENCODINGS))),
        "layout": str(rng.choice(["flat", "nested", "no_extension"])),
        "shuffle_instance_numbers": bool(rng.random() < 0.5),
    }
    return vol, labels, nodules, scanner


def write_study(cfg: SynthConfig, case: int, out_dir: str | Path) -> Study:
    """Render study ``case`` and write it as DICOM + ground truth into ``out_dir`` (written
    whole, then renamed into place: an older study there is replaced, never mixed with)."""
    from core.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        study = _write_study(cfg, case, tmp)
    return Study(Path(out_dir), study.series_uid, study.nodules, study.scanner)


def _write_study(cfg: SynthConfig, case: int, out: Path) -> Study:
    vol, labels, nodules, sc = render_study(cfg, case)
    n, rows, cols = vol.shape
    rng = np.random.default_rng([cfg.seed, case, 1])
    series_uid = uid("ct", cfg.seed, case)
    inst = np.arange(1, n + 1)
    if sc["shuffle_instance_numbers"]:
        inst = inst[::-1] if rng.random() < 0.5 else rng.permutation(inst)
    order = rng.permutation(n)  # file names never follow position either
    if sc["layout"] == "flat":
        names = [f"IM{order[k] + 1:05d}.dcm" for k in range(n)]
    elif sc["layout"] == "nested":
        names = [f"S0001/{order[k] // 64:02d}/IM{order[k] + 1:05d}.dcm" for k in range(n)]
    else:
        names = [f"{order[k] + 1:08d}" for k in range(n)]
    yy, xx = np.mgrid[:rows, :cols]
    outside = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
    study = {"accession": f"ACC{cfg.seed:03d}{case:05d}", "date": f"2026{1 + case % 12:02d}15"}
    patient = (f"Phantom^Case{case:03d}", f"PID-{cfg.seed:03d}-{case:05d}", "19600101")
    spec = SeriesSpec(
        pixel_spacing=(vol.spacing[1], vol.spacing[2]),
        positions=axial_positions(vol.origin, vol.spacing[0], n),
        thickness=vol.spacing[0],
        encoding=sc["encoding"],
        series_uid=series_uid,
        study_uid=uid("study", cfg.seed, case),
        frame_uid=uid("frame", cfg.seed, case),
        description=f"CHEST {vol.spacing[0]:g}mm LUNG",
        instance_numbers=[int(i) for i in inst],
        file_names=names,
        patient=patient,
    )
    write_series(vol.array, spec, out / "dicom", outside=outside, study=study)
    # the scout every export carries: one coronal projection, a series of its own
    proj = vol.array.mean(axis=1, keepdims=True)[::-1].transpose(1, 0, 2)  # (1, D, W)
    scout = SeriesSpec(
        pixel_spacing=(vol.spacing[0], vol.spacing[2]),
        positions=np.array([[vol.origin[0], 0.0, vol.origin[2] + (n - 1) * vol.spacing[0]]]),
        iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        series_uid=uid("scout", cfg.seed, case),
        study_uid=spec.study_uid,
        frame_uid=spec.frame_uid,
        series_number=1,
        description="SCOUT",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        file_names=["scout/IM00001.dcm"],
        patient=patient,
    )
    write_series(proj, scout, out / "dicom", study=study)
    write_nifti(vol, out / "mask.nii.gz", labels)
    (out / "nodules.json").write_text(
        json.dumps(
            {"series_uid": series_uid, "scanner": sc, "nodules": [asdict(x) for x in nodules]},
            indent=1,
        )
    )
    return Study(out, series_uid, nodules, sc)


def test_config(train: SynthConfig, out_dir: str, n_cases: int) -> SynthConfig:
    """A test set for ``train``: another seed and other scanners (fields of view, slice
    thicknesses, noise) and another nodule mix, so test figures are not read off the
    training distribution."""
    return replace(
        train,
        out_dir=out_dir,
        n_cases=n_cases,
        seed=train.seed + 1000,
        nodules=(1, 4),
        fov_mm=(280.0, 420.0),
        thickness_mm=(0.8, 1.5, 3.0),
        noise_hu=(5.0, 40.0),
        type_weights=(0.4, 0.25, 0.25, 0.1),
    )


def write_dataset(cfg: SynthConfig) -> list[Study]:
    """``cfg.n_cases`` studies under ``cfg.out_dir/case_NNN`` plus ``manifest.json``."""
    root = Path(cfg.out_dir)
    studies = []
    for c in range(cfg.n_cases):
        studies.append(write_study(cfg, c, root / f"case_{c:03d}"))
        log.info("case %d/%d written (%d nodules)", c + 1, cfg.n_cases, len(studies[-1].nodules))
    manifest = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "out_dir"},
        "cases": [
            {
                "folder": s.folder.name,
                "series_uid": s.series_uid,
                "nodules": len(s.nodules),
                **s.scanner,
            }
            for s in studies
        ],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
    return studies
