"""The files a radiologist opens for one study, written atomically into one folder.

``report.json`` (the nodule list with centre in voxels and patient mm, slice, longest axial
and equivalent diameters, volume, mean HU, type, confidence), ``report.md`` (the same as a
table a person reads), ``overlays/nodule_NN.png`` (the axial slice through each nodule, lung
window, the predicted contour), ``mask.nii.gz`` (the label map on the CT grid) and, when the
study came from DICOM, ``seg.dcm``: a DICOM Segmentation (highdicom, one segment per nodule)
that references the source series and loads in PACS viewers. The JSON and Markdown carry no
patient-identifying field; the DICOM SEG carries the patient module of its source images, as
the standard requires for it to attach to the right study. Not here: running the model
(``predict.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.atomic import atomic_dir
from pipelines.medical_ct.data import write_nifti
from pipelines.medical_ct.evaluate import plot_overlay
from pipelines.medical_ct.predict import StudyResult

SOFTWARE = "DeepVerticals medical_ct"


def _markdown(res: StudyResult) -> str:
    s = res.summary()
    lines = [
        "# CT lung-nodule report",
        "",
        f"Series `{s['series_uid']}` · {s['shape'][0]} slices · spacing {s['spacing_mm']} mm (z, y, x) · "
        f"model `{s['model'].get('name')}` · {s['seconds']} s",
        "",
        f"**{s['n_nodules']} nodule(s) found.** Automated result; a radiologist must confirm it.",
        "",
    ]
    if res.nodules:
        lines += [
            "| # | slice | centre (x, y, z) mm | longest axial mm | diameter mm | volume mm³ | mean HU | type | confidence |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for n in res.nodules:
            c = ", ".join(f"{v:.1f}" for v in n.centre_mm)
            lines.append(
                f"| {n.id} | {n.slice} | {c} | {n.longest_axial_mm:.1f} | {n.diameter_mm:.1f} | "
                f"{n.volume_mm3:.0f} | {n.mean_hu:.0f} | {n.type.replace('_', '-')} | {n.confidence:.2f} |"
            )
        lines += ["", *(f"![nodule {n.id}](overlays/nodule_{n.id:02d}.png)" for n in res.nodules)]
    return "\n".join(lines) + "\n"


def dicom_seg(res: StudyResult, path: Path) -> Path:
    """A DICOM Segmentation of ``res.labels`` referencing the source slices."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in res.volume.source_files]
    algo = hd.AlgorithmIdentificationSequence(
        name="medical_ct U-Net", version="1", family=codes.DCM.ArtificialIntelligence
    )
    descs = [
        hd.seg.SegmentDescription(
            segment_number=n.id,
            segment_label=f"nodule {n.id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for n in res.nodules
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=res.labels.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="DeepVerticals",
        manufacturer_model_name="medical_ct",
        software_versions=SOFTWARE,
        device_serial_number="0",
        omit_empty_frames=True,
    )
    seg.save_as(path)
    return path


def write_report(res: StudyResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write the study's report folder (replaced whole if it exists); returns it."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        (tmp / "overlays").mkdir()
        summary = res.summary()
        summary["files"] = ["report.json", "report.md", "mask.nii.gz"]
        write_nifti(res.volume, tmp / "mask.nii.gz", res.labels.astype(np.uint16))
        for n in res.nodules:
            name = f"overlays/nodule_{n.id:02d}.png"
            title = f"nodule {n.id}: slice {n.slice}, {n.diameter_mm:.1f} mm {n.type}, p={n.confidence:.2f}"
            plot_overlay(
                res.volume,
                np.zeros_like(res.labels),
                res.labels == n.id,
                n.slice,
                tmp / name,
                title,
            )
            summary["files"].append(name)
        if res.nodules and res.volume.source_files:
            dicom_seg(res, tmp / "seg.dcm")
            summary["files"].append("seg.dcm")
        (tmp / "report.json").write_text(json.dumps(summary, indent=1))
        (tmp / "report.md").write_text(_markdown(res))
    return out
