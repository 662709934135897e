"""From a probability map to the nodule list a radiologist reads.

:func:`find_nodules` thresholds the probability, labels 26-connected components (scipy) and
measures each one on the volume's own grid: centre (voxel ``(z, y, x)`` and patient LPS mm),
the axial slice through it, the longest axial diameter (max Feret diameter of the component's
largest axial cross-section, in mm with the pixel spacing of each axis), the
equivalent-sphere diameter and volume (mm, mm^3), mean HU, a type from the HU inside it
(calcified / solid / part-solid / ground-glass) and a confidence (the component's peak
probability). Components below ``min_diameter_mm`` are dropped. Not here: the network
(``model.py``), matching against ground truth (``evaluate.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from pipelines.medical_ct.data import Volume

SOLID_HU = -300.0  # above: solid tissue; below (and above lung): ground glass
CALCIFIED_HU = 200.0


@dataclass
class FoundNodule:
    """One detected nodule (all lengths mm, volume mm^3)."""

    id: int
    centre_voxel: tuple[float, float, float]  # (z, y, x)
    centre_mm: tuple[float, float, float]  # patient LPS (x, y, z)
    slice: int  # axial slice index through the centre
    longest_axial_mm: float
    diameter_mm: float  # equivalent-sphere
    volume_mm3: float
    mean_hu: float
    type: str  # calcified | solid | part_solid | ground_glass
    confidence: float

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def nodule_type(hu: np.ndarray) -> str:
    """Type from the HU values inside a nodule."""
    if (hu > CALCIFIED_HU).mean() > 0.1:
        return "calcified"
    solid = float((hu > SOLID_HU).mean())
    if solid >= 0.8:
        return "solid"
    return "part_solid" if solid >= 0.05 else "ground_glass"


def longest_axial_mm(section: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """Max distance (mm) between two pixels of a 2-D mask, pixel centres +-half a pixel."""
    pts = np.argwhere(section) * np.asarray(spacing_yx)
    if len(pts) == 0:
        return 0.0
    if len(pts) > 400:  # the farthest pair lies on the convex hull
        import contextlib

        from scipy.spatial import ConvexHull, QhullError

        with contextlib.suppress(QhullError):  # collinear points: keep them all
            pts = pts[ConvexHull(pts).vertices]
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
    return float(d + np.mean(spacing_yx))  # a one-pixel nodule is one pixel wide


def find_nodules(
    prob: np.ndarray,
    vol: Volume,
    threshold: float = 0.5,
    min_diameter_mm: float = 2.0,
    within: np.ndarray | None = None,
) -> tuple[list[FoundNodule], np.ndarray]:
    """Nodules in ``prob`` (``(D, H, W)`` on ``vol``'s grid) and their label map (``k`` for
    nodule ``k``, ids by descending confidence). ``within``: a boolean mask on the same grid
    (the lung field); a component with no voxel in it is dropped, one that touches it is kept
    whole."""
    if prob.shape != vol.shape:
        raise ValueError(f"probability {prob.shape} is not on the volume's grid {vol.shape}")
    labels, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(vol.spacing))
    found: list[FoundNodule] = []
    keep: list[int] = []
    if n:
        objs = ndimage.find_objects(labels)
        for k, sl in enumerate(objs, start=1):
            m = labels[sl] == k
            vol_mm3 = float(m.sum()) * voxel
            dia = (6 * vol_mm3 / np.pi) ** (1 / 3)
            if dia < min_diameter_mm or (within is not None and not within[sl][m].any()):
                continue
            idx = np.argwhere(m) + [s.start for s in sl]
            c = idx.mean(0)
            areas = m.sum(axis=(1, 2))
            zbest = int(np.argmax(areas))
            hu = vol.array[sl][m]
            found.append(
                FoundNodule(
                    id=0,
                    centre_voxel=tuple(float(v) for v in c),  # type: ignore[arg-type]
                    centre_mm=tuple(float(v) for v in vol.index_to_patient(c)),  # type: ignore[arg-type]
                    slice=round(c[0]),
                    longest_axial_mm=longest_axial_mm(m[zbest], vol.spacing[1:]),
                    diameter_mm=float(dia),
                    volume_mm3=vol_mm3,
                    mean_hu=float(hu.mean()),
                    type=nodule_type(hu),
                    confidence=float(prob[sl][m].max()),
                )
            )
            keep.append(k)
    order = sorted(range(len(found)), key=lambda i: -found[i].confidence)
    out = np.zeros(prob.shape, np.uint16)
    result = []
    for new_id, i in enumerate(order, start=1):
        f = found[i]
        f.id = new_id
        out[labels == keep[i]] = new_id
        result.append(f)
    return result, out
