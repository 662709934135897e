"""vision_qc: industrial defect detection (images -> classed boxes + anomaly score).

Seeded synthetic inspection data with exact ground truth (``synth``); readers for MVTec AD,
COCO and YOLO data with per-file validation (``data``); an FCOS detector on a timm backbone
with FPN and a patch-memory anomaly scorer (``model``); training through ``core.train`` from
labelled images and/or normal images with pasted defects (``train``); COCO mAP, image-level
rates and the operating threshold (``evaluate``); the tiling ``DefectDetector`` that runs any
model directory (``predict``); compression, INT8 and the parity report (``deploy``); the
serving predictor (``serve``); the ``vision-qc`` CLI (``cli``). The Prefect flow is ``flows.vision_qc``.
"""

from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.data import (
    DetectionSet,
    Sample,
    load_coco,
    load_dataset,
    load_mvtec,
    load_yolo,
    manifest,
    split,
)
from pipelines.vision_qc.deploy import DeployConfig, DeployReport, deploy
from pipelines.vision_qc.evaluate import EvalConfig, EvalReport, evaluate
from pipelines.vision_qc.model import ModelConfig, PatchAnomalyScorer, build_detector
from pipelines.vision_qc.predict import DefectDetector
from pipelines.vision_qc.serve import DefectPredictor, ServeLimits
from pipelines.vision_qc.synth import paste_defects, write_dataset
from pipelines.vision_qc.train import TrainConfig, partition, train

__all__ = [
    "DataConfig",
    "DefectDetector",
    "DefectPredictor",
    "DeployConfig",
    "DeployReport",
    "DetectionSet",
    "EvalConfig",
    "EvalReport",
    "ModelConfig",
    "PatchAnomalyScorer",
    "Sample",
    "ServeLimits",
    "SynthConfig",
    "TrainConfig",
    "build_detector",
    "deploy",
    "evaluate",
    "load_coco",
    "load_dataset",
    "load_mvtec",
    "load_yolo",
    "manifest",
    "partition",
    "paste_defects",
    "split",
    "train",
    "write_dataset",
]
