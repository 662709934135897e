"""Structured channel pruning that returns a genuinely smaller model (no masks).

``report = prune(model, example_input, PruneConfig(ratio=0.5))`` traces the channel
dependency graph (:mod:`core.compress.graph`), scores every prunable group of coupled
channels, keeps the best ``(1 - ratio)`` of each (rounded up to a multiple of ``round_to``,
8 by default, so kernels stay vector-friendly), slices every conv/linear/norm that touches
the group, and checks the pruned model still runs on the example and gives outputs of the
same shape. The model is changed in place; build a new optimizer afterwards and fine-tune.

Importance: ``l1`` / ``l2`` (norms of every weight slice in the group, DepGraph-style),
``bn_scale`` (|gamma| of the group's batch norms; network slimming), ``taylor`` (first order
``|w * dL/dw|``, needs gradients: run a backward pass first). ``scope="global"`` ranks
channels across groups (after normalising each group by its mean), so layers that matter
less give up more. Optional sparsity training: :class:`BNSparsityTrainer` adds an L1
penalty on BN scales to the loss before pruning (Liu et al., "Network Slimming", 2017).

Not here: unstructured/masked sparsity; attention-head pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from core.compress.graph import DepGraph, Layout, PruningError, build_graph
from core.compress.report import count_macs, count_params
from core.errors import ConfigError
from core.train import Trainer

__all__ = ["BNSparsityTrainer", "PruneConfig", "PruneReport", "PruningError", "prune"]


@dataclass
class PruneConfig:
    """What to prune and how much."""

    ratio: float = 0.5  # fraction of channels removed (per group, or overall when global)
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = "l1"  # channel scoring
    scope: Literal["local", "global"] = "local"  # per-group ratio, or one ranking across groups
    round_to: int = 8  # kept channel counts are multiples of this (and at least this)
    exclude: tuple[str, ...] = ()  # module names whose outputs are never pruned (heads)
    max_group_ratio: float = 0.9  # global scope: no group loses more than this fraction

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(
                f"prune ratio must lie in [0, 1), got {self.ratio}", fix="use e.g. 0.5"
            )
        if self.importance not in ("l1", "l2", "bn_scale", "taylor"):
            raise ConfigError(
                f"unknown importance {self.importance!r}", fix="use l1, l2, bn_scale or taylor"
            )
        if self.scope not in ("local", "global"):
            raise ConfigError(f"unknown scope {self.scope!r}", fix="use 'local' or 'global'")
        if self.round_to < 1:
            raise ConfigError(
                "round_to must be >= 1", fix="use 1 to disable rounding, 8 by default"
            )
        self.exclude = tuple(self.exclude)


@dataclass
class PruneReport:
    """Before/after sizes and what happened to each group."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: list[dict[str, Any]] = field(default_factory=list)  # modules, channels before/after
    frozen: dict[str, str] = field(default_factory=dict)  # module -> why its outputs were kept

    @property
    def mac_ratio(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def param_ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)


def _segments(g: DepGraph, layout: Layout) -> list[tuple[int, int, int]]:
    """(root, offset, length) for each segment of a layout."""
    out, off = [], 0
    for sid, n in layout:
        out.append((g.find(sid), off, n))
        off += n
    return out


