"""The study archive: segmented studies kept for a radiologist to review, slice by slice.

One folder per study under ``folder/<id>/``: ``volume.npy`` (int16 HU, ``(D, H, W)``, read
memory-mapped a slice at a time), ``labels.npy`` (uint16, nodule ``k`` = ``k``), the report
folder ``report/`` (``report.write_report``: JSON, Markdown, mask, overlays and, for a DICOM
study, the DICOM SEG, written while the source files still exist). Studies and nodules are items in ``reviews.sqlite`` (``core.reviews``: kind
``study``, and kind ``nodule`` with id ``<study>:<k>`` grouped by study); a radiologist's
accept/reject per nodule is appended as a decision, the latest counting.

Slices are rendered here as 8-bit PNG under a window (:data:`WINDOWS`: lung, mediastinum,
bone) and the predicted contours as a transparent PNG of the same size, one colour per
nodule. Not here: segmentation (``predict.py``), the report's contents (``report.py``), HTTP
(``serve.py``).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_dir
from core.reviews import ReviewStore
from pipelines.medical_ct.predict import StudyResult
from pipelines.medical_ct.report import write_report

#: (level, width) in HU
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "bone": (300.0, 2000.0)}
REPORTS = {
    "md": ("report.md", "text/markdown; charset=utf-8"),
    "json": ("report.json", "application/json"),
    "seg": ("seg.dcm", "application/dicom"),
}
MARKS = {True: "accepted", False: "rejected"}
_COLOURS = np.array(
    [[255, 45, 85], [255, 204, 0], [52, 199, 89], [0, 122, 255], [175, 82, 222], [255, 149, 0]],
    np.uint8,
)


class StudyArchive:
    """Studies in ``folder`` (a temporary folder, gone at exit, when None)."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dv-studies-") if folder is None else None
        self.folder = Path(self._tmp.name if self._tmp else folder)  # type: ignore[arg-type]
        self.folder.mkdir(parents=True, exist_ok=True)
        # uploads staged by a server that stopped (or shed them) before segmenting
        shutil.rmtree(self.folder / ".incoming", ignore_errors=True)
        self.store = ReviewStore(self.folder / "reviews.sqlite")

    # ------------------------------------------------------------------ write
    def add(self, res: StudyResult, filename: str | None = None) -> dict[str, Any]:
        """Keep one segmented study; returns it. For a DICOM study the source files must still
        exist (the DICOM SEG is written from them)."""
        sid = secrets.token_hex(8)
        summary = res.summary()
        with atomic_dir(self.folder / sid) as tmp:
            hu = np.clip(np.rint(res.volume.array), -32768, 32767).astype(np.int16)
            np.save(tmp / "volume.npy", hu)
            np.save(tmp / "labels.npy", res.labels.astype(np.uint16))
            write_report(res, tmp / "report")
        info = {
            "filename": filename,
            "shape": summary["shape"],
            "spacing_mm": summary["spacing_mm"],
            "study": summary["study"],
            "model": summary["model"],
            "seconds": summary["seconds"],
            "n_nodules": summary["n_nodules"],
            "reports": [k for k, (f, _) in REPORTS.items() if (self.folder / sid / "report" / f).is_file()],
        }  # fmt: skip
        now = time.time()
        rows = [("study", sid, info, None, None, now)]
        rows += [
            ("nodule", f"{sid}:{n['id']}", n, n["confidence"], sid, now) for n in summary["nodules"]
        ]
        self.store.add_many(rows)
        return self.get(sid)  # type: ignore[return-value]

    def review(
        self,
        sid: str,
        nodule: int,
        accept: bool,
        note: str | None = None,
        reviewer: str | None = None,
    ) -> dict[str, Any]:
        """Accept or reject one nodule (a later mark replaces it; all are kept); KeyError for
        an unknown study or nodule."""
        return self.store.decide("nodule", f"{sid}:{nodule}", MARKS[accept], note, reviewer)

    # ------------------------------------------------------------------- read
    def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Studies, newest first, with how many of their nodules are reviewed."""
        out = []
        for s in self.store.items("study", order="time", limit=limit, offset=offset):
            nods = self.store.items("nodule", group=s["id"], limit=10_000)
            out.append({"id": s["id"], "at": s["at"], **s["payload"],
                        "reviewed": sum(n["decision"] is not None for n in nods)})  # fmt: skip
        return out

    def get(self, sid: str) -> dict[str, Any] | None:
        item = self.store.item("study", sid)
        if item is None:
            return None
        nods = self.store.items("nodule", group=sid, limit=10_000)
        nodules = sorted(
            ({**n["payload"], "review": n["decision"]} for n in nods), key=lambda n: n["id"]
        )
        return {"id": sid, "at": item["at"], **item["payload"], "nodules": nodules,
                "windows": {k: {"level": lv, "width": w} for k, (lv, w) in WINDOWS.items()}}  # fmt: skip

    def _arrays(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        d = self.folder / sid
        if self.store.item("study", sid) is None or not (d / "volume.npy").is_file():
            raise KeyError(sid)
        return np.load(d / "volume.npy", mmap_mode="r"), np.load(d / "labels.npy", mmap_mode="r")

    def slice_png(self, sid: str, z: int, window: str = "lung") -> bytes:
        """Axial slice ``z`` under ``window`` as 8-bit grey PNG; KeyError / IndexError."""
        from PIL import Image

        vol, _ = self._arrays(sid)
        if not 0 <= z < vol.shape[0]:
            raise IndexError(z)
        level, width = WINDOWS[window]
        lo = level - width / 2
        grey = np.clip((np.asarray(vol[z], np.float32) - lo) / width * 255.0, 0, 255)
        return _png(Image.fromarray(grey.astype(np.uint8), "L"))

    def contour_png(self, sid: str, z: int) -> bytes:
        """The predicted nodules' outlines on slice ``z`` (RGBA, transparent elsewhere)."""
        from PIL import Image
        from scipy import ndimage

        _, labels = self._arrays(sid)
        if not 0 <= z < labels.shape[0]:
            raise IndexError(z)
        lab = np.asarray(labels[z])
        rgba = np.zeros((*lab.shape, 4), np.uint8)
        if lab.any():
            edge = (lab > 0) & ~ndimage.binary_erosion(lab > 0, np.ones((3, 3), bool))
            edge |= (lab != ndimage.grey_erosion(lab, size=(3, 3))) & (lab > 0)  # touching nodules
            rgba[edge, :3] = _COLOURS[(lab[edge].astype(int) - 1) % len(_COLOURS)]
            rgba[edge, 3] = 255
        return _png(Image.fromarray(rgba, "RGBA"))

    def report(self, sid: str, kind: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, file name)`` of one report file; KeyError when absent."""
        name, media = REPORTS[kind]
        path = self.folder / sid / "report" / name
        if self.store.item("study", sid) is None or not path.is_file():
            raise KeyError(kind)
        return path.read_bytes(), media, f"study-{sid}-{name}"

    def close(self) -> None:
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _png(im: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
