"""The nodule segmentation network and how it sees a volume.

A 3-D U-Net (MONAI ``DynUNet``: two classes, background and nodule) registered as
``medical_ct_unet``. Its input contract: HU windowed to ``hu_window`` and scaled to [0, 1], on
a grid resampled to ``spacing_mm`` ``(z, y, x)``, shaped ``(B, 1, D, H, W)``.
:func:`to_model_grid` makes that from a :class:`~pipelines.medical_ct.data.Volume`;
:func:`predict_probability` runs MONAI's sliding windows (Gaussian blending) over the windows
that hold a voxel of the lung field (``lungs.py``; the whole grid without one) and returns
the nodule probability back on the volume's own grid. Not here: patches and augmentation
(``train.py``), the lung field itself (``lungs.py``), connected components and measurements
(``nodules.py``). :class:`Segmenter` joins the two: volume in, nodules out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError, ModelLoadError
from core.models import register_model
from pipelines.medical_ct.data import Volume


@dataclass
class ModelConfig:
    """The network and its input grid."""

    filters: tuple[int, ...] = (8, 16, 32, 64)  # channels per level (levels = len)
    # DynUNet norm_name: batch | instance | group. Batch: at inference a window's output does
    # not depend on what else the window holds (instance norm's statistics do: the same
    # nodule scored 0.58 in whole-volume windows and 0.18 in lung-box windows), and it folds
    # into the convolutions for INT8
    norm: str = "batch"
    res_block: bool = False  # residual blocks in the encoder/decoder
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)  # grid the network sees (z, y, x)
    hu_window: tuple[float, float] = (-1000.0, 400.0)  # HU mapped to [0, 1], clipped outside
    roi: tuple[int, int, int] = (32, 64, 64)  # patch (training) and window (inference), voxels
    overlap: float = 0.25  # sliding-window overlap at inference
    lung_field: bool = True  # infer inside the lung field only (lungs.py); False: whole volume
    sw_batch_size: int = 4  # windows per forward at inference

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        self.hu_window = tuple(float(h) for h in self.hu_window)  # type: ignore[assignment]
        self.roi = tuple(int(r) for r in self.roi)  # type: ignore[assignment]
        if len(self.filters) < 2 or min(self.filters) < 1:
            raise ConfigError(
                "filters needs >= 2 positive channel counts", fix="e.g. (8, 16, 32, 64)"
            )
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ConfigError(
                "spacing_mm must be three positive mm values", fix="e.g. (1.5, 1.5, 1.5)"
            )
        if not self.hu_window[0] < self.hu_window[1]:
            raise ConfigError("hu_window must be (low, high) with low < high", fix="(-1000, 400)")
        step = 2 ** (len(self.filters) - 1)
        if len(self.roi) != 3 or any(r % step or r < step for r in self.roi):
            raise ConfigError(
                f"roi {self.roi} must be three multiples of {step} (2 ** (levels - 1))",
                fix="e.g. (32, 64, 64)",
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("overlap must lie in [0, 1)", fix="use 0.25")

    def arch_kwargs(self) -> dict:
        return {"filters": list(self.filters), "norm": self.norm, "res_block": self.res_block}


@register_model("medical_ct_unet")
def build_unet(
    filters: tuple[int, ...] | list[int] = (8, 16, 32, 64),
    norm: str = "batch",
    res_block: bool = False,
    fg_prior: float = 0.01,
) -> nn.Module:
    """MONAI DynUNet, 3-D, 1 channel in, 2 classes out (logits). The output bias starts at the
    nodule prior ``fg_prior`` (as RetinaNet does for rare classes): from MONAI's zero bias
    every voxel starts near p=0.5 and the first hundreds of steps only push the background
    down (measured, one fixed batch, 40 AdamW steps at 3e-3: Dice 0.055 from a zero bias,
    0.984 from the prior)."""
    from monai.networks.nets import DynUNet

    n = len(filters)
    net = DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kernel_size=[3] * n,
        strides=[1] + [2] * (n - 1),
        upsample_kernel_size=[2] * (n - 1),
        filters=list(filters),
        norm_name=norm,
        res_block=res_block,
    )
    with torch.no_grad():
        net.output_block.conv.conv.bias.copy_(
            torch.tensor([0.0, float(np.log(fg_prior / (1 - fg_prior)))])
        )
    return net


def window(
    hu: np.ndarray | torch.Tensor, hu_window: tuple[float, float]
) -> np.ndarray | torch.Tensor:
    """HU -> [0, 1] over ``hu_window`` (clipped)."""
    lo, hi = hu_window
    x = (hu - lo) / (hi - lo)
    return x.clip(0, 1) if isinstance(x, np.ndarray) else x.clamp(0, 1)


def grid_shape(vol: Volume, spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """Shape of ``vol`` resampled to ``spacing_mm`` (same physical extent)."""
    return tuple(
        max(1, round(n * s / t)) for n, s, t in zip(vol.shape, vol.spacing, spacing_mm, strict=True)
    )  # type: ignore[return-value]


def resample(x: torch.Tensor, shape: tuple[int, int, int], mode: str = "trilinear") -> torch.Tensor:
    """``(B, C, D, H, W)`` to ``shape`` by voxel centres (``align_corners=False``); ``nearest``
    for labels."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=shape, mode="nearest-exact")
    return F.interpolate(x, size=shape, mode="trilinear", align_corners=False)