def _channel_scores(
    w: torch.Tensor, grad: torch.Tensor | None, dim: int, per: int, kind: str
) -> torch.Tensor:
    """Per-channel score of ``w`` along ``dim`` where each channel spans ``per`` entries."""
    w = w.detach().movedim(dim, 0)
    w = w.reshape(w.shape[0] // per, -1)
    if kind == "taylor":
        gr = grad.detach().movedim(dim, 0).reshape(w.shape)
        return (w * gr).sum(1).abs()
    return w.abs().sum(1) if kind in ("l1", "bn_scale") else w.pow(2).sum(1).sqrt()


def _group_scores(g: DepGraph, root: int, size: int, kind: str) -> torch.Tensor:
    score = torch.zeros(size, dtype=torch.float64)
    bn_seen = False
    for use in g.uses:
        mod = g.model.get_submodule(use.module)
        for r, off, n in _segments(g, use.layout):
            if r != root:
                continue
            if kind == "bn_scale":
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
                    score += mod.weight.detach().abs()[off : off + n].double()
                    bn_seen = True
                continue
            w = getattr(mod, "weight", None)
            if w is None:
                continue
            if kind == "taylor" and w.grad is None:
                raise PruningError(
                    "taylor importance needs gradients but none are stored",
                    where=use.module,
                    fix="run loss.backward() on a batch before prune()",
                )
            grad = w.grad if kind == "taylor" else None
            out_dim, in_dim = _weight_dims(mod)
            if use.role in ("producer", "carrier"):
                sl = w.narrow(out_dim, off, n)
                gs = grad.narrow(out_dim, off, n) if grad is not None else None
                score += _channel_scores(sl, gs, out_dim, 1, kind).double()
            else:
                f = use.factor
                sl = w.narrow(in_dim, off * f, n * f)
                gs = grad.narrow(in_dim, off * f, n * f) if grad is not None else None
                score += _channel_scores(sl, gs, in_dim, f, kind).double()
    if kind == "bn_scale" and not bn_seen:
        return _group_scores(g, root, size, "l1")
    return score


def _weight_dims(mod: nn.Module) -> tuple[int, int]:
    """(output-channel dim, input-channel dim) of a module's weight: transposed convs swap them."""
    return (1, 0) if isinstance(mod, nn.modules.conv._ConvTransposeNd) else (0, 1)


def _round_keep(n_keep: float, size: int, round_to: int) -> int:
    k = int(math.ceil(n_keep / round_to) * round_to)
    return max(min(k, size), min(round_to, size))


def _index(
    g: DepGraph, layout: Layout, keep: dict[int, torch.Tensor], factor: int = 1
) -> torch.Tensor:
    parts = []
    for root, off, n in _segments(g, layout):
        parts.append(off + (keep[root] if root in keep else torch.arange(n)))
    idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    if factor > 1:
        idx = (idx[:, None] * factor + torch.arange(factor)).flatten()
    return idx


def _set(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(mod, name)
    if isinstance(old, nn.Parameter):
        setattr(
            mod, name, nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad)
        )
    else:
        setattr(mod, name, value.contiguous().clone())


def _apply(g: DepGraph, keep: dict[int, torch.Tensor]) -> None:
    by_module: dict[str, dict[str, Any]] = {}
    for use in g.uses:
        by_module.setdefault(use.module, {})[use.role] = use
    for name, roles in by_module.items():
        mod = g.model.get_submodule(name)
        if "carrier" in roles:
            idx = _index(g, roles["carrier"].layout, keep)
            if isinstance(
                mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
            ):
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, attr, None) is not None:
                        _set(mod, attr, getattr(mod, attr).detach()[idx])
                mod.num_features = len(idx)
            else:  # depthwise convolution
                _set(mod, "weight", mod.weight.detach()[idx])
                if mod.bias is not None:
                    _set(mod, "bias", mod.bias.detach()[idx])
                mod.in_channels = mod.out_channels = mod.groups = len(idx)
            continue
        w = mod.weight.detach()
        out_dim, in_dim = _weight_dims(mod)
        if "producer" in roles:
            out_idx = _index(g, roles["producer"].layout, keep)
            w = w.index_select(out_dim, out_idx)
            if mod.bias is not None:
                _set(mod, "bias", mod.bias.detach()[out_idx])
            if isinstance(mod, nn.Linear):
                mod.out_features = len(out_idx)
            else:
                mod.out_channels = len(out_idx)
        if "consumer" in roles:
            use = roles["consumer"]
            in_idx = _index(g, use.layout, keep, use.factor)
            w = w.index_select(in_dim, in_idx)
            if isinstance(mod, nn.Linear):
                mod.in_features = len(in_idx)
            else:
                mod.in_channels = len(in_idx)
        _set(mod, "weight", w)


