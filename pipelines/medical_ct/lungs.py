"""The lung field of a chest CT: where a lung nodule can be, found from HU alone.

:func:`lung_field` takes a ``(D, H, W)`` HU array and its spacing ``(z, y, x)`` mm and returns
a boolean mask of the lungs *with their walls*: the region a nodule detector should look at
and report from (the LUNA16 systems all restrict candidates to it). The recipe is the classic
threshold one, so it holds on any scanner: the body is the largest component above
``BODY_HU`` with each axial slice's holes filled; the lungs are the air (below ``LUNG_HU``)
inside it, components of at least ``min_lung_ml``; their holes (vessels, nodules) are filled
slice by slice, then the mask is closed and grown by ``margin_mm`` so nodules touching the
pleura or the mediastinum, which are solid tissue on the lung's edge, stay inside.

When no lung is found (a phantom without lungs, a non-chest volume, a crop), :func:`lung_field`
returns ``None`` and callers look at the whole volume. Not here: the network
(``model.py``), the nodule measurements (``nodules.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_HU = -500.0  # tissue (skin, fat, muscle, bone) is above, air and lung below
LUNG_HU = -400.0  # aerated lung and air below; ground glass (-750..-300) is filled as a hole
BODY_CLOSE_MM = 6.0  # gaps in the body outline up to about this wide are bridged
COARSE_MM = 3.0  # the mask is computed on a grid about this fine
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # slice-wise hole filling (axial only)


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    zz, yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    rv = np.maximum(radius_vox, 0.5)
    return (zz / rv[0]) ** 2 + (yy / rv[1]) ** 2 + (xx / rv[2]) ** 2 <= 1.0


def lung_field(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    margin_mm: float = 12.0,
    min_lung_ml: float = 20.0,
) -> np.ndarray | None:
    """Boolean ``(D, H, W)`` mask of the lungs and a ``margin_mm`` rim, or ``None`` when the
    volume shows no lung of ``min_lung_ml`` millilitres or more. Computed on a grid of about
    ``COARSE_MM`` (every k-th voxel), then repeated back: the rim is far wider than a voxel."""
    step = np.maximum(np.floor(COARSE_MM / np.asarray(spacing, float)), 1).astype(int)
    coarse = hu[:: step[0], :: step[1], :: step[2]]
    mask = _lung_field(coarse, np.asarray(spacing, float) * step, margin_mm, min_lung_ml)
    if mask is None:
        return None
    for axis, k in enumerate(step):
        mask = np.repeat(mask, k, axis=axis)
    return np.ascontiguousarray(mask[: hu.shape[0], : hu.shape[1], : hu.shape[2]])


def _lung_field(
    hu: np.ndarray, sp: np.ndarray, margin_mm: float, min_lung_ml: float
) -> np.ndarray | None:
    body, n = ndimage.label(hu > BODY_HU)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(body), body, index=np.arange(1, n + 1))
    body = body == 1 + int(np.argmax(sizes))
    # a thin chest wall broken by noise would let the lungs leak out: close the outline
    # in-plane (a disc of BODY_CLOSE_MM) before filling each slice
    disc = _ball(np.array([0.0, *(BODY_CLOSE_MM / sp[1:])]))
    body = ndimage.binary_closing(body, disc, border_value=0) | body
    body = ndimage.binary_fill_holes(body, structure=_IN_PLANE)
    lungs, n = ndimage.label((hu < LUNG_HU) & body)
    if n == 0:
        return None
    ml = ndimage.sum_labels(np.ones_like(lungs), lungs, index=np.arange(1, n + 1))
    ml = ml * float(np.prod(sp)) / 1000.0
    keep = np.flatnonzero(ml >= min_lung_ml) + 1
    if len(keep) == 0:
        return None
    mask = np.isin(lungs, keep)
    mask = ndimage.binary_fill_holes(mask, structure=_IN_PLANE)
    # close the notches that nodules on the pleura cut into the lung outline, then grow
    close = _ball(np.full(3, margin_mm / 2) / sp)
    mask = ndimage.binary_closing(np.pad(mask, [(s // 2,) * 2 for s in close.shape]), close)
    mask = mask[
        tuple(slice(s // 2, s // 2 + n) for s, n in zip(close.shape, hu.shape, strict=True))
    ]
    return ndimage.binary_dilation(mask, _ball(np.full(3, margin_mm) / sp))


def bounding_box(mask: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, ...]:
    """The slices of ``mask``'s bounding box grown by ``margin`` voxels (clipped to the
    array)."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + np.asarray(margin), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
