"""The vision_qc detector and anomaly scorer on real synthetic inspection images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ModelLoadError
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
    from core.errors import ConfigError

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