def prune(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    config: PruneConfig | None = None,
) -> PruneReport:
    """Prune ``model`` in place; returns a :class:`PruneReport`. See the module docstring."""
    cfg = config or PruneConfig()
    examples = example if isinstance(example, tuple) else (example,)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref_out = model(*examples)
    names = {n for n, _ in model.named_modules() if n}
    unknown = [e for e in cfg.exclude if e not in names]
    if unknown:
        import difflib

        hints = [m for e in unknown for m in difflib.get_close_matches(e, names, n=2)]
        raise ConfigError(
            f"exclude names no module of the model: {', '.join(unknown)}",
            where=type(model).__name__,
            fix="use module names as in model.named_modules()"
            + (f", e.g. {', '.join(hints)}" if hints else ""),
        )
    params_before, macs_before = count_params(model), count_macs(model, examples)
    g = build_graph(model, examples, set(cfg.exclude))
    frozen = g.frozen_roots()
    roots = {r: g.sizes[r] for r in g.roots() if r not in frozen}
    # spaces nothing can slice (e.g. pure pass-through) are not worth scoring
    touched = {r for use in g.uses for r, _, _ in _segments(g, use.layout)}
    roots = {r: n for r, n in roots.items() if r in touched and n > cfg.round_to}
    scores = {r: _group_scores(g, r, n, cfg.importance) for r, n in roots.items()}
    keep_n: dict[int, int] = {}
    if cfg.scope == "global" and roots:
        normed = {r: s / s.mean().clamp_min(1e-12) for r, s in scores.items()}
        allv = torch.cat(list(normed.values()))
        thr = torch.quantile(allv.float(), cfg.ratio) if cfg.ratio > 0 else allv.min() - 1
        for r, s in normed.items():
            n = int((s > thr).sum())
            keep_n[r] = _round_keep(
                max(n, (1 - cfg.max_group_ratio) * roots[r]), roots[r], cfg.round_to
            )
    else:
        for r, n in roots.items():
            keep_n[r] = _round_keep(n * (1 - cfg.ratio), n, cfg.round_to)
    keep = {
        r: torch.sort(torch.topk(scores[r], keep_n[r]).indices).values
        for r in roots
        if keep_n[r] < roots[r]
    }
    _apply(g, keep)
    _verify(model, examples, ref_out)
    model.train(was_training)
    report = PruneReport(
        params_before, count_params(model), macs_before, count_macs(model, examples)
    )
    members: dict[int, set[str]] = {}
    for use in g.uses:
        for r, _, _ in _segments(g, use.layout):
            members.setdefault(r, set()).add(use.module)
    for r, n in roots.items():
        report.groups.append(
            {"modules": sorted(members.get(r, ())), "before": n, "after": keep_n[r]}
        )
    # every conv/linear/norm the trace saw and this prune left whole is reported with why:
    # its output channels are frozen, or too few to prune
    for m, layout in g.outputs.items():
        for r, _, n in _segments(g, layout):
            if r in frozen:
                report.frozen.setdefault(m, frozen[r])
            elif r not in roots and n <= cfg.round_to:
                report.frozen.setdefault(
                    m, f"{g.sizes[r]} channels: not more than round_to={cfg.round_to}"
                )
    return report


def _verify(model: nn.Module, examples: tuple[torch.Tensor, ...], ref_out: Any) -> None:
    last: list[str] = ["<model>"]
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: last.__setitem__(0, n))
        for n, m in model.named_modules()
        if n
    ]
    try:
        with torch.no_grad():
            out = model(*examples)
    except Exception as exc:
        raise PruningError(
            f"the pruned model fails to run ({type(exc).__name__}: {exc})",
            where=last[0],
            fix="exclude this layer from pruning (PruneConfig.exclude) and report the pattern",
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    if isinstance(ref_out, torch.Tensor) and (
        not isinstance(out, torch.Tensor) or out.shape != ref_out.shape
    ):
        raise PruningError(
            f"the pruned model's output shape changed from {tuple(ref_out.shape)}",
            where=type(model).__name__,
            fix="exclude the output head via PruneConfig.exclude",
        )


class BNSparsityTrainer(Trainer):
    """A Trainer that adds ``l1 * sum(|gamma|)`` over batch norms to the loss (sparsity training)."""

    def __init__(self, *args: Any, l1: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1 = l1
        self._bns = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        ]

    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        loss, outputs, targets = super().compute_loss(model, batch)
        if model.training and self._bns:
            loss = loss + self.l1 * sum(bn.weight.abs().sum() for bn in self._bns)
        return loss, outputs, targets
