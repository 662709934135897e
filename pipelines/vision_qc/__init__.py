"""vision_qc: industrial defect detection (images -> classed boxes + anomaly score).

Built so far: seeded synthetic inspection data with exact ground truth (``synth``), readers for
MVTec AD, COCO and YOLO data with per-file validation (``data``), and the networks: an FCOS
detector on a timm backbone with FPN and a patch-memory anomaly scorer (``model``), and
training through ``core.train`` from labelled images and/or normal images with pasted defects
(``train``). Evaluation, deployment, the CLI and the flow follow (issue 5).
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
from pipelines.vision_qc.train import TrainConfig, train

__all__ = [
    "DataConfig",
    "DetectionSet",
    "ModelConfig",
    "PatchAnomalyScorer",
    "Sample",
    "SynthConfig",
    "TrainConfig",
    "build_detector",
    "load_coco",
    "load_mvtec",
    "load_yolo",
    "manifest",
    "paste_defects",
    "split",
    "train",
    "write_dataset",
]
