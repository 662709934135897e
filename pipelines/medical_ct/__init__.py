"""medical_ct: CT lung-nodule segmentation (DICOM series -> mask + nodule report).

Reading scanner and PACS folders into one checked :class:`Volume` in HU with its patient
geometry, and NIfTI in and out (``data``); seeded chest phantoms with exact ground truth,
written as real DICOM series (``synth``); PS3.15 basic-profile de-identification
(``anonymize``); the ``medical-ct`` CLI (``cli``). Model, training, evaluation, compression and
serving are the next rooms (issue 15).
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
    "FolderIndex",
    "IngestConfig",
    "Nodule",
    "SeriesInfo",
    "SynthConfig",
    "Volume",
    "anonymize_folder",
    "choose_series",
    "index_folder",
    "load_series",
    "read_dicom",
    "read_nifti",
    "render_study",
    "write_dataset",
    "write_nifti",
    "write_series",
    "write_study",
]
