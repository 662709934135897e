"""A second generator of labelled inspection images, the held-out judge for vision_qc.

Nothing in ``pipelines/`` imports it and no training default was tuned on it: it exists so
that the detector is measured on data unlike its own generator (``pipelines/vision_qc/
synth.py``), as a customer's images would be. What differs, on purpose:

* **Surfaces**: crops of real photographs shipped with scikit-image (brick, grass, gravel,
  the moon's surface, a coffee cup on its table), at random scale, flip and
  rotation, tinted like metal, plastic or painted parts; synth.py draws procedural metal,
  wood, fabric and PCB.
* **Lighting**: a directional gradient times a vignette, gamma, sensor noise, a slight blur
  and sometimes JPEG artefacts.
* **Defects**, drawn by other code: scratches as anti-aliased Bézier strands (one to three,
  bright or dark), cracks as branching random walks, dents as shaded bumps (a highlight on one
  side, a shadow on the other), stains as blotchy translucent patches of smoothed noise, holes
  as dark irregular polygons with a bright rim. One to three per defective image, sometimes of
  two classes.
* **Class mix**: scratch 30%, crack 25%, dent 20%, stain 15%, hole 10%, with 35% of images
  defect-free by default; synth.py's training pastes are uniform over the classes.

Output: a COCO folder (``images/NNNN.png`` + ``annotations.json``, boxes ``[x, y, w, h]``
tight around each defect's mask). Same seed and settings, same bytes.

Run: ``.venv/bin/python benchmarks/heldout_vqc.py OUT --images 200 --seed 7``.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

CLASS_MIX = {"scratch": 0.30, "crack": 0.25, "dent": 0.20, "stain": 0.15, "hole": 0.10}
_PHOTOS = ("brick", "grass", "gravel", "moon", "coffee")
_TINTS = [  # RGB gains: steel, blue-grey plastic, green paint, brass, dark rubber, white
    (1.0, 1.0, 1.02),
    (0.85, 0.92, 1.08),
    (0.78, 1.0, 0.8),
    (1.1, 0.95, 0.65),
    (0.55, 0.55, 0.58),
    (1.15, 1.15, 1.12),
]


def _photo(name: str) -> np.ndarray:
    from skimage import data

    a = getattr(data, name)()
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    return a.astype(np.float32) / 255.0


def _surface(rng: np.random.Generator, size: int, cache: dict[str, np.ndarray]) -> np.ndarray:
    name = str(rng.choice(_PHOTOS))
    src = cache.setdefault(name, _photo(name))
    side = int(rng.integers(min(96, min(src.shape)), min(src.shape) + 1))
    y = int(rng.integers(0, src.shape[0] - side + 1))
    x = int(rng.integers(0, src.shape[1] - side + 1))
    crop = Image.fromarray((src[y : y + side, x : x + side] * 255).astype(np.uint8))
    g = np.asarray(crop.resize((size, size), Image.BICUBIC), np.float32) / 255.0
    g = np.rot90(g, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        g = g[:, ::-1]
    # flatten the photo's own contrast a little, like a machined part's texture
    g = 0.5 + (g - g.mean()) * float(rng.uniform(0.35, 0.9)) + float(rng.uniform(-0.1, 0.1))
    tint = np.array(_TINTS[int(rng.integers(len(_TINTS)))], np.float32)
    return np.clip(g[..., None] * tint, 0, 1)


def _lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5)) * rng.uniform(0.1, 0.5)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    vign = 1 - rng.uniform(0.0, 0.35) * (((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2) * 2
    out = img * (1 + grad)[..., None] * vign[..., None]
    out = np.clip(out, 0, 1) ** rng.uniform(0.75, 1.35)
    return out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)


def _supersampled(size: int, draw_fn: Any, k: int = 4) -> np.ndarray:
    """A float mask in [0, 1] drawn at ``k``x and averaged down (anti-aliased)."""
    big = Image.new("L", (size * k, size * k), 0)
    draw_fn(ImageDraw.Draw(big), k)
    return np.asarray(big.resize((size, size), Image.BOX), np.float32) / 255.0


def _scratch(size: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(1, 4))
    length = rng.uniform(40, 160)
    p0 = rng.uniform(0.15, 0.85, 2) * size
    ang = rng.uniform(0, np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    ctrl = p0 + d * length / 2 + rng.normal(0, length / 5, 2)
    p2 = p0 + d * length

    def draw(dr: ImageDraw.ImageDraw, k: int) -> None:
        for s in range(n):
            off = np.array([-d[1], d[0]]) * s * rng.uniform(3, 7)
            t = np.linspace(0, 1, 40)[:, None]
            pts = (1 - t) ** 2 * (p0 + off) + 2 * (1 - t) * t * (ctrl + off) + t**2 * (p2 + off)
            pts = np.clip(pts, 2, size - 3) * k
            dr.line([tuple(p) for p in pts], fill=255, width=max(1, int(rng.uniform(1, 3) * k)))

    return _supersampled(size, draw)


def _crack(size: int, rng: np.random.Generator) -> np.ndarray:
    def walk(dr: ImageDraw.ImageDraw, k: int, p: np.ndarray, ang: float, steps: int) -> None:
        pts = [p.copy()]
        for _ in range(steps):
            ang += rng.normal(0, 0.45)
            p = np.clip(p + 3.0 * np.array([np.cos(ang), np.sin(ang)]), 2, size - 3)
            pts.append(p.copy())
            if rng.random() < 0.04 and steps > 8:
                walk(dr, k, p.copy(), ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), steps // 2)
        dr.line([tuple(q * k) for q in pts], fill=255, width=max(1, int(rng.uniform(1, 2.2) * k)))

    start = rng.uniform(0.2, 0.8, 2) * size
    return _supersampled(
        size, lambda dr, k: walk(dr, k, start, rng.uniform(0, 2 * np.pi), int(rng.integers(10, 40)))
    )


def _blob(size: int, rng: np.random.Generator, r: float, smooth: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = rng.uniform(0.15, 0.85, 2) * size
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), smooth)
    noise /= noise.std() + 1e-6
    dist = np.hypot(xx - c[0], yy - c[1]) / r
    return ((dist + 0.35 * noise) < 1.0).astype(np.float32)


def _hole(size: int, rng: np.random.Generator) -> np.ndarray:
    c, r = rng.uniform(0.15, 0.85, 2) * size, rng.uniform(3, 10)
    ang = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(6, 11))))
    rad = r * rng.uniform(0.6, 1.3, len(ang))
    pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
    return _supersampled(size, lambda dr, k: dr.polygon([tuple(p * k) for p in pts], fill=255))


def _apply(img: np.ndarray, cls: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of class ``cls``; returns (image, mask)."""
    size = img.shape[0]
    if cls == "scratch":
        m = _scratch(size, rng)
        tone = rng.choice([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.2)])
        img = img * (1 - m[..., None] * 0.85) + tone * m[..., None] * 0.85
    elif cls == "crack":
        m = _crack(size, rng)
        img = img * (1 - 0.8 * m[..., None])
    elif cls == "dent":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        c = rng.uniform(0.15, 0.85, 2) * size
        rx, ry = rng.uniform(6, 20), rng.uniform(6, 20)
        bump = np.exp(-(((xx - c[0]) / rx) ** 2 + ((yy - c[1]) / ry) ** 2))
        light = rng.uniform(0, 2 * np.pi)
        gy, gx = np.gradient(bump)
        shade = (np.cos(light) * gx + np.sin(light) * gy) * rng.uniform(4, 9)
        img = img + shade[..., None] * 0.5
        m = (bump > 0.25).astype(np.float32)
    elif cls == "stain":
        m = _blob(size, rng, rng.uniform(8, 30), rng.uniform(2, 5))
        soft = ndimage.gaussian_filter(m, 1.5)
        color = np.array(
            [(0.45, 0.3, 0.1), (0.7, 0.65, 0.2), (0.1, 0.1, 0.1), (0.3, 0.35, 0.5)][
                int(rng.integers(4))
            ],
            np.float32,
        )
        a = rng.uniform(0.3, 0.6) * soft[..., None]
        img = img * (1 - a) + color * a
    else:  # hole
        m = _hole(size, rng)
        inside = m > 0.5
        rim = (ndimage.binary_dilation(inside, iterations=1) & ~inside).astype(np.float32)
        img = img * (1 - m[..., None]) + 0.03 * m[..., None]
        img = img * (1 - rim[..., None] * 0.6) + 0.95 * rim[..., None] * 0.6
    return np.clip(img, 0, 1), m


