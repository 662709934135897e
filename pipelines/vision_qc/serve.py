"""The :mod:`core.serve` predictor of a vision_qc model directory: :class:`DefectPredictor`.

Request decoding (multipart images or base64 JSON), the per-request limits
(:class:`ServeLimits`: image count, pixels, formats) and the response shape; the work itself
is :class:`~pipelines.vision_qc.predict.DefectDetector`'s.

Not here: the HTTP server, batching, metrics (``core.serve``); the CLI command (``cli.py``).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.vision_qc.data import MIN_SIDE, rgb8
from pipelines.vision_qc.predict import DefectDetector

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- serving
@dataclass
class ServeLimits:
    """What one request may carry."""

    max_images: int = 16  # images per request
    max_pixels: int = 16_000_000  # per image (width x height)
    formats: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")  # accepted encodings


class DefectPredictor:
    """The :mod:`core.serve` predictor of a vision_qc model directory.

    Requests: ``multipart/form-data`` with one or more image files (any field name), or JSON
    ``{"images": ["<base64>", ...]}`` (``"image": "<base64>"`` for one). Each image is
    checked for encoding, format and pixel count, and errors name the image (``loc``). The
    response: ``{"model", "version", "predictions": [DefectDetector.detect output, ...]}``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        threads: int | None = None,
        limits: ServeLimits | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.threads = threads
        self.limits = limits or ServeLimits()
        self.detector: DefectDetector | None = None

    def load(self) -> None:
        self.detector = DefectDetector(
            self.model_dir, threads=self.threads, max_pixels=self.limits.max_pixels
        )

    def warmup(self) -> None:
        assert self.detector is not None
        self.detector.detect(np.zeros((self.detector.size, self.detector.size, 3), np.uint8))

    def _image(self, data: bytes, loc: list[Any]) -> np.ndarray:
        from core.serve.predictor import RequestError

        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                if fmt not in self.limits.formats:
                    raise RequestError(
                        [
                            {
                                "loc": loc,
                                "msg": f"format {fmt} not accepted; send {list(self.limits.formats)}",
                            }
                        ]
                    )
                if im.width * im.height > self.limits.max_pixels:
                    raise RequestError(
                        [
                            {
                                "loc": loc,
                                "msg": f"image is {im.width}x{im.height} px, over the "
                                f"{self.limits.max_pixels} px limit",
                            }
                        ]
                    )
                if min(im.width, im.height) < MIN_SIDE:
                    raise RequestError(
                        [
                            {
                                "loc": loc,
                                "msg": f"image is {im.width}x{im.height} px, smaller than "
                                f"{MIN_SIDE}x{MIN_SIDE}",
                            }
                        ]
                    )
                rgb = rgb8(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise RequestError([{"loc": loc, "msg": f"not a readable image ({exc})"}]) from exc
        return np.asarray(rgb)

    def decode(self, body: Any) -> list[np.ndarray]:
        import base64
        import binascii

        from core.serve.predictor import MultipartBody, RequestError

        blobs: list[tuple[list[Any], bytes]] = []
        if isinstance(body, MultipartBody):
            blobs = [(["body", "files", f.filename or f.field], f.data) for f in body.files]
            if not blobs:
                raise RequestError([{"loc": ["body", "files"], "msg": "no image file attached"}])
        elif isinstance(body, dict) and ("images" in body or "image" in body):
            key = "images" if "images" in body else "image"
            raw = body[key] if key == "images" else [body[key]]
            if not isinstance(raw, list) or not raw:
                raise RequestError(
                    [{"loc": ["body", key], "msg": "must be a non-empty list of base64 strings"}]
                )
            errors = []
            for i, item in enumerate(raw):
                loc = ["body", key, i] if key == "images" else ["body", key]
                try:
                    if not isinstance(item, str):
                        raise ValueError
                    blobs.append((loc, base64.b64decode(item.split(",")[-1], validate=True)))
                except (binascii.Error, ValueError):
                    errors.append({"loc": loc, "msg": "must be a base64-encoded image"})
            if errors:
                raise RequestError(errors)
        else:
            raise RequestError(
                [
                    {
                        "loc": ["body"],
                        "msg": "send image files as multipart/form-data or JSON "
                        '{"images": ["<base64>", ...]}',
                    }
                ]
            )
        if len(blobs) > self.limits.max_images:
            raise RequestError(
                [{"loc": ["body"], "msg": f"at most {self.limits.max_images} images per request"}]
            )
        items, errors = [], []
        for loc, data in blobs:
            try:
                items.append(self._image(data, loc))
            except RequestError as exc:
                errors += exc.errors
        if errors:
            raise RequestError(errors)
        return items

    def predict_batch(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        assert self.detector is not None
        return self.detector.detect_batch(items)

    def encode(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": self.name, "version": self.version, "predictions": outputs}
