"""medical_ct: CT lung-nodule segmentation (DICOM series -> mask + nodule report).

Reading scanner and PACS folders into one checked :class:`Volume` in HU with its patient
geometry, and NIfTI in and out (``data``); seeded chest phantoms with exact ground truth,
written as real DICOM series (``synth``); PS3.15 basic-profile de-identification
(``anonymize``); the lung field from HU (``lungs``); connected components and nodule
measurements (``nodules``); a MONAI DynUNet with its input grid and sliding-window inference
(``model``); patch training through ``core.train`` (``train``); per-case Dice, FROC and CPM
(``evaluate``); pruning, fp32/INT8 ONNX and the parity gate (``deploy``); the
``NoduleSegmenter`` a customer imports (``predict``); the report folder with a DICOM SEG
(``report``); the predictor ``core.serve`` runs (``serve``); the ``medical-ct`` CLI (``cli``).
The Prefect flow is ``flows/medical_ct.py``.
"""

from pipelines.medical_ct.anonymize import AnonymizeReport, anonymize_folder
from pipelines.medical_ct.config import IngestConfig, SynthConfig
from pipelines.medical_ct.data import (
    FolderIndex,
    SeriesInfo,
    Volume,
    choose_series,
    index_folder,
    load_series,
    read_dicom,
    read_nifti,
    write_nifti,
)
from pipelines.medical_ct.deploy import DeployConfig, DeployReport, deploy, load_deployed
from pipelines.medical_ct.evaluate import EvalReport, evaluate_cases
from pipelines.medical_ct.lungs import lung_field
from pipelines.medical_ct.model import ModelConfig, Segmenter, build_unet, load_segmenter
from pipelines.medical_ct.nodules import FoundNodule, find_nodules
from pipelines.medical_ct.predict import NoduleSegmenter, StudyResult
from pipelines.medical_ct.report import write_report
from pipelines.medical_ct.serve import NodulePredictor, UploadLimits
from pipelines.medical_ct.synth import (
    Nodule,
    render_study,
    write_dataset,
    write_series,
    write_study,
)
from pipelines.medical_ct.train import TrainConfig, load_cases, train

__all__ = [
    "AnonymizeReport",
    "DeployConfig",
    "DeployReport",
    "EvalReport",
    "FolderIndex",
    "FoundNodule",
    "IngestConfig",
    "ModelConfig",
    "Nodule",
    "NodulePredictor",
    "NoduleSegmenter",
    "Segmenter",
    "SeriesInfo",
    "StudyResult",
    "SynthConfig",
    "TrainConfig",
    "UploadLimits",
    "Volume",
    "anonymize_folder",
    "build_unet",
    "choose_series",
    "deploy",
    "evaluate_cases",
    "find_nodules",
    "index_folder",
    "load_cases",
    "load_deployed",
    "load_segmenter",
    "load_series",
    "lung_field",
    "read_dicom",
    "read_nifti",
    "render_study",
    "train",
    "write_dataset",
    "write_nifti",
    "write_report",
    "write_series",
    "write_study",
]