def _box(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask > 0.3)
    if len(xs) == 0:
        return None
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    return [x1, y1, x2 - x1, y2 - y1]


def write_heldout(
    out: str | Path,
    n_images: int,
    seed: int,
    size: int = 256,
    good_fraction: float = 0.35,
    class_mix: dict[str, float] | None = None,
) -> Path:
    """Write ``n_images`` images and their COCO ``annotations.json`` under ``out``."""
    mix = class_mix or CLASS_MIX
    names, probs = list(mix), np.array(list(mix.values()), float)
    probs /= probs.sum()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns, cache = [], [], {}
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        img = _lighting(_surface(rng, size, cache), rng)
        boxes: list[tuple[str, list[float]]] = []
        if rng.random() >= good_fraction:
            main = str(rng.choice(names, p=probs))
            for _ in range(int(rng.integers(1, 4))):
                cls = main if rng.random() < 0.8 else str(rng.choice(names, p=probs))
                img, m = _apply(img, cls, rng)
                if (b := _box(m)) is not None and b[2] >= 2 and b[3] >= 2:
                    boxes.append((cls, b))
        pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        if rng.random() < 0.5:
            pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
        if rng.random() < 0.3:  # JPEG artefacts, stored losslessly
            buf = io.BytesIO()
            pil.save(buf, "JPEG", quality=int(rng.integers(60, 90)))
            pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        name = f"images/{i:04d}.png"
        pil.save(out / name, optimize=False)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for cls, b in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": names.index(cls) + 1 if cls in names else 0,
                    "bbox": [round(v, 1) for v in b],
                    "area": round(b[2] * b[3], 1),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(names)]
    (out / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--good-fraction", type=float, default=0.35)
    a = ap.parse_args()
    write_heldout(a.out, a.images, a.seed, a.size, a.good_fraction)
    print(f"wrote {a.images} images to {a.out}")


if __name__ == "__main__":
    main()
