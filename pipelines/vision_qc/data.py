"""Reading the inspection data users have: MVTec AD folders, COCO JSON, YOLO txt labels.

Every reader returns a :class:`DetectionSet`: one :class:`Sample` per image with boxes
``[x1, y1, x2, y2]`` in pixels, class names and the split it came from. MVTec masks become one
box per connected component, classed by the defect folder. Problems are collected per file
(unreadable or corrupt image, box outside the image, unknown class, missing mask, bad label
line) and raised together as one :class:`~core.errors.DataError` naming each file and reason;
an empty set is an error too. :func:`manifest` records a SHA-256 per file; :func:`split`
makes seeded, class-stratified train/val splits. Not here: augmentation (``train.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from core.errors import DataError
from pipelines.vision_qc.config import DataConfig

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8  # px: smaller images are refused, not scored
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def full_range(a: np.ndarray) -> np.ndarray:
    """A 16-bit (or wider) grayscale array as float in [0, 1]: divided by 4095 when every
    value fits 12 bits (12-bit sensors store into 16-bit files), else by 65535."""
    a = np.asarray(a, dtype=np.float64)
    top = 4095.0 if a.size and a.max() <= 4095 else 65535.0
    return np.clip(a / top, 0.0, 1.0)


def rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL image. 16-bit grayscale PNG/TIFF (modes ``I;16``, ``I``) is scaled
    to the full range by :func:`full_range`, where PIL's ``convert("RGB")`` clips it at 255 and
    a 16-bit part photo turns almost white."""
    if im.mode in _WIDE_MODES:
        a8 = (full_range(np.asarray(im)) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(a8).convert("RGB")
    return im.convert("RGB")


@dataclass
class Sample:
    path: Path
    boxes: list[list[float]] = field(default_factory=list)  # [x1, y1, x2, y2], pixels
    labels: list[str] = field(default_factory=list)
    split: str = "train"
    width: int = 0
    height: int = 0

    @property
    def defective(self) -> bool:
        return bool(self.boxes)


@dataclass
class DetectionSet:
    samples: list[Sample]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: Any, why: str) -> None:
        self.items.append((str(where), why))

    def raise_if_any(self, what: str) -> None:
        if self.items:
            shown = "; ".join(f"{w}: {r}" for w, r in self.items[:5])
            more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise DataError(
                f"{len(self.items)} problem(s) in {what}: {shown}{more}",
                where=self.items[0][0],
                fix="fix or remove the files named",
            )


def _image_size(path: Path, problems: _Problems) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            im.verify()  # catches truncated and corrupt files without decoding everything
        with Image.open(path) as im:
            im.load()
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        problems.add(path, f"unreadable image ({type(exc).__name__}: {exc})")
        return None


def _check_boxes(sample: Sample, classes: tuple[str, ...], problems: _Problems) -> None:
    for box, label in zip(sample.boxes, sample.labels, strict=True):
        x1, y1, x2, y2 = box
        if label not in classes:
            problems.add(sample.path, f"unknown class {label!r} (known: {list(classes)})")
        if not (x1 < x2 and y1 < y2):
            problems.add(
                sample.path,
                f"box {box} is inverted or empty (needs x1 < x2 and y1 < y2; COCO boxes are "
                "[x, y, width, height] with positive width and height)",
            )
        elif not (x1 >= 0 and x2 <= sample.width and y1 >= 0 and y2 <= sample.height):
            problems.add(sample.path, f"box {box} outside the {sample.width}x{sample.height} image")


def _finish(
    samples: list[Sample], classes: tuple[str, ...], problems: _Problems, what: str
) -> DetectionSet:
    for s in samples:
        _check_boxes(s, classes, problems)
    problems.raise_if_any(what)
    if not samples:
        raise DataError(f"no images found in {what}", where=what, fix="check the path and layout")
    return DetectionSet(samples, classes)


def boxes_from_mask(mask: np.ndarray) -> list[list[float]]:
    """One ``[x1, y1, x2, y2]`` box per 8-connected component of a binary mask."""
    lab, _ = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    return [
        [float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)]
        for sl in ndimage.find_objects(lab)
        if sl is not None
    ]


def load_dataset(cfg: DataConfig) -> DetectionSet:
    """The data set ``cfg`` describes (format, root, classes)."""
    if cfg.format == "mvtec":
        return load_mvtec(cfg.root, classes=cfg.classes)
    if cfg.format == "coco":
        return load_coco(
            cfg.extra.get("json", str(Path(cfg.root) / "annotations.json")), cfg.root, cfg.classes
        )
    return load_yolo(
        cfg.extra.get("images", str(Path(cfg.root) / "images")),
        cfg.extra.get("labels", str(Path(cfg.root) / "labels")),
        cfg.classes,
    )


