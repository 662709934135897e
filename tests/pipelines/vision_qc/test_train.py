"""Training the vision_qc detector on synthetic defects pasted onto normal images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.models import load_model_dir
from core.train import Callback, TrainerConfig
from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.data import load_mvtec
from pipelines.vision_qc.model import ModelConfig
from pipelines.vision_qc.synth import write_dataset
from pipelines.vision_qc.train import DetectionDataset, TrainConfig, train

CLASSES = ("hole", "scratch", "stain")


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    cfg = SynthConfig(
        out_dir=str(tmp_path_factory.mktemp("s") / "set"),
        surfaces=("brushed_metal",),
        n_train_good=8,
        n_test_good=2,
        n_test_per_defect=1,
        size=128,
        defects=CLASSES,
    )
    return write_dataset(cfg) / "brushed_metal"


def test_dataset_items_are_seeded_and_boxes_follow_the_augmentation(category):
    samples = load_mvtec(category, CLASSES).where("train")
    a = DetectionDataset(samples, CLASSES, 256, augment=True, paste=True, seed=0)
    b = DetectionDataset(samples, CLASSES, 256, augment=True, paste=True, seed=0)
    for i in range(3):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
        assert len(ta["boxes"]) >= 1 and ta["labels"].min() >= 1  # pasted defects on a normal image
        assert ((ta["boxes"] >= 0) & (ta["boxes"] <= 256)).all()
    a.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])  # another epoch, another augmentation
    # one pasted defect, so everything outside its box is the clean image
    plain = DetectionDataset(samples, CLASSES, 256, augment=False, paste=True, max_pasted=1, seed=0)
    img, tgt = plain[0]
    x1, y1, x2, y2 = tgt["boxes"][0].round().long().tolist()
    assert img.shape == (3, 256, 256)
    # the pasted defect changed pixels inside its box relative to the clean normal image
    clean = DetectionDataset(samples, CLASSES, 256, augment=False, paste=False, seed=0)[0][0]
    assert (img - clean)[:, y1:y2, x1:x2].abs().max() > 0.05
    assert np.isclose(float((img - clean)[:, :y1].abs().max()) if y1 > 0 else 0.0, 0.0, atol=1e-6)


@pytest.mark.slow
def test_training_from_normal_images_writes_a_reloadable_detector(category, tmp_path):
    losses = []

    class Record(Callback):
        def on_step_end(self, trainer, step, logs):
            losses.append(logs["loss"])

    cfg = TrainConfig(
        data=DataConfig(root=str(category), classes=CLASSES),
        model=ModelConfig(image_size=256, fpn_channels=32),
        trainer=TrainerConfig(
            max_epochs=3,
            batch_size=4,
            progress="off",
            eval_every_n_epochs=0,
            optimizer={"name": "adamw", "lr": 1e-3},
        ),
        out_dir=str(tmp_path / "model"),
    )
    result, out = train(cfg, callbacks=[Record()])
    assert result.global_step == 6 and losses[-1] < losses[0]
    model, config = load_model_dir(out)
    assert json.loads((out / "metrics.json").read_text())["train_images"] == 8
    assert config["classes"] == list(CLASSES) and config["arch"] == "vision_qc_fcos"
    with torch.no_grad():
        det = model([torch.rand(3, 128, 128)])[0]
    assert det["boxes"].shape[-1] == 4
