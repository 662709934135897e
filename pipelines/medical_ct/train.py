"""Training the nodule U-Net through ``core.train`` on labelled CT cases.

A data set is a folder of cases, each a folder with the image (``dicom/``, a DICOM series
folder read by :func:`~pipelines.medical_ct.data.read_dicom`, or ``image.nii.gz``) and
``mask.nii.gz`` (nodule voxels > 0 on the image's grid), which is what ``synth.py`` writes and
what a radiology team exports. :func:`load_cases` checks every case (mask grid = image grid,
finite values) and names the bad ones together.

Each case is resampled once to the model grid (``ModelConfig.spacing_mm``; trilinear for the
image, nearest for the mask) and windowed. Patches of ``ModelConfig.roi`` are drawn by MONAI's
``RandCropByPosNegLabeld``; ``pos_fraction`` of them are centred on a voxel of one nodule
drawn uniformly from the case's nodules (a voxel drawn uniformly from all nodule voxels would
centre almost every patch on the largest nodule: a 26 mm one has 30x the voxels of an 8 mm
one, and the medium nodules went unseen), then
augmented by MONAI transforms (flips, intensity scale/shift, contrast, Gaussian noise and blur
for other scanners' dose and kernels); the draw is seeded by ``(seed, epoch, index)``. The loss
is MONAI's DiceCE; bf16 autocast where :func:`~core.train.bf16_is_fast`. The model directory
holds the weights, the input contract (spacing, window, roi) and the training figures. Not
here: inference over whole volumes (``model.py``), metrics (``evaluate.py``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from core.artifacts import save_model_dir
from core.errors import ConfigError, DataError
from core.models import arch_module
from core.train import (
    Callback,
    EpochSetter,
    FitResult,
    LossTrace,
    Trainer,
    TrainerConfig,
    bf16_is_fast,
    seed_everything,
)
from core.typedconfig import deep_merge
from pipelines.medical_ct.data import Volume, read_dicom, read_nifti
from pipelines.medical_ct.model import ModelConfig, build_unet, grid_shape, resample, window

log = logging.getLogger(__name__)

DEFAULT_STEPS = 400


def default_trainer() -> TrainerConfig:
    """Laptop-CPU defaults: :data:`DEFAULT_STEPS` steps of 2 patches, AdamW with a cosine
    schedule, gradient clipping, bf16 autocast where it is fast."""
    return TrainerConfig(
        precision="bf16" if bf16_is_fast() else "fp32",
        max_epochs=1000,
        max_steps=DEFAULT_STEPS,
        batch_size=2,
        eval_every_n_epochs=0,
        grad_clip_norm=12.0,
        optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 1e-5},
        schedule={"name": "cosine", "warmup_steps": 20},
    )


@dataclass
class TrainConfig:
    """One medical_ct training run."""

    data: str = (
        "data/medical_ct/synth"  # folder of case folders (dicom/ or image.nii.gz + mask.nii.gz)
    )
    out_dir: str = "data/runs/medical_ct/model"  # model directory to write
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=default_trainer)
    cases: tuple[str, ...] = ()  # case folder names to train on (default: all)
    pos_fraction: float = 0.6  # patches centred on a nodule voxel
    patches_per_epoch: int = 64  # dataset length per epoch
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.trainer, dict):  # a partial trainer section keeps the defaults
            self.trainer = TrainerConfig.from_dict(
                deep_merge(default_trainer().to_dict(), self.trainer)
            )
        self.trainer.seed = self.seed
        self.cases = tuple(self.cases)
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ConfigError("pos_fraction must lie in [0, 1]", fix="use e.g. 0.6")
        if self.patches_per_epoch < 1:
            raise ConfigError("patches_per_epoch must be >= 1", fix="use e.g. 64")


# ---------------------------------------------------------------------------------- data
@dataclass
class Case:
    """One labelled study: its volume and nodule mask (same grid)."""

    name: str
    volume: Volume
    mask: np.ndarray  # (D, H, W) integer labels, > 0 = nodule
    truth: list[dict[str, Any]]  # nodules.json entries when present


def case_folders(root: str | Path, names: tuple[str, ...] = ()) -> list[Path]:
    """The case folders under ``root`` (those holding a ``mask.nii(.gz)``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            "no such data folder", where=str(root), fix="run `medical-ct synth` or pass --data"
        )
    found = sorted(p.parent for p in root.glob("*/mask.nii*"))
    if names:
        by = {p.name: p for p in found}
        missing = [n for n in names if n not in by]
        if missing:
            raise DataError(f"cases {missing} not found (or without mask.nii.gz)", where=str(root))
        found = [by[n] for n in names]
    if not found:
        raise DataError(
            "no case folders (each needs mask.nii.gz beside dicom/ or image.nii.gz)",
            where=str(root),
            fix="lay out one folder per case",
        )
    return found


