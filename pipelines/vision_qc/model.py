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

The exportable graph (:class:`DetectorNet`) is the whole detector as one static graph:
ImageNet normalisation, backbone, FPN, FCOS head, box decoding against the fixed anchor grid,
class scores ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (exactly torchvision's FCOS), and
the patch anomaly score against the memory bank of normal patches. ``(B, 3, S, S)`` floats in
[0, 1] -> ``boxes (B, A, 4)`` (pixels of the S x S input), ``scores (B, A, C)``, ``anomaly
(B,)``. Non-maximum suppression is deliberately *not* in the graph: the tiles of a large
image are merged by one NMS in image coordinates, in :func:`postprocess`, the same code for
the PyTorch and the ONNX Runtime backends.

Not here: running a model directory on images (``predict.py``), compression (``deploy.py``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError, ModelLoadError
from core.models import register_model

ANOMALY_BANK_FILE = "anomaly_bank.safetensors"  # beside model.safetensors in a model directory


@dataclass
class ModelConfig:
    """Detector architecture."""

    backbone: str = "efficientnet_lite0"  # any timm CNN with features_only support
    num_classes: int = 5  # defect classes (background excluded)
    fpn_channels: int = 64  # FPN width
    out_indices: tuple[int, ...] = (2, 3, 4)  # backbone stages fed to the FPN (strides 8, 16, 32)
    image_size: int = 256  # train/infer resolution (square)
    pretrained_path: str | None = None  # local .safetensors with backbone weights
    pretrained: bool = True  # start from the ImageNet weights that ship for the backbone
    freeze_bn: bool = False  # backbone batch norms keep their (pretrained) statistics in training
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
        if self.pretrained and not self.pretrained_path:
            from core.backbones import require_shipped

            require_shipped(self.backbone)


class TimmFPN(nn.Module):
    """timm feature extractor + torchvision FPN with P6/P7; ``out_channels`` as FCOS expects."""

    def __init__(
        self,
        name: str,
        out_indices: tuple[int, ...],
        channels: int,
        pretrained_path: str | None = None,
        pretrained: bool = False,
        freeze_bn: bool = False,
    ) -> None:
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

        super().__init__()
        self.body = timm.create_model(
            name, features_only=True, out_indices=out_indices, pretrained=False
        )
        if pretrained_path:
            load_backbone_weights(self.body, pretrained_path)
        elif pretrained:
            from core.backbones import load_shipped

            load_shipped(name, self.body)
        in_chs = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            in_chs, channels, extra_blocks=LastLevelP6P7(channels, channels)
        )
        self.out_channels = channels
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> TimmFPN:
        """``freeze_bn``: the backbone's batch norms stay in eval mode (running statistics
        kept; their affine weights still learn): batches of 4 would overwrite good
        pretrained statistics with noisy ones."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

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
    """FCOS on a timm backbone with FPN (see :class:`ModelConfig`). Pretrained backbone weights
    load only when ``pretrained`` is passed true, as training does: a model directory (written
    with ``pretrained=False``, or before the option existed) rebuilds without them."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    cfg = ModelConfig(**{"pretrained": False, **kwargs})  # type: ignore[arg-type]
    backbone = TimmFPN(
        cfg.backbone,
        cfg.out_indices,
        cfg.fpn_channels,
        cfg.pretrained_path,
        cfg.pretrained,
        cfg.freeze_bn,
    )
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


def patch_features(feats: list[torch.Tensor]) -> torch.Tensor:
    """``(B, P, C)`` patch features at stride 16: the stride-8 map (pooled 3x3, then 2x2) and
    the stride-16 map (pooled 3x3), concatenated. Shared by the scorer and the exported graph."""
    f1 = F.avg_pool2d(F.avg_pool2d(feats[0], 3, 1, 1), 2)
    f2 = F.avg_pool2d(feats[1], 3, 1, 1)
    return torch.cat([f1, f2], dim=1).flatten(2).transpose(1, 2)


def nearest_distance(p: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """``(B,)`` image scores: the largest distance from a patch of ``p`` ``(B, P, C)`` to its
    nearest bank patch ``(M, C)``. Squared distances by one matmul (exportable to ONNX)."""
    d2 = (p * p).sum(-1, keepdim=True) - 2.0 * p @ bank.t() + bank_sq
    return d2.min(dim=2).values.max(dim=1).values.clamp_min(0.0).sqrt()


def greedy_coreset(x: torch.Tensor, n: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """PatchCore's greedy k-center coreset: ``n`` rows of ``x`` ``(N, C)`` that cover it, chosen
    on a seeded random projection (Johnson-Lindenstrauss) to keep it fast."""
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    z = (
        x @ torch.randn(x.shape[1], min(proj_dim, x.shape[1]), generator=g)
        if x.shape[1] > proj_dim
        else x
    )
    chosen = [int(torch.randint(0, x.shape[0], (1,), generator=g))]
    dist = ((z - z[chosen[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        k = int(dist.argmax())
        chosen.append(k)
        dist = torch.minimum(dist, ((z - z[k]) ** 2).sum(1))
    return x[torch.tensor(chosen)]


class PatchAnomalyScorer(nn.Module):
    """Nearest-neighbour distance of patch features to a coreset of normal patches."""

    def __init__(self, backbone: nn.Module, max_bank: int = 2048, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.max_bank = max_bank
        self.seed = seed
        self.register_buffer("bank", torch.zeros(0))

    @torch.no_grad()
    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, P, C)`` patch features of ``images`` (see :func:`patch_features`)."""
        return patch_features(self.backbone(images))

    @torch.no_grad()
    def fit(self, normal_images: torch.Tensor, chunk: int = 16) -> None:
        """Build the memory bank from defect-free images ``(N, 3, H, W)`` (greedy coreset)."""
        self.backbone.eval()
        bank = torch.cat(
            [
                self.patches(normal_images[i : i + chunk]).flatten(0, 1)
                for i in range(0, len(normal_images), chunk)
            ]
        )
        self.bank = greedy_coreset(bank, self.max_bank, self.seed)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` image anomaly scores (higher = more anomalous)."""
        if self.bank.numel() == 0:
            raise ConfigError(
                "the anomaly scorer has no memory bank",
                fix="call fit() on defect-free images first",
            )
        return nearest_distance(self.patches(images), self.bank, (self.bank**2).sum(1))


class _Normalized(nn.Module):
    def __init__(self, body: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body((x - self.mean) / self.std)


@torch.no_grad()
def fit_anomaly_bank(
    detector: nn.Module, normal_images: torch.Tensor, max_bank: int = 1024, seed: int = 0
) -> torch.Tensor:
    """The memory bank ``(M, C)`` of a trained detector's backbone on defect-free images
    ``(N, 3, S, S)`` in [0, 1], normalised as the detector normalises its input."""
    t = detector.transform
    body = _Normalized(detector.backbone.body, list(t.image_mean), list(t.image_std))
    was_training = detector.training
    scorer = PatchAnomalyScorer(body.eval(), max_bank=max_bank, seed=seed)
    scorer.fit(normal_images)
    detector.train(was_training)
    return scorer.bank


# ---------------------------------------------------------------- the exportable graph
class DetectorNet(nn.Module):
    """FCOS + anomaly score as one static graph (see the module docstring)."""

    def __init__(self, fcos: nn.Module, image_size: int, bank: torch.Tensor | None) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.body, self.fpn, self.head = fcos.backbone.body, fcos.backbone.fpn, fcos.head
        self.size = image_size
        self.register_buffer("mean", torch.tensor(fcos.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(fcos.transform.image_std).view(1, 3, 1, 1))
        with torch.no_grad():
            x = torch.zeros(1, 3, image_size, image_size)
            pyramid = list(fcos.backbone(x).values())
            anchors = fcos.anchor_generator(ImageList(x, [(image_size, image_size)]), pyramid)[0]
        self.register_buffer("anchor_ctr", (anchors[:, :2] + anchors[:, 2:]) / 2)
        self.register_buffer("anchor_wh", (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2))
        if bank is None:
            with torch.no_grad():
                channels = patch_features(self.body(x)).shape[-1]
            bank = torch.zeros(1, channels)
        self.register_buffer("bank", bank.float())
        self.register_buffer("bank_sq", (self.bank**2).sum(1))

    @torch.no_grad()
    def refit_bank(self, normal_images: torch.Tensor, seed: int = 0) -> None:
        """Rebuild the memory bank (same size) from defect-free images ``(N, 3, S, S)``, e.g.
        after pruning changed the backbone's features."""
        p = torch.cat(
            [
                patch_features(self.body((normal_images[i : i + 16] - self.mean) / self.std))
                for i in range(0, len(normal_images), 16)
            ]
        ).flatten(0, 1)
        self.bank = greedy_coreset(p, self.bank.shape[0], seed)
        self.bank_sq = (self.bank**2).sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.body((x - self.mean) / self.std)
        pyramid = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        out = self.head(pyramid)
        # column 0 of FCOS's logits is the never-trained background class
        scores = torch.sqrt(
            torch.sigmoid(out["cls_logits"][..., 1:]) * torch.sigmoid(out["bbox_ctrness"])
        )
        d = out["bbox_regression"] * self.anchor_wh
        ctr = self.anchor_ctr.repeat(1, 2)
        boxes = (ctr + torch.cat([-d[..., :2], d[..., 2:]], dim=-1)).clamp(0.0, float(self.size))
        anomaly = nearest_distance(patch_features(feats), self.bank, self.bank_sq)
        return boxes, scores, anomaly


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_thresh: float,
    iou: float = 0.6,
    max_det: int = 50,
    candidates: int = 1000,
) -> dict[str, np.ndarray]:
    """One image's graph outputs -> ``{"boxes" (K, 4), "scores" (K,), "labels" (K,) 1..C}``:
    score threshold, the top ``candidates``, class-wise NMS, the best ``max_det`` (FCOS's rule)."""
    from torchvision.ops import batched_nms

    a, c = np.nonzero(scores > score_thresh)
    s = scores[a, c]
    order = np.argsort(-s, kind="stable")[:candidates]
    a, c, s = a[order], c[order], s[order]
    b = torch.from_numpy(np.ascontiguousarray(boxes[a], dtype=np.float32))
    keep = batched_nms(b, torch.from_numpy(s.astype(np.float32)), torch.from_numpy(c), iou)
    keep = keep[:max_det].numpy()
    return {"boxes": b.numpy()[keep], "scores": s[keep].astype(np.float32), "labels": c[keep] + 1}


def load_detector_net(model_dir: str | os.PathLike[str]) -> DetectorNet:
    """The exportable graph of a trained (PyTorch) model directory, bank included when present."""
    from safetensors.torch import load_file

    from core.artifacts import verify_model_files
    from core.models import load_model_dir

    model_dir = Path(model_dir)
    fcos, cfg = load_model_dir(model_dir)
    verify_model_files(model_dir, [ANOMALY_BANK_FILE])
    bank_path = model_dir / ANOMALY_BANK_FILE
    bank = load_file(str(bank_path))["bank"] if bank_path.is_file() else None
    return DetectorNet(fcos, int(cfg["input_shape"][-1]), bank).eval()
