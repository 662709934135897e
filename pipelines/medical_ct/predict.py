"""The inference object a customer imports: :class:`NoduleSegmenter`, one model directory in,
nodules out.

``NoduleSegmenter(model_dir).predict(source)`` reads a DICOM folder or a NIfTI file (or takes a
:class:`~pipelines.medical_ct.data.Volume`), runs the network over the whole volume by sliding
windows and returns a :class:`StudyResult`: the nodule records, the label map and the
probability on the volume's own grid, and the de-identified study fields. Not here: the files
a radiologist opens (``report.py``), request handling (``serve.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.medical_ct.config import IngestConfig
from pipelines.medical_ct.data import META_KEYWORDS, Volume, read_dicom, read_nifti
from pipelines.medical_ct.deploy import load_deployed
from pipelines.medical_ct.nodules import FoundNodule

STUDY_FIELDS = tuple(k for k in META_KEYWORDS if k != "SeriesDescription")  # in responses


@dataclass
class StudyResult:
    """One study's prediction."""

    volume: Volume
    nodules: list[FoundNodule]
    labels: np.ndarray  # (D, H, W) uint16, nodule k = k
    probability: np.ndarray  # (D, H, W) float32
    seconds: float
    model: dict[str, Any] = field(default_factory=dict)  # model dir name, threshold

    def summary(self) -> dict[str, Any]:
        """JSON-ready, with no patient-identifying field."""
        v = self.volume
        return {
            "series_uid": v.series_uid,
            "shape": list(v.shape),
            "spacing_mm": [round(s, 4) for s in v.spacing],
            "study": {k: v.meta[k] for k in STUDY_FIELDS if k in v.meta},
            "n_nodules": len(self.nodules),
            "nodules": [n.as_dict() for n in self.nodules],
            "seconds": round(self.seconds, 2),
            "model": self.model,
        }


class NoduleSegmenter:
    """A medical_ct model directory (PyTorch from ``train``, fp32 or INT8 ONNX from
    ``compress``), ready to read studies. ``threads``: ONNX Runtime threads."""

    def __init__(self, model_dir: str | os.PathLike[str], threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.segmenter = load_deployed(self.model_dir, threads)

    def read(
        self, source: str | os.PathLike[str] | Volume, ingest: IngestConfig | None = None
    ) -> Volume:
        if isinstance(source, Volume):
            return source
        p = Path(source)
        return (
            read_nifti(p) if p.name.lower().endswith((".nii", ".nii.gz")) else read_dicom(p, ingest)
        )

    def predict(
        self, source: str | os.PathLike[str] | Volume, ingest: IngestConfig | None = None
    ) -> StudyResult:
        vol = self.read(source, ingest)
        t = time.perf_counter()
        found, labels, prob = self.segmenter(vol)
        return StudyResult(
            vol,
            found,
            labels,
            prob,
            time.perf_counter() - t,
            {"name": self.model_dir.name, "threshold": self.segmenter.threshold},
        )