def load_case(folder: Path) -> Case:
    """A case folder as a :class:`Case`; errors name the folder and the problem."""
    import json

    mask_path = next(iter(sorted(folder.glob("mask.nii*"))), None)
    if (folder / "dicom").is_dir():
        vol = read_dicom(folder / "dicom")
    elif img := next(iter(sorted(folder.glob("image.nii*"))), None):
        vol = read_nifti(img)
    else:
        raise DataError("case has no dicom/ folder or image.nii.gz", where=str(folder))
    if mask_path is None:
        raise DataError("case has no mask.nii.gz", where=str(folder))
    m = read_nifti(mask_path)
    if (
        m.shape != vol.shape
        or not np.allclose(m.spacing, vol.spacing, rtol=1e-3)
        or not np.allclose(m.origin, vol.origin, atol=1e-2)
    ):
        raise DataError(
            f"mask grid {m.shape} @ {np.round(m.spacing, 3)} mm does not match the image "
            f"{vol.shape} @ {np.round(vol.spacing, 3)} mm",
            where=str(mask_path),
            fix="export the mask on the image's grid",
        )
    truth = []
    if (folder / "nodules.json").exists():
        truth = json.loads((folder / "nodules.json").read_text()).get("nodules", [])
    return Case(folder.name, vol, np.rint(m.array).astype(np.int16), truth)


def load_cases(root: str | Path, names: tuple[str, ...] = ()) -> list[Case]:
    cases, bad = [], []
    for f in case_folders(root, names):
        try:
            cases.append(load_case(f))
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        raise DataError(f"{len(bad)} case(s) cannot be used: " + "; ".join(bad))
    return cases


def _transforms(roi: tuple[int, int, int], augment: bool) -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    t: list[Any] = [  # PatchDataset pads each case to the roi first (its indices refer to that)
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            pos=1.0,  # centred on an "fg" index: one nodule's voxels, or background ones
            neg=0.0,
            num_samples=1,
            fg_indices_key="fg",
            bg_indices_key="bg",
        ),
    ]
    if augment:
        t += [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            RandFlipd(keys=keys, prob=0.2, spatial_axis=0),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.04, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3),
            RandGaussianNoised(keys="image", std=0.02, prob=0.3),
            RandGaussianSmoothd(
                keys="image", sigma_x=(0.3, 0.9), sigma_y=(0.3, 0.9), sigma_z=(0.3, 0.9), prob=0.2
            ),
        ]
    return Compose(t)


