"""medical_ct: CT lung-nodule segmentation (DICOM series -> mask + nodule report).

Reading scanner and PACS folders into one checked :class:`Volume` in HU with its patient
geometry, and NIfTI in and out (``data``); seeded chest phantoms with exact ground truth,
written as real DICOM series (``synth``); PS3.15 basic-profile de-identification
(``anonymize``); connected components and nodule measurements (``nodules``); a MONAI DynUNet
with its input grid and sliding-window inference (``model``); patch training through
``core.train`` (``train``); per-case Dice, FROC and CPM (``evaluate``); the
``NoduleSegmenter`` a customer imports (``predict``); the report folder with a DICOM SEG
(``report``); the ``medical-ct`` CLI (``cli``). Compression, serving and the flow are the next
rooms (issue 15).
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
from pipelines.medical_ct.synth import (
    Nodule,
    render_study,
    write_dataset,
    write_series,
    write_study,
)

__all__ = [
    "AnonymizeReport",
    "EvalReport",
    "FolderIndex",
    "FoundNodule",
    "IngestConfig",
    "ModelConfig",
    "Nodule",
    "NoduleSegmenter",
    "Segmenter",
    "SeriesInfo",
    "StudyResult",
    "SynthConfig",
    "TrainConfig",
    "Volume",
    "anonymize_folder",
    "build_unet",
    "choose_series",
    "evaluate_cases",
    "find_nodules",
    "index_folder",
    "load_cases",
    "load_segmenter",
    "load_series",
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
