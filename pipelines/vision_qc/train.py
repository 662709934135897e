"""Training the vision_qc detector through ``core.train`` (AMP on GPU, checkpoint/resume).

Training data: the labelled images a user has, plus their defect-free images with synthetic
defects pasted on (:func:`pipelines.vision_qc.synth.paste_defects`), so a detector can be
trained from normal images alone (MVTec's ``train/good``). Each sample is augmented with
box-aware torchvision v2 transforms (flips, 90° rotations, colour jitter). The randomness of
sample ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``, so worker count and resume do not
change what the model sees. Output: a model directory (``model.safetensors``,
``config.json`` with ``arch="vision_qc_fcos"``, the classes and ``input_shape``,
``metrics.json``, ``model_card.md``) that ``core.models.load_model_dir`` rebuilds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from core.artifacts import save_model_dir
from core.errors import DataError
from core.models import arch_module
from core.train import (
    Callback,
    EpochSetter,
    FitResult,
    Trainer,
    TrainerConfig,
    bf16_is_fast,
    build_optimizer,
    seed_everything,
)
from core.typedconfig import deep_merge
from pipelines.vision_qc.config import DataConfig
from pipelines.vision_qc.data import DetectionSet, Sample, load_dataset, rgb8, split
from pipelines.vision_qc.model import (
    ANOMALY_BANK_FILE,
    ModelConfig,
    build_detector,
    fit_anomaly_bank,
)
from pipelines.vision_qc.synth import paste_defects

# The default length of training, in optimizer steps whatever the data set's size: a few
# hundred images make many passes (8 passes over 280 images left the model under-trained:
# held-out mAP@.5 0.53 at 560 steps, 0.65 at 980), a large set fewer. About 12 minutes on
# 2 CPU cores (fp32, 256 px, batch 4).
DEFAULT_STEPS = 1000
MAX_DEFAULT_EPOCHS = 100  # a cap for tiny sets


def default_trainer() -> TrainerConfig:
    """Laptop-CPU defaults: :data:`DEFAULT_STEPS` steps (at most :data:`MAX_DEFAULT_EPOCHS`
    epochs; setting ``max_epochs`` lower caps it), cosine schedule, gradient clipping;
    bf16 autocast (AMP) where it is fast: a GPU with bf16 support, or a CPU with AMX /
    AVX512-BF16 (2x faster steps than fp32 at the same accuracy there)."""
    return TrainerConfig(
        precision="bf16" if bf16_is_fast() else "fp32",
        max_epochs=MAX_DEFAULT_EPOCHS,
        max_steps=DEFAULT_STEPS,
        batch_size=4,
        eval_every_n_epochs=0,
        grad_clip_norm=10.0,
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        schedule={"name": "cosine", "warmup_steps": 20},
    )


@dataclass
class TrainConfig:
    """One vision_qc training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=default_trainer)
    out_dir: str = "data/runs/vision_qc/model"  # model directory to write
    anomaly_bank: int = 1024  # patches kept in the anomaly memory bank (0 = no anomaly score)
    paste_on_good: bool = True  # paste synthetic defects onto defect-free training images
    max_pasted: int = 8  # 1..N pasted defects per normal image (more per step: faster learning)
    augment: bool = True
    backbone_lr_scale: float = 1.0  # the backbone's learning rate relative to the FPN and head
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.trainer, dict):  # a partial trainer section keeps the defaults
            self.trainer = TrainerConfig.from_dict(
                deep_merge(default_trainer().to_dict(), self.trainer)
            )
        self.model.num_classes = len(self.data.classes)
        self.trainer.seed = self.seed


class DetectionDataset(Dataset):
    """Images resized to ``image_size`` with their boxes; optional pasting and augmentation."""

    def __init__(
        self,
        samples: list[Sample],
        classes: tuple[str, ...],
        image_size: int,
        *,
        augment: bool,
        paste: bool,
        max_pasted: int = 8,
        seed: int = 0,
    ) -> None:
        self.samples, self.classes, self.size = samples, classes, image_size
        self.augment, self.paste, self.max_pasted, self.seed = augment, paste, max_pasted, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        s = self.samples[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img = rgb8(Image.open(s.path))
        sx, sy = self.size / img.width, self.size / img.height
        arr = (
            np.asarray(img.resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) / 255.0
        )
        boxes = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in s.boxes]
        labels = [self.classes.index(lab) + 1 for lab in s.labels]
        if self.paste and not s.defective:
            arr, inst = paste_defects(
                arr, rng, self.classes, int(rng.integers(1, self.max_pasted + 1))
            )
            boxes += [list(map(float, it.box)) for it in inst]
            labels += [self.classes.index(it.cls) + 1 for it in inst]
        image = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(self.size, self.size),
            ),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(0, 2**31)))
                tf = v2.Compose(
                    [
                        v2.RandomHorizontalFlip(),
                        v2.RandomVerticalFlip(),
                        v2.ColorJitter(brightness=0.2, contrast=0.2),
                    ]
                )
                image, target = tf(tv_tensors.Image(image), target)
                k = int(torch.randint(0, 4, ()).item())
                if k:
                    image, target = v2.functional.rotate(image, 90.0 * k), target
                    target["boxes"] = v2.functional.rotate(target["boxes"], 90.0 * k)
        return torch.as_tensor(image).clamp(0, 1), {
            "boxes": torch.as_tensor(target["boxes"]),
            "labels": target["labels"],
        }


