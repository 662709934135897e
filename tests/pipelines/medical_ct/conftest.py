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