def hu_on_model_grid(vol: Volume, cfg: ModelConfig) -> torch.Tensor:
    """``(1, 1, D', H', W')`` float32 HU resampled to ``cfg.spacing_mm``."""
    x = torch.from_numpy(np.ascontiguousarray(vol.array, dtype=np.float32))[None, None]
    return resample(x, grid_shape(vol, cfg.spacing_mm))


def to_model_grid(vol: Volume, cfg: ModelConfig) -> torch.Tensor:
    """``(1, 1, D', H', W')`` float32: ``vol`` windowed and resampled to ``cfg.spacing_mm``."""
    return window(hu_on_model_grid(vol, cfg), cfg.hu_window)  # type: ignore[return-value]


def sliding_window(
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    cfg: ModelConfig,
    field: np.ndarray | None = None,
) -> torch.Tensor:
    """Logits ``(1, 2, D, H, W)`` of ``x`` ``(1, 1, D, H, W)`` by sliding windows of
    ``cfg.roi`` with ``cfg.overlap`` and Gaussian blending.

    Without ``field``: MONAI's ``sliding_window_inference`` over the whole grid. With a boolean
    ``field`` ``(D, H, W)``: the same windows (MONAI's ``dense_patch_slices`` and Gaussian
    importance map), but only those holding a field voxel run, so on every field voxel the
    result equals MONAI's whole-grid one (all the windows that cover it ran, with the same
    weights); a voxel no kept window covers gets NaN. A grid smaller than the roi is padded
    (replicate) and cropped back."""
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        if field is None:
            return sliding_window_inference(
                x,
                roi_size=cfg.roi,
                sw_batch_size=cfg.sw_batch_size,
                predictor=net,
                overlap=cfg.overlap,
                mode="gaussian",
                padding_mode="replicate",
            )
        shape = tuple(x.shape[2:])
        pad = [max(r - n, 0) for r, n in zip(cfg.roi, shape, strict=True)]
        if any(pad):  # as MONAI pads: symmetric, replicate
            spec = [q for p in reversed(pad) for q in (p // 2, p - p // 2)]
            x = F.pad(x, spec, mode="replicate")
            f = F.pad(torch.from_numpy(field)[None, None].float(), spec)[0, 0] > 0
        else:
            f = torch.from_numpy(field)
        size = tuple(x.shape[2:])
        interval = [r if r == n else max(int(r * (1 - cfg.overlap)), 1)
                    for r, n in zip(cfg.roi, size, strict=True)]  # fmt: skip
        windows = [s for s in dense_patch_slices(size, cfg.roi, interval) if f[s].any()]
        imp = compute_importance_map(cfg.roi, mode="gaussian", sigma_scale=0.125)
        out = torch.zeros((1, 2, *size))
        count = torch.zeros((1, 1, *size))
        for b in range(0, len(windows), cfg.sw_batch_size):
            group = windows[b : b + cfg.sw_batch_size]
            logits = net(torch.cat([x[(slice(None), slice(None), *s)] for s in group])).float()
            for k, s in enumerate(group):
                out[(slice(None), slice(None), *s)] += logits[k] * imp
                count[(slice(None), slice(None), *s)] += imp
        out = out / count  # 0 / 0 = NaN where no kept window reached
        if any(pad):
            out = out[
                (
                    slice(None),
                    slice(None),
                    *(slice(p // 2, p // 2 + n) for p, n in zip(pad, shape, strict=True)),
                )
            ]
        return out


def predict_probability(
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor], vol: Volume, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nodule probability ``(D, H, W)`` float32 on ``vol``'s grid, and the lung field there
    (``None`` when ``cfg.lung_field`` is off or the volume shows no lung): sliding windows of
    ``cfg.roi`` with Gaussian blending on the model grid, softmax, resampled back.

    With the field, only the windows that hold a field voxel run (on this CPU's test studies
    45-68 of 75): inside the field the probability is MONAI's whole-volume one, a voxel no
    such window reaches is 0, and :class:`Segmenter` keeps only nodules that touch the field
    (none in the air around the patient, the bowel or the spine; those on the pleura whole). A
    volume without a lung field is read whole."""
    from pipelines.medical_ct.lungs import lung_field

    hu = hu_on_model_grid(vol, cfg)
    field = lung_field(hu[0, 0].numpy(), cfg.spacing_mm) if cfg.lung_field else None
    logits = sliding_window(net, window(hu, cfg.hu_window), cfg, field)  # type: ignore[arg-type]
    with torch.inference_mode():
        prob = torch.nan_to_num(torch.softmax(logits, dim=1)[:, 1:2], nan=0.0)
        out = resample(prob, vol.shape)[0, 0].numpy().astype(np.float32)
        if field is not None:
            f = torch.from_numpy(field.astype(np.float32))[None, None]
            field = resample(f, vol.shape, "nearest")[0, 0].numpy() > 0.5
    return out, field


class Segmenter:
    """A network plus its input contract as one call: ``volume -> (nodules, label map,
    probability)``. ``net`` is a PyTorch module or any callable on ``(B, 1, *roi)`` tensors
    returning logits (an ONNX Runtime session wrapped by ``deploy.py``)."""

    def __init__(
        self,
        net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        cfg: ModelConfig,
        threshold: float = 0.5,
        min_diameter_mm: float = 2.0,
    ) -> None:
        self.net, self.cfg = net, cfg
        self.threshold, self.min_diameter_mm = threshold, min_diameter_mm

    def __call__(self, vol: Volume) -> tuple[list, np.ndarray, np.ndarray]:
        from pipelines.medical_ct.nodules import find_nodules

        prob, field = predict_probability(self.net, vol, self.cfg)
        found, labels = find_nodules(prob, vol, self.threshold, self.min_diameter_mm, field)
        return found, labels, prob


def load_segmenter(model_dir: str | Path) -> Segmenter:
    """The :class:`Segmenter` of a PyTorch model directory written by ``train.py``."""
    from core.models import load_model_dir

    net, config = load_model_dir(model_dir)
    if config.get("task") != "medical_ct":
        raise ModelLoadError(
            f"not a medical_ct model (task {config.get('task')!r})", where=str(model_dir)
        )
    cfg = ModelConfig(**config["model"])
    return Segmenter(
        net.eval(), cfg, config.get("threshold", 0.5), config.get("min_diameter_mm", 2.0)
    )
