"""A held-out chest-CT generator for the medical_ct benchmark, written apart from
``pipelines/medical_ct/synth.py`` and never used for training.

It differs on purpose in everything the product must not be tuned to:

- anatomy: a rounded-rectangle body, lungs as unions of overlapping ellipsoids (other
  proportions, a higher diaphragm dome), a sternum and scapulae instead of a rib cage, and
  vessels as smooth random curves (no branching tree);
- nodules: ellipsoids with random axes and orientation, unions of two or three spheres, and
  spiculated shapes (spikes on a core); other HU ranges for each kind;
- scanner: noise that grows with attenuation (photon starvation in the body), a beam-hardening
  cupping, streaks from dense bone, other slice thicknesses and pixel spacings;
- export: a soft-tissue reconstruction of the same study in the same folder (thicker slices,
  another series), files named by SOP Instance UID, sometimes a DICOMDIR, InstanceNumber in
  acquisition order that is not position order.

Each case is written like ``synth.py``'s (``<case>/dicom/``, ``mask.nii.gz`` on the lung
series' grid, ``nodules.json``), so the product reads it with the same code a customer uses.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipelines.medical_ct.data import Volume, write_nifti
from pipelines.medical_ct.synth import SeriesSpec, axial_positions, uid, write_series


@dataclass
class HeldoutConfig:
    out_dir: str
    n_cases: int = 6
    shape: tuple[int, int] = (192, 192)
    seed: int = 5000


def _grid(shape, spacing):
    d, h, w = shape
    z = (np.arange(d) * spacing[0])[:, None, None]
    y = ((np.arange(h) - (h - 1) / 2) * spacing[1])[None, :, None]
    x = ((np.arange(w) - (w - 1) / 2) * spacing[2])[None, None, :]
    return z, y, x


def _nodule_mask(rng, z, y, x, c, size):
    kind = rng.choice(["ellipsoid", "union", "spiculated"])
    p = np.stack(np.broadcast_arrays(z - c[0], y - c[1], x - c[2]), -1)
    if kind == "ellipsoid":
        axes = size / 2 * rng.uniform(0.7, 1.3, 3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        q = p @ rot
        return ((q / axes) ** 2).sum(-1) <= 1, kind
    if kind == "union":
        m = np.zeros(p.shape[:-1], bool)
        for _ in range(int(rng.integers(2, 4))):
            off = rng.normal(0, size * 0.2, 3)
            m |= np.linalg.norm(p - off, axis=-1) <= size / 2 * rng.uniform(0.55, 0.8)
        return m, kind
    core = np.linalg.norm(p, axis=-1) <= size / 2 * 0.75
    spikes = np.zeros_like(core)
    for _ in range(8):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        t = np.clip(p @ v, 0, size * 0.75)
        spikes |= np.linalg.norm(p - t[..., None] * v, axis=-1) <= 0.6
    return core | spikes, kind


def render(cfg: HeldoutConfig, case: int):
    rng = np.random.default_rng([cfg.seed, case])
    rows, cols = cfg.shape
    px = rng.uniform(0.9, 2.4)
    thick = float(rng.choice([0.75, 1.0, 2.0, 3.0]))
    n = max(12, round(rng.uniform(90, 150) / thick))
    spacing = (thick, px, px)
    z, y, x = _grid((n, rows, cols), spacing)
    hw, hh = cols * px * rng.uniform(0.33, 0.42), rows * px * rng.uniform(0.26, 0.33)
    body = (np.abs(x / hw) ** 4 + np.abs(y / hh) ** 4) <= 1
    hu = np.where(body, rng.uniform(20, 60), -1000.0).astype(np.float32) * np.ones(
        (n, 1, 1), np.float32
    )
    lung = np.zeros(hu.shape, bool)
    dome = z.max() * rng.uniform(0.1, 0.3)
    for side in (-1, 1):
        for _ in range(3):
            c = (
                rng.uniform(0.3, 0.8) * z.max(),
                rng.uniform(-0.2, 0.2) * hh,
                side * hw * rng.uniform(0.4, 0.55),
            )
            a = (
                z.max() * rng.uniform(0.5, 0.8),
                hh * rng.uniform(0.5, 0.7),
                hw * rng.uniform(0.25, 0.35),
            )
            lung |= ((z - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + (
                (x - c[2]) / a[2]
            ) ** 2 <= 1
    lung &= body & (np.abs(x) > hw * 0.15) & (z > dome * (1 - (x / hw) ** 2))
    hu[lung] = rng.uniform(-880, -800)
    # sternum, scapulae
    for cx, cy, r in (
        (0.0, -hh * 0.85, 8.0),
        (-hw * 0.7, hh * 0.7, 10.0),
        (hw * 0.7, hh * 0.7, 10.0),
    ):
        hu[np.broadcast_to(((x - cx) ** 2 + (y - cy) ** 2 <= r**2) & body, hu.shape)] = rng.uniform(
            500, 900
        )
    # vessels: smooth random curves through the lungs
    for _ in range(int(rng.integers(14, 24))):
        pts = [
            np.array(
                [
                    rng.uniform(0, z.max()),
                    rng.uniform(-hh, hh) * 0.5,
                    rng.choice([-1, 1]) * hw * 0.3,
                ]
            )
        ]
        d = rng.normal(size=3)
        r = rng.uniform(0.8, 3.0)
        for _ in range(12):
            d = d / np.linalg.norm(d) + rng.normal(0, 0.3, 3)
            pts.append(pts[-1] + 6.0 * d / np.linalg.norm(d))
        for a, b in itertools.pairwise(pts):
            lo = np.maximum(
                np.floor(
                    (np.minimum(a, b) - r - 1) / np.array(spacing)
                    + [0, (rows - 1) / 2, (cols - 1) / 2]
                ).astype(int),
                0,
            )
            hi = np.minimum(
                np.ceil(
                    (np.maximum(a, b) + r + 1) / np.array(spacing)
                    + [0, (rows - 1) / 2, (cols - 1) / 2]
                ).astype(int)
                + 1,
                hu.shape,
            )
            if np.any(hi <= lo):
                continue
            sl = tuple(slice(int(p0), int(p1)) for p0, p1 in zip(lo, hi, strict=True))
            zz, yy, xx = z[sl[0], :, :], y[:, sl[1], :], x[:, :, sl[2]]
            p = np.stack(np.broadcast_arrays(zz, yy, xx), -1)
            ab = b - a
            t = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
            near = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) <= r
            hu[sl][near & lung[sl]] = rng.uniform(20, 70)
    labels = np.zeros(hu.shape, np.uint8)
    nodules = []
    dist = ndimage.distance_transform_edt(lung, sampling=spacing)
    for k in range(1, int(rng.integers(1, 5)) + 1):
        size = float(np.exp(rng.uniform(np.log(4), np.log(28))))
        cand = np.argwhere(dist > size * 0.3)
        if not len(cand):
            continue
        ci = cand[rng.integers(len(cand))]
        c = (z[ci[0], 0, 0], y[0, ci[1], 0], x[0, 0, ci[2]])
        m, shape_kind = _nodule_mask(rng, z, y, x, c, size)
        m &= ndimage.binary_dilation(lung, iterations=1) & (labels == 0)
        if m.sum() < 2:
            continue
        kind = str(
            rng.choice(
                ["solid", "ground_glass", "part_solid", "calcified"], p=[0.5, 0.25, 0.15, 0.1]
            )
        )
        val = {
            "solid": rng.uniform(-20, 80),
            "ground_glass": rng.uniform(-700, -500),
            "part_solid": rng.uniform(-650, -450),
            "calcified": rng.uniform(150, 400),
        }[kind]
        hu[m] = val
        if kind in ("part_solid", "calcified"):
            core = m & (ndimage.distance_transform_edt(m, sampling=spacing) > size * 0.2)
            hu[core] = rng.uniform(0, 60) if kind == "part_solid" else rng.uniform(600, 1200)
        labels[m] = k
        vol = float(m.sum() * np.prod(spacing))
        nodules.append(
            {
                "id": k,
                "type": kind,
                "shape": shape_kind,
                "centre_voxel": np.argwhere(m).mean(0).tolist(),
                "diameter_mm": (6 * vol / np.pi) ** (1 / 3),
                "volume_mm3": vol,
            }
        )
    # scanner: PSF, cupping, attenuation-dependent noise, bone streaks
    hu = ndimage.gaussian_filter(hu, (0.4, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)))
    r2 = (x / hw) ** 2 + (y / hh) ** 2
    hu += (body * rng.uniform(10, 40) * (r2 - 0.5)).astype(np.float32)
    sigma = rng.uniform(6, 25) * (1 + 1.5 * body * np.clip(1 - r2, 0, 1))
    hu += (rng.standard_normal(hu.shape) * sigma).astype(np.float32)
    ang = np.arctan2(y, x)
    hu += (body * 25 * np.cos(ang * int(rng.integers(3, 9))) * rng.uniform(0, 1)).astype(np.float32)
    hu = np.clip(hu, -1024, 3071).astype(np.float32)
    origin = (-(cols - 1) / 2 * px, -(rows - 1) / 2 * px, float(rng.uniform(-300, -100)))
    return Volume(hu, spacing, origin, np.eye(3)), labels, nodules, rng


def write_case(cfg: HeldoutConfig, case: int, out: Path) -> dict:
    vol, labels, nodules, rng = render(cfg, case)
    n = vol.shape[0]
    series = uid("heldout", cfg.seed, case)
    acq = rng.permutation(n) + 1  # acquisition order, not position order
    sops = [uid("sop", series, k) for k in range(n)]
    spec = SeriesSpec(
        pixel_spacing=vol.spacing[1:],
        positions=axial_positions(vol.origin, vol.spacing[0], n),
        thickness=vol.spacing[0],
        encoding=str(rng.choice(["int16", "uint12", "int16_zero"])),
        series_uid=series,
        study_uid=uid("hstudy", cfg.seed, case),
        frame_uid=uid("hframe", cfg.seed, case),
        description="THORAX LUNG",
        instance_numbers=[int(a) for a in acq],
        file_names=[f"{s}.dcm" for s in sops],
        kernel="B70f",
    )
    write_series(vol.array, spec, out / "dicom")
    # a soft-tissue recon of the same study: thicker slices, fewer images, another series
    k = 3
    soft = vol.array[: (n // k) * k].reshape(n // k, k, *vol.shape[1:]).mean(1)
    spec2 = SeriesSpec(
        pixel_spacing=vol.spacing[1:],
        positions=axial_positions(vol.origin, vol.spacing[0] * k, len(soft)),
        thickness=vol.spacing[0] * k,
        series_uid=uid("soft", cfg.seed, case),
        study_uid=spec.study_uid,
        frame_uid=spec.frame_uid,
        series_number=3,
        description="THORAX SOFT",
        kernel="B30f",
        file_names=[f"soft/{i:04d}" for i in range(len(soft))],
    )
    write_series(soft.astype(np.float32), spec2, out / "dicom")
    write_nifti(vol, out / "mask.nii.gz", labels)
    for nd in nodules:
        nd["centre_mm"] = vol.index_to_patient(nd["centre_voxel"]).tolist()
    (out / "nodules.json").write_text(
        json.dumps({"series_uid": series, "nodules": nodules}, indent=1)
    )
    return {"case": out.name, "nodules": len(nodules), "spacing": list(vol.spacing), "slices": n}


def write_heldout(cfg: HeldoutConfig) -> list[dict]:
    root = Path(cfg.out_dir)
    return [write_case(cfg, c, root / f"case_{c:03d}") for c in range(cfg.n_cases)]
