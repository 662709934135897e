"""The vision_qc inference object a customer imports: :class:`DefectDetector`.

It loads any vision_qc model directory (PyTorch, fp32 ONNX or INT8 ONNX) and runs
``detect(path | bytes | numpy | PIL)`` / ``detect_batch``: ``{"detections": [...],
"anomaly", "defective", ...}`` per image. Images larger than the training scale are tiled with
overlap at that scale (plus one downscaled whole-image pass for large defects) and merged with
NMS, so a small defect on a big part is not lost to downscaling. :func:`load_image` reads and
checks one image (format, size, bit depth).

Not here: the network and its exportable graph (``model.py``), metrics and the operating
threshold (``evaluate.py``), compression and parity (``deploy.py``), HTTP (``serve.py``).
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.artifacts import read_config
from core.errors import ConfigError, DataError, ModelLoadError
from pipelines.vision_qc.data import MIN_SIDE, full_range, rgb8
from pipelines.vision_qc.model import load_detector_net, postprocess

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike[str] | bytes | np.ndarray | Image.Image


# ---------------------------------------------------------------- images in
def load_image(image: ImageInput, where: str = "image", max_pixels: int = 64_000_000) -> np.ndarray:
    """Any accepted image (path, encoded bytes, numpy ``(H, W)`` / ``(H, W, 3|4)`` uint8,
    uint16 or float in [0, 1], PIL) -> float32 ``(H, W, 3)`` in [0, 1]; bad input raises
    DataError. 16-bit data (files and uint16 arrays; 12-bit stored in 16 too) is scaled to the
    full range (:func:`~pipelines.vision_qc.data.full_range`), never clipped."""
    if isinstance(image, str | os.PathLike | bytes):
        src = io.BytesIO(image) if isinstance(image, bytes) else image
        where = where if isinstance(image, bytes) else str(image)
        if not isinstance(image, bytes) and not Path(image).is_file():
            raise DataError("image file not found", where=where, fix="check the path")
        try:
            with Image.open(src) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(
                        f"image is {im.width}x{im.height} px, over the {max_pixels} px limit",
                        where=where,
                        fix="downscale the image or raise max_pixels",
                    )
                image = rgb8(im)
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"not a readable image ({type(exc).__name__}: {exc})",
                where=where,
                fix="send a PNG, JPEG, BMP or TIFF file",
            ) from exc
    if isinstance(image, Image.Image):
        arr = np.asarray(rgb8(image), dtype=np.float32) / 255.0
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise DataError(
                f"array of shape {image.shape} is not an image",
                where=where,
                fix="pass (H, W), (H, W, 3) or (H, W, 4)",
            )
        arr = arr[..., :3]
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = full_range(arr).astype(np.float32)
        elif arr.dtype.kind in "iub":
            raise DataError(
                f"integer image of dtype {arr.dtype}",
                where=where,
                fix="pass uint8 or uint16 (12 or 16 bits), or float in [0, 1]",
            )
        else:
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise DataError("image holds NaN or infinity", where=where, fix="clean the array")
            if arr.min() < 0.0 or arr.max() > 1.0:
                raise DataError(
                    f"{image.dtype} image values lie in [{arr.min():.3g}, {arr.max():.3g}], "
                    "not [0, 1]",
                    where=where,
                    fix="scale to [0, 1] or pass uint8 / uint16",
                )
        if arr.shape[0] * arr.shape[1] > max_pixels:
            raise DataError(
                f"image is {arr.shape[1]}x{arr.shape[0]} px, over the {max_pixels} px limit",
                where=where,
                fix="downscale the image or raise max_pixels",
            )
    else:
        raise DataError(
            f"unsupported image type {type(image).__name__}",
            where=where,
            fix="pass a path, encoded bytes, a numpy array or a PIL image",
        )
    if min(arr.shape[:2]) < MIN_SIDE:  # files and arrays alike: nothing to inspect in 1x1 px
        raise DataError(
            f"image is {arr.shape[1]}x{arr.shape[0]} px, smaller than {MIN_SIDE}x{MIN_SIDE}",
            where=where,
            fix="send the full part image",
        )
    return np.ascontiguousarray(arr)


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    im = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, overlapping by ``overlap``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile * (1 - overlap))) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


@dataclass
class _View:
    image: int  # index in the batch
    x0: int  # origin in the image
    y0: int
    sx: float  # image px per model px
    sy: float


# ---------------------------------------------------------------- the predictor
class DefectDetector:
    """Runs a vision_qc model directory (PyTorch weights or ``model.onnx``, fp32 or INT8).

    ``detect`` returns ``{"detections": [{"class", "score", "bbox": [x1, y1, x2, y2]}],
    "defect_score", "anomaly_score", "defective"}`` with boxes in the input image's pixels.
    ``threshold`` defaults to the operating threshold stored by evaluation (``config.json``).
    ``tile``: ``None`` tiles images larger than 1.5x the training scale, ``True`` always,
    ``False`` never (one downscaled pass).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        threshold: float | None = None,
        tile: bool | None = None,
        tile_overlap: float = 0.25,
        threads: int | None = None,
        max_batch: int = 16,
        max_pixels: int = 64_000_000,
    ) -> None:
        self.model_dir = Path(model_dir)
        cfg = read_config(self.model_dir)
        if cfg.get("task") != "vision_qc":
            raise ModelLoadError(
                f"not a vision_qc model (task {cfg.get('task')!r})",
                where=str(self.model_dir),
                fix="point at a directory written by vision-qc train or compress",
            )
        self.config = cfg
        self.classes: list[str] = list(cfg["classes"])
        self.size = int(cfg["input_shape"][-1])
        self.source_size = int(cfg.get("source_size", self.size))
        self.has_bank = bool(cfg.get("anomaly_bank"))
        self.threshold = float(threshold if threshold is not None else cfg.get("threshold", 0.5))
        self.score_thresh = float(cfg.get("arch_kwargs", {}).get("score_thresh", 0.05))
        self.max_det = int(cfg.get("arch_kwargs", {}).get("detections_per_img", 50))
        if not 0.0 <= tile_overlap < 0.9:
            raise ConfigError("tile_overlap must lie in [0, 0.9)", fix="use e.g. 0.25")
        self.tile, self.tile_overlap = tile, tile_overlap
        self.max_batch, self.max_pixels = max_batch, max_pixels
        self.backend = "onnx" if (self.model_dir / "model.onnx").is_file() else "torch"
        self._run = self._load_onnx(threads) if self.backend == "onnx" else self._load_torch()

    def _load_onnx(self, threads: int | None) -> Any:
        from core.compress.report import load_ort_session

        sess = load_ort_session(self.model_dir / "model.onnx", threads, "re-run vision-qc compress")
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})

    def _load_torch(self) -> Any:
        net = load_detector_net(self.model_dir)

        def run(x: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                return [t.numpy() for t in net(torch.from_numpy(x))]

        return run

    # -- views: the whole image resized, plus overlapping tiles at the training scale
    def _views(self, arr: np.ndarray, index: int) -> tuple[list[_View], list[np.ndarray]]:
        h, w = arr.shape[:2]
        views = [_View(index, 0, 0, w / self.size, h / self.size)]
        crops = [_resize(arr, self.size)]
        big = max(h, w) > 1.5 * self.source_size
        if self.tile or (self.tile is None and big):
            t = self.source_size
            for y0 in tile_origins(h, t, self.tile_overlap):
                for x0 in tile_origins(w, t, self.tile_overlap):
                    crop = arr[y0 : y0 + t, x0 : x0 + t]
                    views.append(
                        _View(index, x0, y0, crop.shape[1] / self.size, crop.shape[0] / self.size)
                    )
                    crops.append(_resize(crop, self.size))
        return views, crops

    def _forward(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = []
        steps = math.ceil(len(crops) / self.max_batch)
        for i in range(0, len(crops), self.max_batch):
            x = np.stack(crops[i : i + self.max_batch]).transpose(0, 3, 1, 2)
            outs.append(self._run(np.ascontiguousarray(x, dtype=np.float32)))
            if steps > 4:  # a large image in many tiles: show that it moves
                log.info("tiles %d/%d", min(i + self.max_batch, len(crops)), len(crops))
        return [np.concatenate([o[k] for o in outs]) for k in range(3)]

    def raw_batch(self, images: list[ImageInput]) -> list[dict[str, Any]]:
        """Every detection above the model's score floor, per image: ``boxes`` (K, 4) in image
        pixels, ``scores``, ``labels`` (1..C), and ``anomaly`` (the image's anomaly score)."""
        arrays = [load_image(im, f"image {i}", self.max_pixels) for i, im in enumerate(images)]
        views: list[_View] = []
        crops: list[np.ndarray] = []
        for i, arr in enumerate(arrays):
            v, c = self._views(arr, i)
            views += v
            crops += c
        boxes, scores, anomaly = self._forward(crops)
        per_image: list[list[dict[str, np.ndarray]]] = [[] for _ in arrays]
        anom = np.zeros(len(arrays), np.float32)
        for k, v in enumerate(views):
            d = postprocess(boxes[k], scores[k], self.score_thresh, max_det=self.max_det)
            d["boxes"] = d["boxes"] * np.array([v.sx, v.sy, v.sx, v.sy], np.float32) + np.array(
                [v.x0, v.y0, v.x0, v.y0], np.float32
            )
            per_image[v.image].append(d)
            anom[v.image] = max(anom[v.image], float(anomaly[k]))
        out = []
        for i, parts in enumerate(per_image):
            # the cap holds per view (whole image, each tile): a large part may carry more
            # defects than one view's cap, and capping after the merge dropped real ones
            merged = parts[0] if len(parts) == 1 else _merge(parts, self.max_det * len(parts))
            out.append({**merged, "anomaly": float(anom[i])})
        return out

    def detect_batch(self, images: list[ImageInput]) -> list[dict[str, Any]]:
        """Detections at the operating threshold, one dict per image (see the class docstring)."""
        results = []
        for raw in self.raw_batch(images):
            keep = raw["scores"] >= self.threshold
            dets = [
                {
                    "class": self.classes[int(lab) - 1],
                    "score": round(float(s), 4),
                    "bbox": [round(float(v), 1) for v in b],
                }
                for b, s, lab in zip(
                    raw["boxes"][keep], raw["scores"][keep], raw["labels"][keep], strict=True
                )
            ]
            top = float(raw["scores"].max()) if len(raw["scores"]) else 0.0
            results.append(
                {
                    "detections": dets,
                    "defect_score": round(top, 4),
                    "anomaly_score": round(raw["anomaly"], 4) if self.has_bank else None,
                    "defective": top >= self.threshold,
                }
            )
        return results

    def detect(self, image: ImageInput) -> dict[str, Any]:
        """Detections for one image (path, encoded bytes, numpy array or PIL image)."""
        return self.detect_batch([image])[0]


def _merge(parts: list[dict[str, np.ndarray]], max_det: int, iou: float = 0.5) -> dict[str, Any]:
    from torchvision.ops import batched_nms

    boxes = np.concatenate([p["boxes"] for p in parts]).astype(np.float32)
    scores = np.concatenate([p["scores"] for p in parts]).astype(np.float32)
    labels = np.concatenate([p["labels"] for p in parts])
    keep = batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou
    )[:max_det].numpy()
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
