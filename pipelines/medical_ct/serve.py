"""The :mod:`core.serve` predictor of a medical_ct model directory: :class:`NodulePredictor`.

A request is ``multipart/form-data`` with one file: a zipped DICOM series (any folder layout
inside) or a NIfTI volume (``.nii`` or ``.nii.gz``). Uploads are untrusted, so a zip is
opened with these checks (:class:`UploadLimits`): no member with an absolute path, a ``..``
component or a symlink; at most ``max_files`` members; the uncompressed total is counted
while extracting, not taken from the headers, and stops at ``max_uncompressed_bytes``; a
member whose declared expansion ratio is over ``max_ratio`` is refused before a byte is
written (a zip bomb). Extraction goes to a private temporary folder that is removed after
the volume is read. The volume limit is ``max_voxels``. Every refusal is a 422 naming the
file and member. The response carries the nodule list and the de-identified study fields
(:meth:`~pipelines.medical_ct.predict.StudyResult.summary`), never a patient tag. Not here:
the HTTP server, batching and metrics (``core.serve``), the report files (``report.py``).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import DataError
from pipelines.medical_ct.config import IngestConfig
from pipelines.medical_ct.data import Volume, read_dicom, read_nifti
from pipelines.medical_ct.predict import NoduleSegmenter

ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class UploadLimits:
    """What one upload may hold."""

    max_files: int = 2000  # members of a zip
    max_uncompressed_bytes: int = 1_500_000_000  # extracted total
    max_ratio: float = 200.0  # uncompressed / compressed size of any member
    max_voxels: int = 512 * 512 * 1000  # of the volume read


def _err(loc: list[Any], msg: str) -> Exception:
    from core.serve.predictor import RequestError

    return RequestError([{"loc": loc, "msg": msg}])


def safe_extract(data: bytes, dest: Path, limits: UploadLimits, loc: list[Any]) -> int:
    """Extract the zip ``data`` into ``dest`` under ``limits``; returns the files written."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise _err(loc, f"not a readable zip ({exc})") from exc
    members = [m for m in zf.infolist() if not m.is_dir()]
    if not members:
        raise _err(loc, "the zip holds no file")
    if len(members) > limits.max_files:
        raise _err(loc, f"the zip holds {len(members)} files, over the limit of {limits.max_files}")
    for m in members:
        p = PurePosixPath(m.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
            raise _err(
                [*loc, m.filename], "member path leaves the upload folder (absolute or '..')"
            )
        if stat.S_ISLNK(m.external_attr >> 16):
            raise _err([*loc, m.filename], "member is a symbolic link")
        if m.file_size > limits.max_ratio * max(m.compress_size, 1) and m.file_size > 1_000_000:
            raise _err(
                [*loc, m.filename],
                f"expands {m.file_size / max(m.compress_size, 1):.0f}x (limit {limits.max_ratio:g}x): "
                "refused as a zip bomb",
            )
    total = 0
    for i, m in enumerate(members):
        out = dest / f"{i:06d}"  # member names are not trusted as file names
        with zf.open(m) as src, out.open("wb") as dst:
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if total > limits.max_uncompressed_bytes:
                    raise _err(
                        loc,
                        f"the zip expands beyond {limits.max_uncompressed_bytes} bytes (refused)",
                    )
                dst.write(chunk)
    return len(members)


def read_upload(name: str, data: bytes, limits: UploadLimits, loc: list[Any]) -> Volume:
    """The volume in one uploaded file (zip of DICOM, or NIfTI)."""
    tmp = Path(tempfile.mkdtemp(prefix="dv-ct-upload-"))
    ingest = IngestConfig(max_voxels=limits.max_voxels, max_files=limits.max_files)
    try:
        if data[:4] == ZIP_MAGIC:
            safe_extract(data, tmp, limits, loc)
            vol = read_dicom(tmp, ingest)
        elif data[:2] == GZIP_MAGIC or name.lower().endswith((".nii", ".nii.gz")):
            if data[:2] == GZIP_MAGIC:  # bounded decompression: a gzip bomb stops at the limit
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                    raw = g.read(limits.max_voxels * 8 + 352 + 1)
                if len(raw) > limits.max_voxels * 8 + 352:
                    raise _err(
                        loc,
                        f"the NIfTI expands beyond a {limits.max_voxels}-voxel volume (refused)",
                    )
                data = raw
            path = tmp / "upload.nii"
            path.write_bytes(data)
            vol = read_nifti(path)
            if vol.array.size > limits.max_voxels:
                raise _err(
                    loc,
                    f"volume of {vol.array.size} voxels exceeds the limit of {limits.max_voxels}",
                )
        else:
            raise _err(loc, "send a zip of one DICOM series or a NIfTI file (.nii / .nii.gz)")
    except DataError as exc:
        # the message names the temporary path; the client knows its file by name only
        raise _err(loc, str(exc).replace(str(tmp), "<upload>")) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return vol


class NodulePredictor:
    """The :mod:`core.serve` predictor of a medical_ct model directory (one study per request)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        limits: UploadLimits | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.limits = limits or UploadLimits()
        self.segmenter: NoduleSegmenter | None = None

    def load(self) -> None:
        self.segmenter = NoduleSegmenter(self.model_dir)

    def warmup(self) -> None:
        import numpy as np

        assert self.segmenter is not None
        roi = self.segmenter.segmenter.cfg.roi
        sp = self.segmenter.segmenter.cfg.spacing_mm
        self.segmenter.predict(Volume(np.full(roi, -1000, np.float32), sp, (0, 0, 0), np.eye(3)))

    def decode(self, body: Any) -> list[Volume]:
        from core.serve.predictor import MultipartBody

        if not isinstance(body, MultipartBody) or not body.files:
            raise _err(
                ["body"],
                "send one file as multipart/form-data: a zipped DICOM series or a NIfTI volume",
            )
        if len(body.files) != 1:
            raise _err(["body", "files"], f"one study per request ({len(body.files)} files sent)")
        f = body.files[0]
        name = f.filename or f.field
        return [read_upload(name, f.data, self.limits, ["body", "files", name])]

    def predict_batch(self, items: list[Volume]) -> list[dict[str, Any]]:
        assert self.segmenter is not None
        return [self.segmenter.predict(v).summary() for v in items]

    def encode(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": self.name, "version": self.version, "study": outputs[0]}
