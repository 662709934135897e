"""Configuration of the medical_ct stages: one dataclass per stage, safe laptop defaults.

Units: millimetres for lengths and spacings, Hounsfield units (HU) for intensities, voxels
for sizes. Spacings are ``(z, y, x)``, the order of a volume's array axes.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "calcified")


@dataclass
class IngestConfig:
    """How a folder of DICOM files becomes one CT volume."""

    series_uid: str | None = None  # pick this series; None: the stated rule picks one
    spacing_tolerance: float = 0.05  # slice gaps may differ from the median by this fraction
    resample_gaps: bool = False  # a missing slice: interpolate (and say so) instead of failing
    skip_corrupt: bool = False  # a DICOM file that cannot be parsed: skip it instead of failing
    max_voxels: int = 512 * 512 * 1200  # a larger volume is refused before its pixels are read
    max_files: int = 20_000  # a folder with more files is refused
    min_slices: int = 8  # fewer slices cannot be a chest CT (scouts have 1-3)

    def __post_init__(self) -> None:
        if not 0.0 < self.spacing_tolerance < 0.5:
            raise ConfigError("spacing_tolerance must lie in (0, 0.5)", fix="use e.g. 0.05")
        if self.max_voxels < 1 or self.max_files < 1:
            raise ConfigError("max_voxels and max_files must be >= 1", fix="use the defaults")
        if self.min_slices < 1:
            raise ConfigError("min_slices must be >= 1", fix="use e.g. 8")


@dataclass
class SynthConfig:
    """A seeded set of chest-CT phantom studies written as real DICOM series."""

    out_dir: str = "data/medical_ct/synth"  # one folder per study, ground truth beside it
    n_cases: int = 6  # studies
    shape: tuple[int, int] = (160, 160)  # rows, columns of each slice
    fov_mm: tuple[float, float] = (300.0, 380.0)  # field of view range (pixel spacing = fov/cols)
    thickness_mm: tuple[float, ...] = (0.625, 1.0, 1.25, 2.0, 2.5)  # drawn per study
    z_extent_mm: float = 120.0  # length of the scanned chest section
    nodules: tuple[int, int] = (1, 4)  # nodules per study (inclusive range)
    diameter_mm: tuple[float, float] = (3.0, 30.0)  # nodule diameter range
    type_weights: tuple[float, float, float, float] = (0.55, 0.15, 0.2, 0.1)  # NODULE_TYPES
    noise_hu: tuple[float, float] = (8.0, 30.0)  # image noise sigma range (dose)
    seed: int = 0  # same seed, same bytes

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)  # type: ignore[assignment]
        self.fov_mm = tuple(self.fov_mm)  # type: ignore[assignment]
        self.thickness_mm = tuple(self.thickness_mm)
        self.nodules = tuple(self.nodules)  # type: ignore[assignment]
        self.diameter_mm = tuple(self.diameter_mm)  # type: ignore[assignment]
        self.type_weights = tuple(self.type_weights)  # type: ignore[assignment]
        self.noise_hu = tuple(self.noise_hu)  # type: ignore[assignment]
        if self.n_cases < 1:
            raise ConfigError("n_cases must be >= 1", fix="use e.g. 6")
        if min(self.shape) < 64:
            raise ConfigError("slices must be at least 64x64", fix="use e.g. (160, 160)")
        if not 0 < self.fov_mm[0] <= self.fov_mm[1]:
            raise ConfigError("fov_mm must be (low, high) with 0 < low <= high", fix="(300, 380)")
        if not self.thickness_mm or min(self.thickness_mm) <= 0:
            raise ConfigError("thickness_mm must be positive", fix="use e.g. (1.0, 2.5)")
        if self.z_extent_mm < 8 * max(self.thickness_mm):
            raise ConfigError("z_extent_mm gives fewer than 8 slices", fix="use e.g. 120")
        if not 0 <= self.nodules[0] <= self.nodules[1]:
            raise ConfigError("nodules must be (low, high) with 0 <= low <= high", fix="(1, 4)")
        if not 1.0 <= self.diameter_mm[0] <= self.diameter_mm[1]:
            raise ConfigError(
                "diameter_mm must be (low, high) with 1 <= low <= high", fix="(3, 30)"
            )
        if len(self.type_weights) != len(NODULE_TYPES) or min(self.type_weights) < 0:
            raise ConfigError(
                f"type_weights needs {len(NODULE_TYPES)} non-negative weights {NODULE_TYPES}",
                fix="use e.g. (0.55, 0.15, 0.2, 0.1)",
            )
        if sum(self.type_weights) <= 0:
            raise ConfigError("type_weights must not all be zero", fix="(0.55, 0.15, 0.2, 0.1)")
        if not 0 <= self.noise_hu[0] <= self.noise_hu[1]:
            raise ConfigError("noise_hu must be (low, high) with 0 <= low <= high", fix="(8, 30)")
