"""Shared medical_ct fixtures: a small phantom study written once per session."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.medical_ct.config import SynthConfig
from pipelines.medical_ct.synth import AXIAL_IOP, SeriesSpec, axial_positions, write_series


def small_cfg(**kw) -> SynthConfig:
    base = dict(
        n_cases=1,
        shape=(80, 80),
        fov_mm=(300.0, 340.0),
        thickness_mm=(2.5,),
        z_extent_mm=40.0,
        nodules=(2, 3),
        diameter_mm=(6.0, 14.0),
    )
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    from pipelines.medical_ct.synth import write_study

    out = tmp_path_factory.mktemp("ct_study")
    return write_study(small_cfg(seed=3), 0, out / "case_000")


def ramp(d: int = 10, h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A volume whose every voxel differs, so any mis-ordering or flip shows."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:d, :h, :w]
    return (z * 100 + y * 3 + x - 900 + rng.integers(0, 3, (d, h, w))).astype(np.float32)


def series(
    out,
    hu: np.ndarray | None = None,
    *,
    step: float = 2.0,
    spacing: tuple[float, float] = (0.8, 0.8),
    iop=AXIAL_IOP,
    origin=(-10.0, -12.0, -50.0),
    tilt: float = 0.0,
    positions: np.ndarray | None = None,
    **spec,
):
    """Write a small CT series; returns (hu, paths)."""
    hu = ramp() if hu is None else hu
    if positions is None:
        r, c = np.array(iop[:3]), np.array(iop[3:])
        n = np.cross(r, c)
        positions = np.asarray(origin)[None] + np.arange(len(hu))[:, None] * n * step
        if tilt:
            positions = axial_positions(origin, step, len(hu), tilt)
    sp = SeriesSpec(pixel_spacing=spacing, positions=positions, iop=iop, thickness=step, **spec)
    return hu, write_series(hu, sp, out)


# ---------------------------------------------------------------- studies for review
TINY_STUDIES = {"filters": [4, 8, 16], "roi": [16, 32, 32], "spacing_mm": [2.5, 2.5, 2.5]}


@pytest.fixture(scope="session")
def model_and_case(tmp_path_factory):
    """A tiny model (4 steps) and the phantom case it was trained on (for serving tests)."""
    from pipelines.medical_ct.synth import write_dataset
    from pipelines.medical_ct.train import TrainConfig, default_trainer, train

    root = tmp_path_factory.mktemp("ct_studies")
    write_dataset(small_cfg(out_dir=str(root / "data"), n_cases=1, seed=7))
    tr = default_trainer()
    tr.max_steps, tr.progress = 4, "off"
    _, out = train(
        TrainConfig(
            data=str(root / "data"), out_dir=str(root / "model"), model=TINY_STUDIES, trainer=tr
        )
    )
    return out, root / "data" / "case_000"


def zipped_series(case) -> bytes:
    """The case's DICOM files as one zip, as a user uploads them."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted((case / "dicom").rglob("*")):
            if p.is_file():
                z.write(p, f"STUDY/{p.relative_to(case / 'dicom')}")
    return buf.getvalue()


def truth(case):
    """The study with its ground-truth nodules as if predicted: a result with real nodules."""
    import numpy as np

    from pipelines.medical_ct.data import read_dicom, read_nifti
    from pipelines.medical_ct.nodules import find_nodules
    from pipelines.medical_ct.predict import StudyResult

    vol = read_dicom(case / "dicom")
    mask = read_nifti(case / "mask.nii.gz").array > 0
    found, labels = find_nodules(mask.astype(np.float32), vol)
    return StudyResult(vol, found, labels, mask.astype(np.float32), 0.0, {"name": "truth"})
