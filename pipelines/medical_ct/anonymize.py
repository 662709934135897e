"""De-identification of DICOM files by the DICOM PS3.15 Basic Application Level
Confidentiality Profile (table E.1-1, the 2026c edition carried by ``dicom-anonymizer``).

Every attribute of the profile gets its action: removed (X), emptied (Z), replaced by a dummy
(D), or, for UIDs (U), replaced by a new UID that is the same for the same old UID within one
run (or across runs with the same ``key``), so the files of a series stay one series with one
frame of reference, and a study's series stay one study. Private tags are removed.
``PatientIdentityRemoved`` and ``DeidentificationMethod`` are set, as the profile asks. Output
file names carry no input name (an input folder is often named after the patient):
``series_NNN/IMNNNNN.dcm``. The whole output folder is written atomically; non-DICOM files are
not copied, and are counted. Not here: reading volumes (``data.py``); pixel data is not
inspected for burned-in text (CT slices carry none; screen captures are not copied either).
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_dir
from core.errors import DataError

PROFILE = "dicomfields_2026c"  # the PS3.15 table edition in dicom-anonymizer
METHOD = "DICOM PS3.15 E.1-1 Basic Profile (2026c)"  # LO: at most 64 characters


@dataclass
class AnonymizeReport:
    """What :func:`anonymize_folder` did."""

    out_dir: Path
    files: int = 0
    series: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files not copied


def profile_actions() -> dict[str, list[tuple[int, ...]]]:
    """The profile's tags per action category (``"X_TAGS"``, ``"U_TAGS"``...)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    return dicom_anonymization_database_selector(PROFILE)


class _UidMap:
    """Old UID -> new UID, fixed by ``key`` (no table to keep, nothing reversible without it)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, old: str) -> str:
        from pydicom.uid import generate_uid

        return generate_uid("2.25.", entropy_srcs=[self.key, str(old)]) if old else old

    def action(self, dataset: Any, tag: tuple[int, int]) -> None:
        el = dataset.get(tag)
        if el is None:
            return
        if el.VR == "UI":
            el.value = [self(v) for v in el.value] if el.VM > 1 else self(el.value)
        elif el.VR == "SQ":
            for item in el.value:
                for sub in list(item):
                    self.action(item, (sub.tag.group, sub.tag.element))
        else:
            el.value = "" if el.VR not in ("US", "SS", "UL", "SL", "FL", "FD") else 0


def anonymize_dataset(ds: Any, uids: _UidMap) -> Any:
    """``ds`` de-identified in place (and returned)."""
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset as apply_profile
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    cats = profile_actions()
    extra = {tuple(t): uids.action for t in cats["U_TAGS"] if len(t) == 2}
    apply_profile(
        ds, extra, delete_private_tags=True, base_rules_gen=lambda: initialize_actions(PROFILE)
    )
    for t in cats["X_TAGS"]:  # X is removal; the library writes a dummy date into DA ones instead
        if len(t) == 2 and t[0] != 0x0002 and tuple(t) in ds:
            del ds[tuple(t)]
    fm = getattr(ds, "file_meta", None)
    if fm is not None and "SOPInstanceUID" in ds:
        fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    return ds


def anonymize_folder(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], key: str | None = None
) -> AnonymizeReport:
    """Every DICOM file under ``src`` de-identified into ``dst`` (created atomically).
    ``key``: the secret that fixes the UID mapping (default: a new random one per run)."""
    import pydicom

    from pipelines.medical_ct.data import (
        MEDIA_DIRECTORY_STORAGE,
        SECONDARY_CAPTURE_PREFIX,
        is_dicom_file,
    )

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError("no such folder", where=str(src), fix="pass the folder to de-identify")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DataError(
            "the output folder lies inside the input", where=str(dst), fix="pick another OUT"
        )
    uids = _UidMap(key or secrets.token_hex(16))
    rep = AnonymizeReport(dst)
    series_dirs: dict[str, str] = {}
    counts: dict[str, int] = {}
    skipped: Counter[str] = Counter()
    with atomic_dir(dst) as tmp:
        for p in sorted(q for q in src.rglob("*") if q.is_file()):
            size = p.stat().st_size
            if size == 0 or not is_dicom_file(p, size):
                skipped["not DICOM"] += 1
                continue
            try:
                ds = pydicom.dcmread(p, force=True)
            except Exception as exc:
                raise DataError(
                    f"unreadable DICOM file ({type(exc).__name__})", where=str(p)
                ) from exc
            media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if media == MEDIA_DIRECTORY_STORAGE:
                skipped["DICOMDIR"] += 1
                continue
            if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
                skipped["secondary capture (may hold burned-in text)"] += 1
                continue
            old_series = str(ds.get("SeriesInstanceUID", ""))
            anonymize_dataset(ds, uids)
            sdir = series_dirs.setdefault(old_series, f"series_{len(series_dirs) + 1:03d}")
            counts[sdir] = counts.get(sdir, 0) + 1
            out = tmp / sdir / f"IM{counts[sdir]:05d}.dcm"
            out.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(out, enforce_file_format=True)
            rep.files += 1
        if rep.files == 0:
            raise DataError("no DICOM file to de-identify", where=str(src))
    rep.series = len(series_dirs)
    rep.skipped = dict(skipped)
    return rep
