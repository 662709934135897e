"""Model registry: architectures register by name; model directories rebuild from config.json.

``config.json`` of a model directory holds ``arch`` (a registered name), ``arch_module`` (the
module whose import registers it; :func:`arch_module` gives it to writers), ``arch_kwargs``
and ``input_shape`` (one sample, without the batch dim). :func:`build_model` imports
``arch_module`` when ``arch`` is not registered yet, so this module never imports the
modules that register architectures (they import it: dependencies point down). A pruned model keeps its base ``arch``:
:func:`load_model_dir` builds the base network, then shrinks every conv/linear/norm to the
shapes stored in ``model.safetensors`` before loading them, so pruned directories need no
code of their own. Pipelines register their architectures with :func:`register_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.artifacts import read_model_dir
from core.errors import ModelLoadError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``@register_model("digits_cnn")`` on a function or class building the model."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def registered_models() -> list[str]:
    """Names registered so far (by the modules imported until now)."""
    return sorted(_REGISTRY)


def arch_module(name: str) -> str:
    """The module that registers architecture ``name`` (for ``config.json``'s ``arch_module``)."""
    if name not in _REGISTRY:
        raise ModelLoadError(f"unknown architecture {name!r}", fix="register it first")
    return _REGISTRY[name].__module__


def build_model(config: dict[str, Any]) -> nn.Module:
    """The registered architecture ``config["arch"]`` built with ``config["arch_kwargs"]``;
    ``config["arch_module"]`` is imported first when the name is not registered yet."""
    arch = config.get("arch")
    module = config.get("arch_module")
    if arch not in _REGISTRY and isinstance(module, str):
        import importlib

        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModelLoadError(
                f"arch_module {module!r} cannot be imported ({exc})",
                where="config.json",
                fix="install the package that provides it",
            ) from exc
    if arch not in _REGISTRY:
        raise ModelLoadError(
            f"unknown architecture {arch!r}",
            where="config.json",
            fix=f"use one of {sorted(_REGISTRY)}, import the module that registers it, or "
            "re-export the directory (config.json then names its arch_module)",
        )
    return _REGISTRY[arch](**config.get("arch_kwargs", {}))


def shrink_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize convs, linears and norms so their parameters take ``state``'s (pruned) shapes."""
    for name, mod in model.named_modules():
        w = state.get(f"{name}.weight" if name else "weight")
        if (
            w is None
            or not hasattr(mod, "weight")
            or mod.weight is None
            or mod.weight.shape == w.shape
        ):
            continue
        for attr in ("weight", "bias", "running_mean", "running_var"):
            key = f"{name}.{attr}"
            if getattr(mod, attr, None) is not None and key in state:
                old = getattr(mod, attr)
                new = torch.empty_like(state[key])
                setattr(
                    mod,
                    attr,
                    nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new,
                )
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            mod.in_channels, mod.out_channels = w.shape[0], w.shape[1] * mod.groups
        elif isinstance(mod, nn.modules.conv._ConvNd):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels
            mod.out_channels = w.shape[0]
            mod.in_channels = w.shape[0] if depthwise else w.shape[1] * mod.groups
            if depthwise:
                mod.groups = w.shape[0]
        elif isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = w.shape
        elif isinstance(
            mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
        ):
            mod.num_features = w.shape[0]
        elif isinstance(mod, nn.LayerNorm):
            mod.normalized_shape = tuple(w.shape)


def load_model_dir(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, config)`` from a model directory."""
    config, state = read_model_dir(path)
    model = build_model(config)
    shrink_to_state_dict(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:300]
        raise ModelLoadError(
            f"weights do not fit the architecture ({first})",
            where=str(path),
            fix="the directory mixes files from different models; re-export it",
        ) from exc
    return model.eval(), config


def example_input(config: dict[str, Any], batch: int = 1) -> torch.Tensor:
    """A zero batch of the model's input shape (``config["input_shape"]``)."""
    shape = config.get("input_shape")
    if not shape:
        raise ModelLoadError(
            "config.json has no input_shape",
            where="config.json",
            fix="add input_shape, e.g. [1, 32, 32] for one-channel 32x32 images",
        )
    return torch.zeros(batch, *shape)
