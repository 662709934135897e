"""Channel dependency graph for structured pruning (the DepGraph idea, on ``torch.fx``).

The model is traced with ``torch.fx`` (convolutions, norms and linears are leaves) and shapes
are propagated with an example input. Every tensor then carries a channel *layout*: a list of
segments ``(space, length)`` along its channel dimension (dim 1 for conv feature maps, the
last dim after a linear). A *space* is a set of channels that must be pruned together:

* a conv/linear creates a new space for its outputs and *consumes* its input's layout;
* BN, LayerNorm (over channels), depthwise convolutions *carry* a layout (sliced alike);
* elementwise ops, pooling, activations, dropout, interpolation pass the layout through;
* ``add``/``mul``/``sub`` of two feature maps *join* their spaces (residual connections);
* ``cat`` along channels *concatenates* layouts, so consumers of a U-Net skip see offsets;
* ``flatten`` of ``(N, C, H, W)`` multiplies each channel into ``H*W`` consecutive features.

Spaces are *frozen* (never pruned) when they touch the model's input or output, an excluded
module, a grouped (non-depthwise) convolution, or any op this module does not understand;
the reason is kept per space so a report can say why. Nothing here changes the model: see
:mod:`core.compress.prune`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from core.errors import DVError


class PruningError(DVError):
    """The model cannot be pruned safely (tracing failed, or a pruned model would break)."""


Layout = list[tuple[int, int]]  # [(space id, length)]

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_LEAVES = (nn.modules.conv._ConvNd, nn.Linear, *_NORMS)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
    nn.Softmax,
)  # fmt: skip
_PASS_FUNCS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.leaky_relu, F.elu,
    F.dropout, F.interpolate, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.max_pool2d, F.max_pool3d, F.avg_pool2d, F.avg_pool3d, torch.relu, torch.sigmoid, torch.tanh,
    F.hardtanh, torch.clamp,
}  # fmt: skip
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "clamp", "float", "to", "relu_",
                 "sigmoid_", "clamp_", "detach"}  # fmt: skip
_JOIN = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
         torch.mul, torch.div, operator.iadd, operator.imul}  # fmt: skip
_JOIN_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "max"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@dataclass
class Use:
    """How a module touches channel layouts."""

    module: str
    role: str  # "producer" (out dim), "carrier" (per-channel params), "consumer" (in dim)
    layout: Layout
    factor: int = 1  # consumer: features per channel (after flatten)


@dataclass
class DepGraph:
    """Spaces, their sizes, their users, and which are frozen and why."""

    model: nn.Module
    sizes: dict[int, int] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    uses: list[Use] = field(default_factory=list)

    # ---- union-find over spaces
    def new_space(self, size: int) -> int:
        sid = len(self.sizes)
        self.sizes[sid] = size
        self.parent[sid] = sid
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def freeze(self, layout: Layout | None, reason: str) -> None:
        for sid, _ in layout or []:
            self.frozen.setdefault(sid, reason)

    def roots(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for s in self.sizes:
            groups.setdefault(self.find(s), []).append(s)
        return groups

    def frozen_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for s, why in self.frozen.items():
            out.setdefault(self.find(s), why)
        return out


def _chan_dim(shape: torch.Size, linear_like: bool) -> int:
    return len(shape) - 1 if linear_like or len(shape) <= 2 else 1


def build_graph(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    exclude: set[str] = frozenset(),
) -> DepGraph:  # type: ignore[assignment]
    """Trace ``model`` on ``example`` and return its channel dependency graph."""
    examples = example if isinstance(example, tuple) else (example,)
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*examples)
        model.train(was_training)
    except Exception as exc:  # fx raises many kinds: data-dependent control flow, proxies...
        raise PruningError(
            f"the model cannot be traced for pruning ({type(exc).__name__}: {exc})",
            where=type(model).__name__,
            fix="make forward() free of data-dependent Python control flow, or "
            "exclude the untraceable submodule",
        ) from exc
    g = DepGraph(model)
    lay: dict[fx.Node, Layout | None] = {}
    cdim: dict[fx.Node, int] = {}
    factor: dict[fx.Node, int] = {}
    memo: dict[str, Layout] = {}  # module called twice shares its output space

    def shape(n: Any) -> torch.Size | None:
        meta = getattr(n, "meta", {}).get("tensor_meta") if isinstance(n, fx.Node) else None
        return meta.shape if meta is not None and hasattr(meta, "shape") else None

    def tensor_args(node: fx.Node) -> list[fx.Node]:
        flat = fx.node.map_arg((node.args, node.kwargs), lambda a: a)
        out: list[fx.Node] = []

        def walk(x: Any) -> None:
            if isinstance(x, fx.Node):
                if lay.get(x) is not None:
                    out.append(x)
            elif isinstance(x, list | tuple):
                for v in x:
                    walk(v)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)

        walk(flat)
        return out

    def passthrough(node: fx.Node, src: fx.Node) -> None:
        lay[node], cdim[node], factor[node] = lay[src], cdim[src], factor.get(src, 1)

    def opaque(node: fx.Node, why: str) -> None:
        for a in tensor_args(node):
            g.freeze(lay[a], why)
        sh = shape(node)
        if sh is not None and len(sh) >= 2:
            sid = g.new_space(sh[_chan_dim(sh, False)])
            g.freeze([(sid, sh[_chan_dim(sh, False)])], why)
            lay[node], cdim[node] = [(sid, sh[_chan_dim(sh, False)])], _chan_dim(sh, False)
        else:
            lay[node] = None

    def join(node: fx.Node, srcs: list[fx.Node]) -> None:
        base = srcs[0]
        for other in srcs[1:]:
            la, lb = lay[base], lay[other]
            sa, sb = shape(base), shape(other)
            # broadcasting a (N, 1, ...) or scalar-like tensor does not couple channels
            if sb is not None and len(sb) > cdim[other] and sb[cdim[other]] == 1:
                continue
            if sa is not None and len(sa) > cdim[base] and sa[cdim[base]] == 1:
                base = other
                continue
            if [n for _, n in la] == [n for _, n in lb] and factor.get(base, 1) == factor.get(
                other, 1
            ):
                for (a, _), (b, _) in zip(la, lb, strict=True):
                    g.union(a, b)
            else:
                g.freeze(la, f"mismatched channel layouts joined at {node.name}")
                g.freeze(lb, f"mismatched channel layouts joined at {node.name}")
        passthrough(node, base)

    def _flatten(node: fx.Node, src: fx.Node, start: int, end: int) -> None:
        s_in = shape(src)
        if s_in is None:
            opaque(node, f"flatten of unknown shape at {node.name}")
            return
        rank, c = len(s_in), cdim[src]
        start, end = start % rank, end % rank
        if start == c and end == rank - 1:
            per = 1
            for d in s_in[c + 1 :]:
                per *= d
            lay[node], cdim[node], factor[node] = lay[src], c, factor.get(src, 1) * per
        elif start > c:
            passthrough(node, src)
        else:
            opaque(node, f"flatten across the channel dim at {node.name}")

    for node in gm.graph.nodes:
        sh = shape(node)
        if node.op == "placeholder":
            if sh is not None and len(sh) >= 2:
                sid = g.new_space(sh[1])
                g.freeze([(sid, sh[1])], "model input")
                lay[node], cdim[node] = [(sid, sh[1])], 1
            else:
                lay[node] = None
        elif node.op == "get_attr":
            lay[node] = None
            if sh is not None:
                opaque(node, f"parameter used functionally at {node.name}")
        elif node.op == "output":
            for a in tensor_args(node):
                g.freeze(lay[a], "model output")
        elif node.op == "call_module":
            name = str(node.target)
            mod = model.get_submodule(name)
            srcs = tensor_args(node)
            src = srcs[0] if srcs else None
            if src is None:
                lay[node] = None
                continue
            in_lay = lay[src]
            if isinstance(mod, nn.modules.conv._ConvNd):
                if cdim[src] != 1 or factor.get(src, 1) != 1:
                    opaque(node, f"convolution on a non-channel layout at {name}")
                    continue
                transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
                if mod.groups == 1 or (
                    not transposed and mod.groups == mod.in_channels == mod.out_channels
                ):
                    depthwise = mod.groups > 1
                    if name in memo:
                        for (a, _), (b, _) in zip(memo[name + ":in"], in_lay, strict=False):
                            g.union(a, b)
                        lay[node], cdim[node] = memo[name], 1
                        continue
                    if depthwise:
                        g.uses.append(Use(name, "carrier", in_lay))
                        out = in_lay
                    else:
                        g.uses.append(Use(name, "consumer", in_lay))
                        sid = g.new_space(mod.out_channels)
                        out = [(sid, mod.out_channels)]
                        g.uses.append(Use(name, "producer", out))
                    memo[name], memo[name + ":in"] = out, in_lay
                    lay[node], cdim[node] = out, 1
                    if name in exclude:
                        g.freeze(out, f"excluded: {name}")
                else:
                    g.freeze(in_lay, f"grouped convolution {name} (groups={mod.groups})")
                    sid = g.new_space(mod.out_channels)
                    lay[node], cdim[node] = [(sid, mod.out_channels)], 1
                    g.freeze(lay[node], f"grouped convolution {name} (groups={mod.groups})")
            elif isinstance(mod, nn.Linear):
                ssh = shape(src)
                if ssh is None or cdim[src] != len(ssh) - 1:
                    opaque(node, f"linear on a non-channel layout at {name}")
                    continue
                g.uses.append(Use(name, "consumer", in_lay, factor.get(src, 1)))
                sid = g.new_space(mod.out_features)
                out = [(sid, mod.out_features)]
                g.uses.append(Use(name, "producer", out))
                lay[node], cdim[node] = out, len(sh) - 1
                if name in exclude:
                    g.freeze(out, f"excluded: {name}")
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if cdim[src] != 1 or factor.get(src, 1) != 1:
                    opaque(node, f"batch norm on a non-channel layout at {name}")
                    continue
                g.uses.append(Use(name, "carrier", in_lay))
                passthrough(node, src)
            elif isinstance(mod, nn.LayerNorm):
                if len(mod.normalized_shape) == 1 and cdim[src] == len(shape(src)) - 1:
                    g.uses.append(Use(name, "carrier", in_lay))
                    passthrough(node, src)
                else:
                    opaque(node, f"layer norm over several dims at {name}")
            elif isinstance(mod, nn.Flatten):
                _flatten(node, src, mod.start_dim, mod.end_dim)
            elif isinstance(mod, _PASS_MODULES):
                passthrough(node, src)
            else:
                opaque(node, f"unsupported module {name} ({type(mod).__name__})")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            srcs = tensor_args(node)
            if not srcs:
                lay[node] = None
                continue
            if target in _JOIN or (node.op == "call_method" and target in _JOIN_METHODS):
                join(node, srcs)
            elif target in _PASS_FUNCS or (node.op == "call_method" and target in _PASS_METHODS):
                passthrough(node, srcs[0])
            elif target is torch.cat or target is torch.concat:
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                first = srcs[0]
                if dim < 0:
                    dim += len(shape(first))
                if dim == cdim[first] and all(factor.get(s, 1) == 1 for s in srcs):
                    lay[node], cdim[node] = [seg for s in srcs for seg in lay[s]], cdim[first]
                else:
                    join(node, srcs)
            elif target is torch.flatten or (node.op == "call_method" and target == "flatten"):
                start = node.kwargs.get(
                    "start_dim",
                    node.args[1] if len(node.args) > 1 else 0,
                )
                end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
                _flatten(node, srcs[0], start, end)
            elif node.op == "call_method" and target in ("view", "reshape"):
                s_in, s_out = shape(srcs[0]), sh
                if (
                    s_in is not None
                    and s_out is not None
                    and len(s_out) == 2
                    and len(s_in) >= 2
                    and s_out[0] == s_in[0]
                    and cdim[srcs[0]] == 1
                ):
                    _flatten(node, srcs[0], 1, -1)
                elif s_in is not None and s_out is not None and tuple(s_in) == tuple(s_out):
                    passthrough(node, srcs[0])
                else:
                    opaque(node, f"reshape at {node.name}")
            elif (node.op == "call_method" and target in _REDUCE_METHODS) or target in (
                torch.mean,
                torch.sum,
            ):
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                src = srcs[0]
                dims = (dims,) if isinstance(dims, int) else dims
                s_in = shape(src)
                if dims is None or s_in is None:
                    opaque(node, f"full reduction at {node.name}")
                    continue
                dims = {d % len(s_in) for d in dims}
                if cdim[src] in dims:
                    opaque(node, f"reduction over channels at {node.name}")
                else:
                    passthrough(node, src)
                    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
                    if not keep:
                        cdim[node] = cdim[src] - sum(1 for d in dims if d < cdim[src])
            elif target in (getattr, "size", "dim") or (
                node.op == "call_method" and target in ("size", "dim")
            ):
                lay[node] = None
            else:
                opaque(node, f"unsupported op {getattr(target, '__name__', target)} at {node.name}")
        else:
            lay[node] = None

    return g
