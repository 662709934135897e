"""The inspection log: images the detector judged, kept with its verdict for a person to review
and for retraining.

One folder: ``images/<id>.<ext>`` (the bytes as uploaded, written atomically) and
``reviews.sqlite`` (``core.reviews``: one item per inspection, kind ``inspection``, grouped by
verdict ``pass``/``fail``; a reviewer's ``right``/``wrong`` marks appended as decisions, the
latest counting). :meth:`InspectionLog.export_coco` writes what reviewers confirmed as a COCO
data set (``annotations.json`` + ``images/``, zipped) that ``vision-qc train --format coco``
reads back; the inspections marked wrong are listed under ``needs_relabel`` instead, since
their boxes are what the model got wrong.

Not here: detection (``predict.py``), request decoding and HTTP (``serve.py``, ``core.serve``).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from core.atomic import atomic_file
from core.reviews import ReviewStore

KIND = "inspection"
MEDIA = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"),
         "BMP": ("bmp", "image/bmp"), "TIFF": ("tif", "image/tiff")}  # fmt: skip
MARKS = {True: "right", False: "wrong"}


class InspectionLog:
    """Inspections in ``folder`` (a temporary folder, gone at exit, when None)."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="dv-inspections-") if folder is None else None
        )
        self.folder = Path(self._tmp.name if self._tmp else folder)  # type: ignore[arg-type]
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self.store = ReviewStore(self.folder / "reviews.sqlite")

    def record(
        self,
        data: bytes,
        fmt: str,
        filename: str | None,
        width: int,
        height: int,
        result: dict[str, Any],
        threshold: float,
    ) -> dict[str, Any]:
        """Keep one judged image; returns the stored inspection."""
        iid = secrets.token_hex(8)
        ext, _ = MEDIA[fmt]
        with atomic_file(self.folder / "images" / f"{iid}.{ext}") as tmp:
            tmp.write_bytes(data)
        payload = {
            "filename": filename,
            "file": f"{iid}.{ext}",
            "format": fmt,
            "width": width,
            "height": height,
            "threshold": threshold,
            **result,
            "classes": sorted({d["class"] for d in result["detections"]}),
        }
        verdict = "fail" if result["defective"] else "pass"
        self.store.add(KIND, iid, payload, score=result["defect_score"], group=verdict)
        return self.get(iid)  # type: ignore[return-value]

    def get(self, iid: str) -> dict[str, Any] | None:
        item = self.store.item(KIND, iid)
        return None if item is None else _public(item)

    def list(
        self,
        verdict: str = "all",
        cls: str | None = None,
        review: str = "all",
        limit: int = 60,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Newest first; ``verdict`` pass/fail/all, ``cls`` a class that must be among the
        detections, ``review`` open (not reviewed)/decided/all."""
        group = None if verdict == "all" else verdict
        if cls is None:
            rows = self.store.items(KIND, review, group, "time", limit, offset)
        else:  # the class lives in the payload: filter a bounded window of the newest
            rows = [r for r in self.store.items(KIND, review, group, "time", 5000)
                    if cls in r["payload"]["classes"]][offset : offset + limit]  # fmt: skip
        return [_public(r) for r in rows]

    def image(self, iid: str) -> tuple[bytes, str] | None:
        item = self.store.item(KIND, iid)
        if item is None:
            return None
        path = self.folder / "images" / item["payload"]["file"]
        return path.read_bytes(), MEDIA[item["payload"]["format"]][1]

    def review(
        self, iid: str, correct: bool, note: str | None = None, reviewer: str | None = None
    ) -> dict[str, Any]:
        """Mark an inspection right or wrong (a later mark replaces it; all are kept)."""
        return self.store.decide(KIND, iid, MARKS[correct], note, reviewer)

    def export_coco(self, classes: list[str]) -> bytes:
        """The inspections marked right as a zipped COCO data set (their detections as the
        boxes), and the names of those marked wrong under ``needs_relabel``."""
        rows = self.store.items(KIND, "decided", order="time", limit=10**9)
        cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
        cat_id = {c["name"]: c["id"] for c in cats}
        images, anns, relabel = [], [], []
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for n, r in enumerate(reversed(rows), 1):
                p = r["payload"]
                name = f"images/{p['file']}"
                if r["decision"]["verdict"] != MARKS[True]:
                    relabel.append(name)
                    zf.write(self.folder / "images" / p["file"], name)
                    continue
                zf.write(self.folder / "images" / p["file"], name)
                images.append(
                    {"id": n, "file_name": name, "width": p["width"], "height": p["height"]}
                )
                for d in p["detections"]:
                    x1, y1, x2, y2 = d["bbox"]
                    anns.append({"id": len(anns) + 1, "image_id": n, "category_id": cat_id[d["class"]],
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                 "iscrowd": 0})  # fmt: skip
            coco = {"images": images, "annotations": anns, "categories": cats,
                    "needs_relabel": relabel}  # fmt: skip
            zf.writestr("annotations.json", json.dumps(coco, indent=1))
        return buf.getvalue()

    def close(self) -> None:
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """What clients see: no file names of the server's."""
    p = {k: v for k, v in item["payload"].items() if k != "file"}
    return {
        "id": item["id"],
        "at": item["at"],
        "verdict": item["group"],
        **p,
        "review": item["decision"],
        **({"history": item["history"]} if "history" in item else {}),
    }