def load_mvtec(root: str | Path, classes: tuple[str, ...] | None = None) -> DetectionSet:
    """An MVTec AD category folder (``train/good``, ``test/<defect>``, ``ground_truth/<defect>``),
    or a folder of such categories (all are read; one detector serves every product line)."""
    root = Path(root)
    cats = (
        sorted(p for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
        if root.is_dir()
        else []
    )
    if cats and not (root / "train").is_dir() and not (root / "test").is_dir():
        sets = [load_mvtec(c, classes) for c in cats]
        known = tuple(classes) if classes else tuple(sorted({c for s in sets for c in s.classes}))
        return DetectionSet([x for s in sets for x in s.samples], known)
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        if (root / "annotations.json").is_file() or any(root.glob("*.json")):
            fix = "this looks like a COCO data set: pass --format coco (format='coco')"
        elif (root / "labels").is_dir():
            fix = "this looks like a YOLO data set: pass --format yolo (format='yolo')"
        else:
            fix = "point at a category folder such as .../bottle, or pass --format coco|yolo"
        raise DataError(
            "not an MVTec category folder (no train/ or test/)", where=str(root), fix=fix
        )
    found = (
        sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
        if (root / "test").is_dir()
        else []
    )
    classes = tuple(classes) if classes else tuple(found)
    problems = _Problems()
    samples: list[Sample] = []
    for split in ("train", "test"):
        base = root / split
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS):
                size = _image_size(img, problems)
                if size is None:
                    continue
                s = Sample(img, split=split, width=size[0], height=size[1])
                if folder.name != "good":
                    mask_path = root / "ground_truth" / folder.name / f"{img.stem}_mask.png"
                    if not mask_path.is_file():
                        problems.add(img, f"missing mask {mask_path.relative_to(root)}")
                        continue
                    mask = np.asarray(Image.open(mask_path).convert("L"))
                    if mask.shape != (size[1], size[0]):
                        problems.add(
                            mask_path,
                            f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {size[0]}x{size[1]}",
                        )
                        continue
                    s.boxes = boxes_from_mask(mask)
                    s.labels = [folder.name] * len(s.boxes)
                    if not s.boxes:
                        problems.add(mask_path, "mask is empty for a defective image")
                samples.append(s)
    return _finish(samples, classes, problems, str(root))


def _split_tag(file_name: str) -> str:
    """``test`` for an image inside a ``test`` folder (``test/a.png``, ``x/test/b.png``)."""
    from pathlib import PurePosixPath

    return "test" if "test" in PurePosixPath(file_name.replace("\\", "/")).parts[:-1] else "train"


def load_coco(
    json_path: str | Path,
    images_root: str | Path | None = None,
    classes: tuple[str, ...] | None = None,
) -> DetectionSet:
    """COCO detection JSON (``bbox`` as ``[x, y, w, h]``); file names relative to ``images_root``."""
    json_path = Path(json_path)
    try:
        coco = json.loads(json_path.read_text())
    except FileNotFoundError as exc:
        raise DataError(
            "COCO annotation file not found", where=str(json_path), fix="check the path"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"COCO file is not valid JSON ({exc.msg}, line {exc.lineno})",
            where=str(json_path),
            fix="fix or re-export the annotations",
        ) from exc
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise DataError(
            f"COCO file lacks {missing}", where=str(json_path), fix="export COCO detection format"
        )
    root = Path(images_root) if images_root else json_path.parent
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = tuple(classes) if classes else tuple(names[k] for k in sorted(names))
    problems = _Problems()
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    samples = []
    for im in coco["images"]:
        path = root / im["file_name"]
        size = _image_size(path, problems) if path.is_file() else None
        if size is None:
            if not path.is_file():
                problems.add(path, "image file listed in the COCO JSON does not exist")
            continue
        s = Sample(
            path,
            width=size[0],
            height=size[1],
            split=_split_tag(im["file_name"]),
        )
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            s.boxes.append([float(x), float(y), float(x + w), float(y + h)])
            s.labels.append(names.get(a["category_id"], f"<category {a['category_id']}>"))
        samples.append(s)
    return _finish(samples, classes, problems, str(json_path))


def load_yolo(
    images_dir: str | Path, labels_dir: str | Path, classes: tuple[str, ...]
) -> DetectionSet:
    """YOLO txt labels: ``class cx cy w h`` normalised to [0, 1], one file per image."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    problems = _Problems()
    samples = []
    for img in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        size = _image_size(img, problems)
        if size is None:
            continue
        w, h = size
        s = Sample(img, width=w, height=h)
        lbl = labels_dir / f"{img.stem}.txt"
        if lbl.is_file():
            for n, line in enumerate(lbl.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    k, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                    if len(parts) != 5:
                        raise ValueError
                except ValueError:
                    problems.add(f"{lbl}:{n}", f"expected 'class cx cy w h', got {line!r}")
                    continue
                if not 0 <= k < len(classes):
                    problems.add(f"{lbl}:{n}", f"class index {k} outside 0..{len(classes) - 1}")
                    continue
                s.boxes.append(
                    [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                )
                s.labels.append(classes[k])
        samples.append(s)
    return _finish(samples, tuple(classes), problems, str(images_dir))


def manifest(ds: DetectionSet, root: str | Path) -> dict[str, Any]:
    """File hashes and counts: what a model was trained on, for lineage."""
    root = Path(root)
    files = {
        str(s.path.relative_to(root)): hashlib.sha256(s.path.read_bytes()).hexdigest()
        for s in ds.samples
    }
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    counts: dict[str, int] = {}
    for s in ds.samples:
        for lab in s.labels:
            counts[lab] = counts.get(lab, 0) + 1
    return {"dataset_hash": digest, "images": len(files), "instances": counts, "files": files}


def split(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split stratified by each image's first class (``good`` for defect-free images)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.labels[0] if s.labels else "good", []).append(s)
    train, val = [], []
    for key in sorted(groups):
        items = groups[key]
        order = rng.permutation(len(items))
        n_val = round(val_fraction * len(items))
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return train, val
