"""The vision_qc networks: an FCOS detector on a timm backbone with FPN, and an anomaly scorer.

Detector: torchvision's **FCOS**. It is anchor-free (no anchor sizes or ratios to tune per
factory, where defect shapes range from hair-thin scratches to round holes), one-stage, and
strong on small objects. Its backbone is any timm CNN (``features_only``) feeding torchvision's
``FeaturePyramidNetwork`` with P6/P7. Weights load from a local ``.safetensors`` file when
given (no hub downloads); otherwise it trains from scratch. Input: a list of ``(3, H, W)``
float images in [0, 1]; in training also targets ``{"boxes": (N, 4) xyxy px, "labels": (N,)}``
with labels ``1..C`` (0 is background).

Anomaly score (anomalib's PatchCore idea, kept small): backbone patch features of defect-free
images form a memory bank; an image's score is the largest distance from any of its patches
to the nearest normal patch. It needs no defect labels.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError, ModelLoadError
from core.models import register_model


@dataclass
class ModelConfig:
    """Detector architecture."""

    backbone: str = "resnet18"  # any timm CNN with features_only support
    num_classes: int = 5  # defect classes (background excluded)
    fpn_channels: int = 64  # FPN width
    out_indices: tuple[int, ...] = (2, 3, 4)  # backbone stages fed to the FPN (strides 8, 16, 32)
    image_size: int = 256  # train/infer resolution (square)
    pretrained_path: str | None = None  # local .safetensors with backbone weights
    score_thresh: float = 0.05  # detections kept before the operating threshold
    detections_per_img: int = 50

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError("num_classes must be >= 1", fix="count the defect classes")
        if self.image_size < 256 or self.image_size % 128:
            # FCOS resizes every input to image_size; its P7 map (stride 128) must be at least
            # 2x2, or the head's GroupNorm fails on a single image.
            raise ConfigError(
                f"image_size must be a multiple of 128 and >= 256, got {self.image_size}",
                fix="use 256 or 384; large parts are tiled by the predictor instead",
            )
        self.out_indices = tuple(self.out_indices)


class TimmFPN(nn.Module):
    """timm feature extractor + torchvision FPN with P6/P7; ``out_channels`` as FCOS expects."""

    def __init__(
        self,
        name: str,
        out_indices: tuple[int, ...],
        channels: int,
        pretrained_path: str | None = None,
    ) -> None:
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

        super().__init__()
        self.body = timm.create_model(
            name, features_only=True, out_indices=out_indices, pretrained=False
        )
        if pretrained_path:
            load_backbone_weights(self.body, pretrained_path)
        in_chs = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            in_chs, channels, extra_blocks=LastLevelP6P7(channels, channels)
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def load_backbone_weights(body: nn.Module, path: str) -> None:
    """Load a local safetensors file into the backbone; a mismatch names the keys."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(
            "pretrained weights file not found", where=str(p), fix="check pretrained_path"
        )
    state = load_file(str(p))
    result = body.load_state_dict(state, strict=False)
    if len(result.missing_keys) > len(state) // 2:
        raise ModelLoadError(
            f"weights do not match backbone ({len(result.missing_keys)} missing keys, e.g. "
            f"{result.missing_keys[:3]})",
            where=str(p),
            fix="use weights of the same timm model",
        )


@register_model("vision_qc_fcos")
def build_detector(**kwargs: object) -> nn.Module:
    """FCOS on a timm backbone with FPN (see :class:`ModelConfig`)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    cfg = ModelConfig(**kwargs)  # type: ignore[arg-type]
    backbone = TimmFPN(cfg.backbone, cfg.out_indices, cfg.fpn_channels, cfg.pretrained_path)
    levels = len(cfg.out_indices) + 2  # + P6, P7
    sizes = tuple((8 * 2**i,) for i in range(levels))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((1.0,),) * levels)
    return FCOS(
        backbone,
        num_classes=cfg.num_classes + 1,
        min_size=cfg.image_size,
        max_size=cfg.image_size,
        anchor_generator=anchors,
        score_thresh=cfg.score_thresh,
        detections_per_img=cfg.detections_per_img,
    )


class PatchAnomalyScorer(nn.Module):
    """Nearest-neighbour distance of patch features to a bank of normal patches."""

    def __init__(self, backbone: nn.Module, max_bank: int = 20_000, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.max_bank = max_bank
        self.seed = seed
        self.register_buffer("bank", torch.zeros(0))

    @torch.no_grad()
    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, P, C)`` patch features: stride-8 and stride-16 maps, pooled 3x3, concatenated."""
        feats = self.backbone(images)
        f1, f2 = feats[0], feats[1]
        f1 = F.avg_pool2d(f1, 3, 1, 1)
        f2 = F.interpolate(
            F.avg_pool2d(f2, 3, 1, 1), size=f1.shape[-2:], mode="bilinear", align_corners=False
        )
        f = torch.cat([f1, f2], dim=1)
        return f.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def fit(self, normal_images: torch.Tensor) -> None:
        """Build the memory bank from defect-free images ``(N, 3, H, W)`` (random subsample)."""
        self.backbone.eval()
        bank = self.patches(normal_images).reshape(-1, self.patches(normal_images[:1]).shape[-1])
        if bank.shape[0] > self.max_bank:
            g = torch.Generator().manual_seed(self.seed)
            bank = bank[torch.randperm(bank.shape[0], generator=g)[: self.max_bank]]
        self.bank = bank

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` image anomaly scores (higher = more anomalous)."""
        if self.bank.numel() == 0:
            raise ConfigError(
                "the anomaly scorer has no memory bank",
                fix="call fit() on defect-free images first",
            )
        p = self.patches(images)
        d = torch.cdist(p, self.bank.unsqueeze(0).expand(p.shape[0], -1, -1))
        return d.min(dim=2).values.max(dim=1).values