def image_tensor(path: Path, size: int) -> torch.Tensor:
    """``(3, size, size)`` float image in [0, 1], resized as in training."""
    img = rgb8(Image.open(path)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


class DetectionTrainer(Trainer):
    """FCOS returns its losses in training mode; the total is their sum."""

    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        images, targets = batch
        losses = model(images, targets)
        return sum(losses.values()), None, None


def param_groups(model: nn.Module, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: the backbone at ``backbone_lr_scale`` times the learning rate (the
    schedule scales both alike), everything else at the full rate."""
    body = {id(p) for p in model.backbone.body.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in body], "lr_scale": backbone_lr_scale},
        {"params": [p for p in trainable if id(p) not in body], "lr_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]


def partition(
    ds: DetectionSet, cfg: DataConfig, need_train: bool = True
) -> dict[str, list[Sample]]:
    """Seeded ``train`` / ``val`` / ``test`` parts. MVTec trains on ``train/`` (normal images +
    pastes) and holds out ``test/``; labelled formats hold out ``holdout_fraction``. The held-out
    images are split again: ``val_fraction`` picks the threshold, the rest is the test set.
    ``cfg.test_only``: every image is a test image (a dedicated test set). Evaluation and
    compression pass ``need_train=False``: they need no training images."""
    if cfg.test_only:
        train_part, held = [], list(ds.samples)
        test, val = held, []
    else:
        if cfg.format == "mvtec":
            train_part, held = ds.where("train"), ds.where("test")
        else:
            train_part, held = split(ds.samples, cfg.holdout_fraction, cfg.seed)
        test, val = split(held, cfg.val_fraction, cfg.seed + 1)
    if need_train and not train_part:
        raise DataError(
            "no training images" + (" (the data set is marked test_only)" if cfg.test_only else ""),
            where=str(cfg.root),
            fix="train on another data set"
            if cfg.test_only
            else "add images (MVTec: train/good; COCO/YOLO: labelled images)",
        )
    if not need_train and not test:
        raise DataError(
            "no held-out test images",
            where=str(cfg.root),
            fix="add test images, lower val_fraction, or mark a dedicated test set test_only "
            "(--test-set)",
        )
    return {"train": train_part, "val": val, "test": test}


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> tuple[FitResult, Path]:
    """Train the detector; returns the fit result and the model directory written."""
    ds = load_dataset(cfg.data)
    train_samples = partition(ds, cfg.data)["train"]
    seed_everything(cfg.seed)
    model = build_detector(**asdict(cfg.model))
    train_ds = DetectionDataset(
        train_samples,
        cfg.data.classes,
        cfg.model.image_size,
        augment=cfg.augment,
        paste=cfg.paste_on_good,
        max_pasted=cfg.max_pasted,
        seed=cfg.seed,
    )
    trainer = DetectionTrainer(
        model,
        cfg.trainer,
        optimizer_factory=lambda _: build_optimizer(
            param_groups(model, cfg.backbone_lr_scale), cfg.trainer.optimizer
        ),
        collate_fn=collate,
        callbacks=[EpochSetter(train_ds), *(callbacks or [])],
    )
    result = trainer.fit(train_ds)
    out = Path(cfg.out_dir)
    # the weights evaluation would use: the moving average when ``trainer.ema_decay`` is set
    model = trainer.ema.module if trainer.ema is not None else model
    if trainer.is_main:
        # the trained weights are all in model.safetensors: rebuilding needs no pretrained file
        arch = {**asdict(cfg.model), "pretrained_path": None, "pretrained": False}
        normal = [s for s in train_samples if not s.defective]
        extra = {}
        if cfg.anomaly_bank > 0 and normal:
            imgs = torch.stack([image_tensor(s.path, cfg.model.image_size) for s in normal])
            bank = fit_anomaly_bank(model, imgs, cfg.anomaly_bank, cfg.seed)
            extra = {ANOMALY_BANK_FILE: {"bank": bank}}
        config = {
            "arch": "vision_qc_fcos",
            "arch_module": arch_module("vision_qc_fcos"),
            "arch_kwargs": arch,
            "classes": list(cfg.data.classes),
            "input_shape": [3, cfg.model.image_size, cfg.model.image_size],
            # training images' typical side: larger inputs are tiled at this scale
            "source_size": int(np.median([max(s.width, s.height) for s in train_samples])),
            "anomaly_bank": bool(extra),
            "threshold": 0.5,  # until evaluation picks the operating threshold
            "task": "vision_qc",
        }
        card = (
            f"# vision_qc detector\n\nFCOS + {cfg.model.backbone} FPN, {len(train_samples)} training "
            f"images ({cfg.data.format}), classes {list(cfg.data.classes)}, "
            f"{result.global_step} steps.\n"
        )
        metrics = {
            "train_steps": result.global_step,
            "train_images": len(train_samples),
            "nonfinite_steps": result.nonfinite_steps,
        }
        save_model_dir(out, model, config, metrics, card, extra_tensors=extra)
    return result, out