class PatchDataset(Dataset):
    """``(image (1, *roi) float32 in [0, 1], label (1, *roi) int64 in {0, 1})`` patches."""

    def __init__(
        self, cases: list[Case], cfg: ModelConfig, n: int, pos: float, augment: bool, seed: int
    ) -> None:
        from monai.transforms import SpatialPad

        self.n, self.seed, self.epoch = n, seed, 0
        self.items = []
        pad = SpatialPad(spatial_size=cfg.roi, mode="constant")
        for c in cases:
            shape = grid_shape(c.volume, cfg.spacing_mm)
            x = torch.from_numpy(c.volume.array)[None, None]
            img = window(resample(x, shape), cfg.hu_window)[0]
            lab = resample(
                torch.from_numpy((c.mask > 0).astype(np.float32))[None, None], shape, "nearest"
            )[0]
            img, lab = pad(img), pad(lab)  # indices are taken on the padded grid
            flat = lab.reshape(-1).numpy() > 0
            comp, n = ndimage.label(flat.reshape(lab.shape[1:]), structure=np.ones((3, 3, 3)))
            order = np.argsort(comp.reshape(-1), kind="stable")
            starts = np.searchsorted(comp.reshape(-1)[order], np.arange(n + 2))
            nodules = [order[starts[k] : starts[k + 1]] for k in range(1, n + 1)]
            self.items.append(
                {"image": img, "label": lab, "nodules": nodules, "bg": np.flatnonzero(~flat)}
            )
        self.pos = pos
        self.tf = _transforms(cfg.roi, augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        item = dict(self.items[int(rng.integers(len(self.items)))])
        nodules = item.pop("nodules")
        if nodules and rng.random() < self.pos:  # one nodule, uniformly, then one of its voxels
            item["fg"] = nodules[int(rng.integers(len(nodules)))]
        else:  # background (a case without nodules gives background patches only)
            item["fg"] = item["bg"]
        self.tf.set_random_state(seed=int(rng.integers(2**31)))
        out = self.tf(item)
        out = out[0] if isinstance(out, list) else out
        img = torch.as_tensor(out["image"]).float()
        lab = (torch.as_tensor(out["label"]) > 0.5).long()
        return img.as_subclass(torch.Tensor), lab.as_subclass(torch.Tensor)


# -------------------------------------------------------------------------------- train


def dice_ce_loss() -> Any:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, batch=True)


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> tuple[FitResult, Path]:
    """Train the U-Net; returns the fit result and the model directory written."""
    cases = load_cases(cfg.data, cfg.cases)
    n_nod = sum(int(len(np.unique(c.mask)) - 1) for c in cases)
    if n_nod == 0:
        raise DataError(
            "no nodule voxel in any training mask", where=str(cfg.data), fix="check the masks"
        )
    seed_everything(cfg.seed)
    model = build_unet(**cfg.model.arch_kwargs())
    ds = PatchDataset(
        cases, cfg.model, cfg.patches_per_epoch, cfg.pos_fraction, cfg.augment, cfg.seed
    )
    log.info("training on %d cases (%d nodules), %d patches per epoch", len(cases), n_nod, len(ds))
    trace = LossTrace()
    trainer = Trainer(
        model,
        cfg.trainer,
        loss_fn=dice_ce_loss(),
        callbacks=[EpochSetter(ds), trace, *(callbacks or [])],
    )
    result = trainer.fit(ds)
    model = trainer.ema.module if trainer.ema is not None else model
    out = Path(cfg.out_dir)
    if trainer.is_main:
        config = {
            "arch": "medical_ct_unet",
            "arch_module": arch_module("medical_ct_unet"),
            "arch_kwargs": cfg.model.arch_kwargs(),
            "model": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.model).items()
            },
            "input_shape": [1, *cfg.model.roi],
            "threshold": 0.5,
            "min_diameter_mm": 2.0,
            "task": "medical_ct",
        }
        card = (
            f"# medical_ct nodule U-Net\n\nMONAI DynUNet {list(cfg.model.filters)}, input "
            f"{list(cfg.model.spacing_mm)} mm grid, HU window {list(cfg.model.hu_window)}, "
            f"{len(cases)} training cases ({n_nod} nodules), {result.global_step} steps of "
            f"{cfg.trainer.batch_size} patches {list(cfg.model.roi)}.\n"
        )
        metrics = {
            "train_steps": result.global_step,
            "train_cases": len(cases),
            "train_nodules": n_nod,
            **trace.summary(),
            "nonfinite_steps": result.nonfinite_steps,
        }
        save_model_dir(out, model, config, metrics, card)
    return result, out
