"""Fold BatchNorm into the preceding convolution or linear layer for inference.

``fuse(model, example)`` traces the model (``torch.fx``), finds every conv/linear whose only
user is a batch norm, replaces the conv/linear by the folded one (``W' = W * g/s``,
``b' = (b - mean) * g/s + beta``) and the batch norm by ``nn.Identity``. A batch norm that
does more than normalise — timm's ``BatchNormAct2d`` (EfficientNet, MobileNet, ...) applies
its dropout and activation after the statistics — is replaced by what it does after them
(``Sequential(drop, act)``); any other subclass with its own ``forward`` is left unfolded.
The model keeps its own class and module names; it is put in eval mode (folding freezes the
running statistics). Outputs match the unfused model within float rounding (~1e-6).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from core.compress.graph import _Tracer


def fuse(model: nn.Module) -> list[tuple[str, str]]:
    """Fold batch norms in place; returns the ``(conv or linear, bn)`` name pairs folded."""
    model.eval()
    graph = _Tracer().trace(model)
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        mod = model.get_submodule(str(node.target))
        user = next(iter(node.users))
        if user.op != "call_module":
            continue
        bn = model.get_submodule(str(user.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        if _after_norm(bn) is None:
            continue
        is_conv = isinstance(mod, nn.modules.conv._ConvNd) and not isinstance(
            mod, nn.modules.conv._ConvTransposeNd
        )
        if is_conv or (isinstance(mod, nn.Linear) and isinstance(bn, nn.BatchNorm1d)):
            pairs.append((str(node.target), str(user.target)))
    counts: dict[str, int] = {}
    for conv, _ in pairs:  # a module called from several places must not be folded twice
        counts[conv] = counts.get(conv, 0) + 1
    for conv, bn in pairs:
        if counts[conv] != 1:
            continue
        mod, bnm = model.get_submodule(conv), model.get_submodule(bn)
        fused = (
            fuse_conv_bn_eval if isinstance(mod, nn.modules.conv._ConvNd) else fuse_linear_bn_eval
        )(mod, bnm)
        _replace(model, conv, fused)
        _replace(model, bn, _after_norm(bnm))
    return [p for p in pairs if counts[p[0]] == 1]


def _after_norm(bn: nn.Module) -> nn.Module | None:
    """What replaces a folded batch norm: nothing for a plain one, ``Sequential(drop, act)``
    for a normalise-then-activate one (timm's ``BatchNormAct2d``), None (do not fold) for a
    subclass whose ``forward`` does something else."""
    if type(bn).forward is nn.modules.batchnorm._BatchNorm.forward:
        return nn.Identity()
    children = dict(bn.named_children())
    if type(bn).__name__ == "BatchNormAct2d" and set(children) == {"drop", "act"}:
        return nn.Sequential(children["drop"], children["act"])
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
