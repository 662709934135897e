"""The :mod:`core.serve` predictor of a vision_qc model directory: :class:`DefectPredictor`.

Request decoding (multipart images or base64 JSON), the per-request limits
(:class:`ServeLimits`: image count, pixels, formats) and the response shape; the work itself
is :class:`~pipelines.vision_qc.predict.DefectDetector`'s.

The QC operator's inspections (``ROUTES``; the review page ``UI`` at ``/ui/`` uses only these)::

    POST /v1/inspections                   one image (multipart) -> judged and kept
    GET  /v1/inspections?verdict=pass|fail|all&class=NAME&review=open|decided|all&limit&offset
    GET  /v1/inspections/export            the ones marked right, as a zipped COCO data set
    GET  /v1/inspections/{id}              boxes, scores, verdict at the threshold, review
    GET  /v1/inspections/{id}/image        the image as uploaded
    POST /v1/inspections/{id}/review       {"correct": true|false, "note"?, "reviewer"?}

Uploads for inspection share the dynamic batch with ``/predict``; kept in ``inspections``
(``inspections.InspectionLog``; a temporary folder when not given).

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

from core.serve.predictor import (
    Binary,
    MultipartBody,
    NotFound,
    Ready,
    Reply,
    RequestError,
    Route,
    RouteCall,
    query_choice,
    query_int,
    review_body,
)
from core.serve.ui import UiPage
from pipelines.vision_qc.data import MIN_SIDE, rgb8
from pipelines.vision_qc.inspections import InspectionLog
from pipelines.vision_qc.predict import DefectDetector

ROUTES = (
    Route("GET", "/v1/inspections", "list"),
    Route("POST", "/v1/inspections", "inspect"),
    Route("GET", "/v1/inspections/export", "export"),  # before {inspection_id}: matched first
    Route("GET", "/v1/inspections/{inspection_id}", "get"),
    Route("GET", "/v1/inspections/{inspection_id}/image", "image"),
    Route("POST", "/v1/inspections/{inspection_id}/review", "review"),
)
# a QC operator's screen: upload or pick an image -> boxes, scores and the verdict at the
# operating threshold; a gallery of recent decisions; right/wrong marks; COCO export
UI = UiPage("Inspections", "pipelines.vision_qc")


def _missing(iid: str) -> NotFound:
    return NotFound([{"loc": ["path", "inspection_id"], "msg": f"no inspection {iid!r}"}])


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
        inspections: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.threads = threads
        self.limits = limits or ServeLimits()
        self.detector: DefectDetector | None = None
        self.inspections = inspections
        self.log: InspectionLog | None = None

    def load(self) -> None:
        self.detector = DefectDetector(
            self.model_dir, threads=self.threads, max_pixels=self.limits.max_pixels
        )
        self.log = InspectionLog(self.inspections)

    def warmup(self) -> None:
        assert self.detector is not None
        self.detector.detect(np.zeros((self.detector.size, self.detector.size, 3), np.uint8))

    def _image(self, data: bytes, loc: list[Any]) -> np.ndarray:
        return self._read(data, loc)[0]

    def _read(self, data: bytes, loc: list[Any]) -> tuple[np.ndarray, str, int, int]:
        """The image as RGB, its format and size; a 422 naming ``loc`` when it will not do."""
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
                size = im.width, im.height
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise RequestError([{"loc": loc, "msg": f"not a readable image ({exc})"}]) from exc
        return np.asarray(rgb), str(fmt), *size

    def _route(self, call: RouteCall) -> list[Any]:
        assert self.log is not None and self.detector is not None
        q = call.query
        if call.route == "inspect":
            body = call.body
            if not isinstance(body, MultipartBody) or len(body.files) != 1:
                raise RequestError([{"loc": ["body", "files"], "msg": "attach one image file (multipart/form-data)"}])  # fmt: skip
            f = body.files[0]
            loc = ["body", "files", f.filename or f.field]
            array, fmt, w, h = self._read(f.data, loc)
            return [("inspect", (array, f.data, fmt, f.filename, w, h))]
        if call.route == "list":
            verdict = query_choice(q, "verdict", ("all", "pass", "fail"))
            review = query_choice(q, "review", ("all", "open", "decided"))
            cls = q.get("class") or None
            if cls is not None and cls not in self.detector.classes:
                raise RequestError([{"loc": ["query", "class"], "msg": f"must be one of {', '.join(self.detector.classes)}"}])  # fmt: skip
            limit, offset = query_int(q, "limit", 60, 1, 500), query_int(q, "offset", 0, 0, 10**9)
            rows = self.log.list(verdict, cls, review, limit, offset)
            return [Ready(Reply(inspections=rows, classes=self.detector.classes,
                                threshold=self.detector.threshold))]  # fmt: skip
        if call.route == "export":
            data = self.log.export_coco(self.detector.classes)
            return [Ready(Binary(data, "application/zip", "inspections-coco.zip"))]
        iid = call.params["inspection_id"]
        if call.route == "image":
            got = self.log.image(iid)
            if got is None:
                raise _missing(iid)
            return [Ready(Binary(*got))]
        if call.route == "get":
            item = self.log.get(iid)
            if item is None:
                raise _missing(iid)
            return [Ready(Reply(item))]
        correct, note, reviewer = review_body(  # review
            call.body, "correct", (True, False), 'send {"correct": true} or {"correct": false}'
        )
        try:
            mark = self.log.review(iid, correct, note, reviewer)
        except KeyError:
            raise _missing(iid) from None
        return [Ready(Reply(id=iid, review=mark))]

    def decode(self, body: Any) -> list[Any]:
        import base64
        import binascii

        if isinstance(body, RouteCall):
            return self._route(body)
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

    def predict_batch(self, items: list[Any]) -> list[Any]:
        """Images from ``/predict`` and from inspections in one detector batch."""
        assert self.detector is not None and self.log is not None
        out: list[Any] = [None] * len(items)
        arrays = [it if isinstance(it, np.ndarray) else it[1][0] for it in items]
        for i, res in enumerate(self.detector.detect_batch(arrays)):
            if isinstance(items[i], np.ndarray):
                out[i] = res
            else:
                _, data, fmt, filename, w, h = items[i][1]
                out[i] = Reply(
                    self.log.record(data, fmt, filename, w, h, res, self.detector.threshold)
                )
        return out

    def encode(self, outputs: list[Any]) -> dict[str, Any]:
        if len(outputs) == 1 and isinstance(outputs[0], Reply):
            return {"model": self.name, "version": self.version, **outputs[0]}
        return {"model": self.name, "version": self.version, "predictions": outputs}
