"""Seeded synthetic inspection images with exact ground truth, in the formats users have.

Surfaces (``(H, W, 3)`` float RGB in [0, 1] until written as 8-bit PNG): brushed metal, woven
fabric, wood grain, PCB-like boards and cast parts, each with random texture scale, a random
90° rotation and a lighting gradient. Defects painted on top, each with its exact mask:
``scratch`` (thin bright/dark line), ``dent`` (shaded ellipse), ``stain`` (tinted blob),
``crack`` (dark random-walk polyline), ``hole`` (dark disc with a bright rim). Defects of one
image never touch, so every connected component of a mask is one instance.

:func:`write_dataset` writes the MVTec AD layout (``<surface>/train/good``,
``<surface>/test/<class>``, ``<surface>/ground_truth/<class>/<n>_mask.png``) plus a COCO
detection JSON (``annotations.json``) over the same files. :func:`paste_defects` paints
defects onto a user's own defect-free images, so a detector can be trained from normal
images alone. The same seed gives the same bytes. Not here: reading data (``data.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from core.atomic import atomic_dir
from pipelines.vision_qc.config import DEFECTS, SURFACES, SynthConfig

Rng = np.random.Generator


@dataclass
class Instance:
    """One painted defect: class name, boolean mask ``(H, W)`` and box ``[x1, y1, x2, y2]``."""

    cls: str
    mask: np.ndarray
    box: list[int]


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32))


def _smooth(rng: Rng, s: int, cells: int) -> np.ndarray:
    small = rng.normal(size=(cells, cells)).astype(np.float32)
    big = ndimage.zoom(small, s / cells, order=3)[:s, :s]
    return (big - big.mean()) / (big.std() + 1e-6)


def _gray(v: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    return np.clip(v[..., None] * np.asarray(tint, dtype=np.float32), 0, 1)


def brushed_metal(rng: Rng, s: int) -> np.ndarray:
    streak = ndimage.gaussian_filter1d(
        rng.normal(size=(s, s)).astype(np.float32), sigma=s / rng.uniform(6, 12), axis=1
    )
    streak /= streak.std() + 1e-6
    v = 0.55 + 0.05 * _smooth(rng, s, 4) + 0.06 * streak + 0.015 * rng.normal(size=(s, s))
    return _gray(v, (1.0, 1.0, 1.04))


def woven_fabric(rng: Rng, s: int) -> np.ndarray:
    x, y = _grid(s)
    p = rng.uniform(5, 10)
    cell = ((x // p + y // p) % 2).astype(bool)
    weave = np.where(cell, np.sin(np.pi * (x % p) / p), np.sin(np.pi * (y % p) / p))
    v = 0.45 + 0.2 * weave + 0.03 * _smooth(rng, s, 8)
    hue = rng.uniform(0.6, 1.0, size=3)
    return _gray(v, tuple(hue))


def wood_grain(rng: Rng, s: int) -> np.ndarray:
    x, y = _grid(s)
    cx, cy = rng.uniform(-s, 2 * s), rng.uniform(-s, 2 * s)
    r = np.sqrt(0.04 * (x - cx) ** 2 + (y - cy) ** 2) + 6 * _smooth(rng, s, 6)
    v = 0.5 + 0.18 * np.sin(r / rng.uniform(3, 7)) + 0.04 * _smooth(rng, s, 16)
    return _gray(v, (0.85, 0.6, 0.38))


def pcb(rng: Rng, s: int) -> np.ndarray:
    img = np.empty((s, s, 3), np.float32)
    img[:] = (0.08, 0.33, 0.14)
    img += 0.02 * _smooth(rng, s, 8)[..., None]
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    copper = (190, 140, 64)
    for _ in range(rng.integers(6, 14)):
        w = int(rng.integers(2, 6))
        a = int(rng.integers(0, s))
        b0, b1 = sorted(rng.integers(0, s, size=2).tolist())
        d.line(
            [(b0, a), (b1, a)] if rng.random() < 0.5 else [(a, b0), (a, b1)], fill=copper, width=w
        )
    for _ in range(rng.integers(8, 20)):
        cx, cy, r = *rng.integers(8, s - 8, size=2).tolist(), int(rng.integers(3, 7))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(205, 190, 150))
    return np.asarray(pil, dtype=np.float32) / 255.0


def cast_part(rng: Rng, s: int) -> np.ndarray:
    v = 0.45 + 0.08 * _smooth(rng, s, 5) + 0.03 * rng.normal(size=(s, s))
    pores = rng.random((s, s)) < 0.002
    v = np.where(ndimage.binary_dilation(pores), v * 0.7, v)
    return _gray(v, (1.0, 0.98, 0.95))


SURFACE_FNS: dict[str, Callable[[Rng, int], np.ndarray]] = {
    "brushed_metal": brushed_metal,
    "woven_fabric": woven_fabric,
    "wood_grain": wood_grain,
    "pcb": pcb,
    "cast_part": cast_part,
}
assert tuple(SURFACE_FNS) == SURFACES


def surface(name: str, rng: Rng, size: int) -> np.ndarray:
    """A defect-free surface with random rotation and lighting."""
    img = SURFACE_FNS[name](rng, size)
    img = np.rot90(img, k=int(rng.integers(0, 4))).copy()
    x, y = _grid(size)
    light = (
        1
        + rng.uniform(-0.25, 0.25) * (x / size - 0.5)
        + rng.uniform(-0.25, 0.25) * (y / size - 0.5)
    )
    return np.clip(img * light[..., None] * rng.uniform(0.85, 1.15), 0, 1)


# ---------------------------------------------------------------- defect painters
def _mask_from(draw: Callable[[ImageDraw.ImageDraw], None], s: int) -> np.ndarray:
    pil = Image.new("L", (s, s), 0)
    draw(ImageDraw.Draw(pil))
    return np.asarray(pil) > 0


def _scratch(img: np.ndarray, rng: Rng) -> np.ndarray:
    s = img.shape[0]
    x0, y0 = rng.uniform(0.15 * s, 0.85 * s, size=2)
    ang, ln = rng.uniform(0, np.pi), rng.uniform(0.15, 0.4) * s
    x1, y1 = x0 + ln * np.cos(ang), y0 + ln * np.sin(ang)
    mask = _mask_from(
        lambda d: d.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(2, 4))), s
    )
    delta = rng.choice([-0.3, 0.3])
    img[mask] = np.clip(img[mask] + delta, 0, 1)
    return mask


def _dent(img: np.ndarray, rng: Rng) -> np.ndarray:
    s = img.shape[0]
    cx, cy = rng.uniform(0.2 * s, 0.8 * s, size=2)
    rx, ry = rng.uniform(0.04, 0.09, size=2) * s
    x, y = _grid(s)
    inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    shade = 0.3 * ((x - cx) / rx)
    img[inside] = np.clip(img[inside] + shade[inside][:, None], 0, 1)
    return inside


def _stain(img: np.ndarray, rng: Rng) -> np.ndarray:
    s = img.shape[0]
    cx, cy = rng.uniform(0.2 * s, 0.8 * s, size=2)
    r = rng.uniform(0.05, 0.1) * s
    x, y = _grid(s)
    blob = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r + 0.3 * _smooth(rng, s, 12)
    mask = blob < 1
    mask = ndimage.binary_opening(mask, iterations=1)
    lab, n = ndimage.label(mask)
    if n > 1:  # keep the largest piece: one stain is one instance
        mask = lab == (np.bincount(lab.ravel())[1:].argmax() + 1)
    tint = np.asarray(
        rng.choice([(0.35, 0.25, 0.1), (0.1, 0.1, 0.1), (0.5, 0.45, 0.1)]), np.float32
    )
    img[mask] = 0.4 * img[mask] + 0.6 * tint
    return mask


def _crack(img: np.ndarray, rng: Rng) -> np.ndarray:
    s = img.shape[0]
    pts = [tuple(rng.uniform(0.2 * s, 0.8 * s, size=2))]
    ang = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(12, 25))):
        ang += rng.normal(0, 0.5)
        step = rng.uniform(3, 7)
        x, y = pts[-1]
        pts.append(
            (
                float(np.clip(x + step * np.cos(ang), 2, s - 3)),
                float(np.clip(y + step * np.sin(ang), 2, s - 3)),
            )
        )
    mask = _mask_from(lambda d: d.line(pts, fill=255, width=2, joint="curve"), s)
    img[mask] *= 0.3
    return mask


def _hole(img: np.ndarray, rng: Rng) -> np.ndarray:
    s = img.shape[0]
    cx, cy = rng.uniform(0.15 * s, 0.85 * s, size=2)
    r = rng.uniform(0.02, 0.04) * s
    x, y = _grid(s)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    core, rim = d <= r, (d > r) & (d <= r + 2)
    img[rim] = np.clip(img[rim] + 0.25, 0, 1)
    img[core] = 0.04
    return core | rim


PAINTERS: dict[str, Callable[[np.ndarray, Rng], np.ndarray]] = {
    "scratch": _scratch,
    "dent": _dent,
    "stain": _stain,
    "crack": _crack,
    "hole": _hole,
}
assert tuple(PAINTERS) == DEFECTS


def box_of(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def paste_defects(
    image: np.ndarray,
    rng: Rng,
    classes: tuple[str, ...] | list[str],
    n: int = 1,
    max_tries: int = 20,
) -> tuple[np.ndarray, list[Instance]]:
    """Paint ``n`` defects (classes drawn from ``classes``) on ``image``; instances never touch.

    ``image`` is ``(H, W, 3)`` uint8 or float in [0, 1] and square; returns a float copy.
    """
    img = (
        image.astype(np.float32) / 255.0
        if image.dtype == np.uint8
        else image.astype(np.float32).copy()
    )
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"paste_defects needs a square (H, W, 3) image, got {img.shape}")
    taken = np.zeros(img.shape[:2], bool)
    out: list[Instance] = []
    for _ in range(n):
        cls = str(rng.choice(list(classes)))
        for _ in range(max_tries):
            trial = img.copy()
            mask = PAINTERS[cls](trial, rng)
            if mask.sum() < 6 or (ndimage.binary_dilation(mask, iterations=3) & taken).any():
                continue
            if ndimage.label(mask)[1] != 1:
                continue
            img, taken = trial, taken | mask
            out.append(Instance(cls, mask, box_of(mask)))
            break
    return img, out


# ---------------------------------------------------------------- writing
def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", optimize=False)


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_dataset(cfg: SynthConfig) -> Path:
    """Write the data set described by ``cfg`` atomically; returns its root."""
    root = Path(cfg.out_dir)
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(cfg.defects)]
    cat_id = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    with atomic_dir(root) as tmp:
        for si, surf in enumerate(cfg.surfaces):
            jobs = [("train", "good", i) for i in range(cfg.n_train_good)]
            jobs += [("test", "good", i) for i in range(cfg.n_test_good)]
            jobs += [
                ("test", d, i)
                for d in cfg.defects
                for i in range(cfg.test_counts.get(d, cfg.n_test_per_defect))
            ]
            for split, folder, i in jobs:
                key = [
                    cfg.seed,
                    si,
                    0 if split == "train" else 1,
                    DEFECTS.index(folder) + 1 if folder != "good" else 0,
                    i,
                ]
                rng = np.random.default_rng(key)
                img = surface(surf, rng, cfg.size)
                inst: list[Instance] = []
                if folder != "good":
                    n = int(rng.integers(1, cfg.max_defects_per_image + 1))
                    img, inst = paste_defects(img, rng, [folder], n)
                rel = f"{surf}/{split}/{folder}/{i:03d}.png"
                _save_png(tmp / rel, _u8(img))
                if folder != "good":
                    union = np.zeros(img.shape[:2], bool)
                    for it in inst:
                        union |= it.mask
                    _save_png(
                        tmp / f"{surf}/ground_truth/{folder}/{i:03d}_mask.png",
                        union.astype(np.uint8) * 255,
                    )
                image_id = len(images) + 1
                images.append(
                    {"id": image_id, "file_name": rel, "width": cfg.size, "height": cfg.size}
                )
                for it in inst:
                    x1, y1, x2, y2 = it.box
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": image_id,
                            "category_id": cat_id[it.cls],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": int(it.mask.sum()),
                            "iscrowd": 0,
                        }
                    )
        coco = {
            "images": images,
            "annotations": anns,
            "categories": cats,
            "info": {"description": "DeepVerticals vision_qc synthetic set", "seed": cfg.seed},
        }
        (tmp / "annotations.json").write_text(json.dumps(coco, indent=1))
    return root
