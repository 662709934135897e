"""vision_qc: industrial defect detection (images -> classed boxes + anomaly score).

Built so far: seeded synthetic inspection data with exact ground truth (``synth``) and readers
for MVTec AD, COCO and YOLO data with per-file validation (``data``). Model, training,
evaluation, deployment and the CLI follow (issue 5).
"""

from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.data import (
    DetectionSet,
    Sample,
    load_coco,
    load_mvtec,
    load_yolo,
    manifest,
    split,
)
from pipelines.vision_qc.synth import paste_defects, write_dataset

__all__ = [
    "DataConfig",
    "DetectionSet",
    "Sample",
    "SynthConfig",
    "load_coco",
    "load_mvtec",
    "load_yolo",
    "manifest",
    "paste_defects",
    "split",
    "write_dataset",
]
