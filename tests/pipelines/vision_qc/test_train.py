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


def test_backbone_group_holds_exactly_the_backbone_at_its_scale():
    from pipelines.vision_qc.model import build_detector
    from pipelines.vision_qc.train import param_groups

    model = build_detector(num_classes=2)
    body, rest = param_groups(model, 0.1)
    assert body["lr_scale"] == 0.1 and rest["lr_scale"] == 1.0
    ids = [id(p) for g in (body, rest) for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for _ in model.parameters())
    assert {id(p) for p in body["params"]} == {id(p) for p in model.backbone.body.parameters()}


def test_the_saved_weights_are_the_moving_average_when_ema_is_on(category, tmp_path):
    """With ``ema_decay`` the model directory must hold the averaged weights evaluation uses,
    not the last step's. A decay near 1 keeps the average where the first step left it
    (PyTorch's average starts from the weights after step 1), while the raw weights keep
    moving away from their ImageNet start with every AdamW step."""
    from safetensors.torch import load_file

    from core.backbones import shipped_state_dict
    from pipelines.vision_qc.model import build_detector

    start = shipped_state_dict("efficientnet_lite0", build_detector(pretrained=True).backbone.body)[
        "conv_stem.weight"
    ]
    drift = {}
    for ema in (None, 1 - 1e-9):
        cfg = TrainConfig(
            data=DataConfig(root=str(category), classes=CLASSES),
            model=ModelConfig(fpn_channels=32),
            trainer={"max_epochs": 2, "max_steps": None, "progress": "off", "ema_decay": ema},
            out_dir=str(tmp_path / f"m{ema}"),
            anomaly_bank=0,
        )
        _, out = train(cfg)
        saved = load_file(str(out / "model.safetensors"))["backbone.body.conv_stem.weight"]
        drift[ema] = float((saved - start).abs().max())
    assert drift[1 - 1e-9] < 0.5 * drift[None], drift
