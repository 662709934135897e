"""Configuration of the vision_qc stages: one dataclass per stage, safe laptop defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConfigError

SURFACES = ("brushed_metal", "woven_fabric", "wood_grain", "pcb", "cast_part")
DEFECTS = ("scratch", "dent", "stain", "crack", "hole")


@dataclass
class SynthConfig:
    """A seeded synthetic inspection data set (MVTec layout + COCO JSON)."""

    out_dir: str = "data/vision_qc/synth"  # where the data set is written
    surfaces: tuple[str, ...] = ("brushed_metal", "wood_grain", "pcb")  # one MVTec category each
    defects: tuple[str, ...] = DEFECTS  # defect classes drawn on test images
    n_train_good: int = 24  # defect-free training images per surface
    n_test_good: int = 6  # defect-free test images per surface
    n_test_per_defect: int = 4  # defective test images per surface and class
    test_counts: dict[str, int] = field(default_factory=dict)  # per-class overrides of the above
    size: int = 256  # image side in pixels
    seed: int = 0  # same seed, same bytes
    max_defects_per_image: int = 2  # 1..N defects of the folder's class per image

    def __post_init__(self) -> None:
        self.surfaces, self.defects = tuple(self.surfaces), tuple(self.defects)
        bad = [s for s in self.surfaces if s not in SURFACES]
        if bad:
            raise ConfigError(f"unknown surfaces {bad}", fix=f"use any of {list(SURFACES)}")
        bad = [d for d in self.defects if d not in DEFECTS]
        if bad:
            raise ConfigError(f"unknown defect classes {bad}", fix=f"use any of {list(DEFECTS)}")
        if self.size < 64:
            raise ConfigError("image size must be >= 64 px", fix="use e.g. 256")
        bad = [d for d in self.test_counts if d not in self.defects]
        if bad:
            raise ConfigError(
                f"test_counts names classes {bad} not drawn", fix="list them in defects"
            )
        if self.max_defects_per_image < 1:
            raise ConfigError("max_defects_per_image must be >= 1", fix="use 1 or 2")


@dataclass
class DataConfig:
    """How a data set is read and split."""

    root: str = "data/vision_qc/synth"  # data set root
    format: str = "mvtec"  # mvtec | coco | yolo
    classes: tuple[str, ...] = DEFECTS  # known defect classes (others are an error)
    holdout_fraction: float = 0.3  # COCO/YOLO: images held out of training (MVTec: test/)
    val_fraction: float = 0.5  # of the held-out images, used to pick the threshold
    seed: int = 0  # split seed
    extra: dict[str, str] = field(default_factory=dict)  # format options (coco json, yolo dirs)
    test_only: bool = False  # the whole set is a test set: no training, no validation split

    def __post_init__(self) -> None:
        if self.format not in ("mvtec", "coco", "yolo"):
            raise ConfigError(f"unknown data format {self.format!r}", fix="use mvtec, coco or yolo")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction must lie in [0, 1)", fix="use e.g. 0.5")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError("holdout_fraction must lie in (0, 1)", fix="use e.g. 0.3")
        self.classes = tuple(self.classes)
