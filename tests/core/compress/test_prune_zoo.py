"""The pruning zoo: every architecture either prunes with identical outputs under the zeroing
check, or reports each convolution and linear it keeps whole with a reason.

The zoo is a registry (``@zoo``): a new architecture added here is tested for free, as are
the architectures registered in ``core.models``. For each one the check, written
independently of the pruner, (1) zeroes a random half of every prunable channel group,
prunes at 50% and requires the same outputs, and (2) records with forward hooks which
convolutions and linears actually run, and requires each to have fewer output channels
afterwards or a non-empty reason in ``PruneReport.frozen``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from core.compress.prune import PruneConfig, prune
from tests.core.compress.test_prune import bn_eval, zero_half

ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], float]] = {}


def zoo(name: str, shape: tuple[int, ...] = (1, 3, 64, 64), min_mac_ratio: float = 1.0):
    """Register a builder; ``min_mac_ratio`` is what halving its channels must at least give."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        ZOO[name] = (fn, shape, min_mac_ratio)
        return fn

    return deco


def _tv(name: str) -> Callable[[], nn.Module]:
    import torchvision

    return lambda: getattr(torchvision.models, name)(num_classes=10)


def _timm(name: str) -> Callable[[], nn.Module]:
    import timm

    return lambda: timm.create_model(name, num_classes=10, pretrained=False)


for _name, _ratio in (
    ("resnet18", 3.0),
    ("mobilenet_v2", 3.0),
    ("mobilenet_v3_small", 2.5),
    ("efficientnet_b0", 3.0),  # stochastic depth no longer freezes the residual streams
    ("shufflenet_v2_x0_5", 1.5),  # channel shuffle (a reshape) freezes, and is reported
    ("densenet121", 3.0),
    ("mnasnet0_5", 2.5),
    ("squeezenet1_0", 3.0),
    ("regnet_x_400mf", 1.5),  # grouped convolutions stay whole
    ("convnext_tiny", 1.0),  # permute + LayerNorm over channels: boundaries everywhere
):
    zoo(f"torchvision.{_name}", min_mac_ratio=_ratio)(_tv(_name))

for _name, _ratio in (
    ("efficientnet_b0", 3.0),  # DropPath passes through
    ("mobilenetv3_small_100", 2.5),
    ("convnext_atto", 1.5),  # layer scale (a parameter used functionally) freezes
    ("resnet10t", 3.0),
    ("cspresnet50", 2.0),  # CSP split through one conv's outputs: frozen and reported
    ("ghostnet_050", 1.1),  # slicing x[:, :n] freezes
    ("dla34", 3.0),
):
    zoo(f"timm.{_name}", min_mac_ratio=_ratio)(_timm(_name))


def _core_registered() -> list[str]:
    import core.reference.digits  # noqa: F401  (registers the core reference architectures)
    from core.models import _REGISTRY, registered_models

    # pipelines register their own architectures (other inputs) and test them there
    return [f"core.{n}" for n in registered_models() if _REGISTRY[n].__module__.startswith("core.")]


def _build(name: str) -> tuple[nn.Module, tuple[int, ...], float]:
    if name.startswith("core."):
        from core.models import build_model

        return build_model({"arch": name[5:]}), (1, 1, 32, 32), 1.0
    fn, shape, ratio = ZOO[name]
    return fn(), shape, ratio


@pytest.mark.parametrize("name", [*ZOO, *_core_registered()])
def test_zoo_model_prunes_exactly_or_reports_every_kept_layer(name):
    torch.manual_seed(0)
    model, shape, min_ratio = _build(name)
    model = bn_eval(model)
    x = torch.randn(*shape)
    zero_half(model, x)
    with torch.no_grad():
        before = model(x)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    width = {n: m.weight.shape[0] for n, m in layers.items()}
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda *_, n=n: ran.add(n)) for n, m in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    report = prune(model, x, PruneConfig(ratio=0.5))

    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    shrunk = {n for n in ran if layers[n].weight.shape[0] < width[n]}
    unexplained = sorted(n for n in ran - shrunk if not report.frozen.get(n))
    assert not unexplained, (
        f"{len(unexplained)} layers neither pruned nor reported: {unexplained[:8]}"
    )
    assert report.mac_ratio >= min_ratio
