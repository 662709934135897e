"""Channel dependency graph for structured pruning (the DepGraph idea, on ``torch.fx``).

The model is traced with ``torch.fx`` (convolutions, norms and linears are leaves) and shapes
are propagated with an example input. Every tensor then carries a channel *layout*: a list of
segments ``(space, length)`` along its channel dimension (dim 1 for conv feature maps, the
last dim after a linear). A *space* is a set of channels that must be pruned together:

* a conv/linear creates a new space for its outputs and *consumes* its input's layout;
* batch and instance norms and depthwise convolutions *carry* a layout (sliced alike);
* elementwise ops, pooling, activations, dropout, stochastic depth / drop path,
  interpolation, and softmax over a non-channel dim pass the layout through;
* ``add``/``mul``/``sub`` of two feature maps *join* their spaces (residual connections);
* ``cat`` along channels *concatenates* layouts, so consumers of a U-Net skip see offsets;
* ``chunk``/``split`` along channels hand each piece its part of the layout when the cuts
  fall between spaces; a cut through a space freezes it (pruning would move the cut);
* ``flatten`` of ``(N, C, H, W)`` multiplies each channel into ``H*W`` consecutive features;
* a module called at several places (a shared conv, linear or norm) couples the inputs of
  all its calls, so one slicing fits every call site.

Ops that *mix* channels are boundaries: softmax over channels, LayerNorm over channels (its
mean and variance change when a channel goes), reductions over channels, reshapes across
them, and any op or module this module does not know. Spaces are *frozen* (never pruned) at
such a boundary and when they touch the model's input or output, an excluded module or a
grouped (non-depthwise) convolution; the reason is kept per space so a report can say why,
and every tensor the trace sees gets a layout, so nothing is skipped unreported. Nothing
here changes the model: see :mod:`core.compress.prune`.
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
# normalise each channel on its own (statistics per channel): they carry a layout
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_LEAVES = (nn.modules.conv._ConvNd, nn.Linear, *_NORMS)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
)  # fmt: skip
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_SOFTMAX_FUNCS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split}
_SPLIT_METHODS = {"chunk", "split", "tensor_split"}
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


def _extra_pass() -> tuple[tuple[type, ...], set[Any]]:
    """Per-sample regularisers of torchvision and timm that never mix channels: stochastic
    depth / drop path scale whole samples (identity in eval)."""
    mods: list[type] = []
    funcs: set[Any] = set()
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth

        mods.append(StochasticDepth)
        funcs.add(stochastic_depth)
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        from timm.layers import DropPath

        mods.append(DropPath)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(mods), funcs


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...] = _LEAVES) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


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
    outputs: dict[str, Layout] = field(default_factory=dict)  # conv/linear/norm -> output layout

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


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call node, given by keyword or at position ``pos``."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[pos] if len(node.args) > pos else default


def build_graph(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    exclude: set[str] = frozenset(),
) -> DepGraph:  # type: ignore[assignment]
    """Trace ``model`` on ``example`` and return its channel dependency graph."""
    examples = example if isinstance(example, tuple) else (example,)
    extra_mods, extra_funcs = _extra_pass()
    pass_modules = (*_PASS_MODULES, *extra_mods)
    pass_funcs = _PASS_FUNCS | extra_funcs
    try:
        graph = _Tracer((*_LEAVES, *pass_modules, *_SOFTMAX_MODULES)).trace(model)
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
    pieces: dict[fx.Node, list[fx.Node | None]] = {}  # tuple-valued node -> per-item carrier
    # a module called at several places: its first call's (input layout, output layout,
    # input factor); later calls couple their inputs to the first call's
    calls: dict[str, tuple[Layout, Layout, int]] = {}
    opaque_mods: dict[str, str] = {}  # module name -> why one of its calls was opaque
    param_of: dict[fx.Node, str] = {}  # tensors computed from a parameter alone -> its name

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
                for item in pieces.get(x, ()):  # a tuple passed whole: its tensors count
                    if item is not None and lay.get(item) is not None:
                        out.append(item)
            elif isinstance(x, list | tuple):
                for v in x:
                    walk(v)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)

        walk(flat)
        return out

    def piece(node: fx.Node, i: int) -> fx.Node:
        """A stand-in node for item ``i`` of a tuple-valued node (not inserted in the graph)."""
        item = fx.Node(gm.graph, f"{node.name}_{i}", "call_function", operator.getitem, (), {})
        item.meta["tensor_meta"] = node.meta["tensor_meta"][i]
        return item

    def passthrough(node: fx.Node, src: fx.Node) -> None:
        lay[node], cdim[node], factor[node] = lay[src], cdim[src], factor.get(src, 1)

    def fresh_frozen(sh: torch.Size, why: str) -> tuple[Layout, int]:
        c = _chan_dim(sh, False)
        sid = g.new_space(sh[c])
        g.freeze([(sid, sh[c])], why)
        return [(sid, sh[c])], c

    def opaque(node: fx.Node, why: str) -> None:
        params = [param_of[a] for a in tensor_args(node) if a in param_of]
        if params:  # say which parameter, not which reshape of it
            why = f"parameter {params[0]} used functionally at {node.name}"
            param_of[node] = params[0]
        for a in tensor_args(node):
            g.freeze(lay[a], why)
        sh = shape(node)
        if sh is not None and len(sh) >= 2:
            lay[node], cdim[node] = fresh_frozen(sh, why)
        else:
            lay[node] = None
        if node.op == "call_module":
            name = str(node.target)
            opaque_mods.setdefault(name, why)
            if name in calls:  # an earlier call was sliced: its spaces must stay whole now
                first_in, first_out, _ = calls[name]
                g.freeze(first_in, why)
                g.freeze(first_out, why)
            if lay[node] is not None and isinstance(model.get_submodule(name), _LEAVES):
                g.outputs.setdefault(name, lay[node])

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

    def softmax(node: fx.Node, src: fx.Node, dim: Any) -> None:
        s_in = shape(src)
        if dim is None or s_in is None:
            opaque(node, f"softmax over an implicit dim at {node.name}")
        elif dim % len(s_in) == cdim[src]:
            opaque(node, f"softmax over channels at {node.name} (mixes channels)")
        else:
            passthrough(node, src)

    def split(node: fx.Node, src: fx.Node, dim: int) -> None:
        """``chunk``/``split`` into pieces: each getitem takes its part of the layout."""
        metas = node.meta.get("tensor_meta")
        s_in = shape(src)
        if not isinstance(metas, list | tuple) or s_in is None:
            opaque(node, f"split of unknown shape at {node.name}")
            return
        dim %= len(s_in)
        items: list[fx.Node | None] = []
        parts: list[tuple[Layout, int] | None] = []
        if dim != cdim[src]:  # along batch or space: every piece keeps the channel layout
            parts = [(lay[src], cdim[src])] * len(metas)
        elif factor.get(src, 1) == 1:
            sizes = [m.shape[dim] for m in metas]
            segs, cuts, off = lay[src], [], 0
            bounds = {0}
            for _, n in segs:
                off += n
                bounds.add(off)
            for n in sizes:
                cuts.append((sum(c[1] for c in cuts) if cuts else 0, n))
            if all(a in bounds and a + n in bounds for a, n in cuts):
                off, seg_at = 0, []
                for sid, n in segs:
                    seg_at.append((off, sid, n))
                    off += n
                parts = [
                    ([(sid, n) for o, sid, n in seg_at if a <= o < a + size], dim)
                    for a, size in cuts
                ]
            else:
                g.freeze(segs, f"split at {node.name} cuts a channel group")
                parts = [None] * len(metas)
        else:
            g.freeze(lay[src], f"split of flattened channels at {node.name}")
            parts = [None] * len(metas)
        for i, m in enumerate(metas):
            item = piece(node, i)
            if parts[i] is not None:
                lay[item], cdim[item], factor[item] = parts[i][0], parts[i][1], factor.get(src, 1)
            elif hasattr(m, "shape") and len(m.shape) >= 2:
                lay[item], cdim[item] = fresh_frozen(m.shape, f"split at {node.name}")
            else:
                lay[item] = None
            items.append(item)
        pieces[node] = items
        lay[node] = None

    def shared_call(node: fx.Node, name: str, in_lay: Layout, f: int, out_cdim: int) -> bool:
        """Couple a repeated call of ``name`` to its first call; True when handled."""
        if name not in calls:
            return False
        first_in, first_out, first_f = calls[name]
        if [n for _, n in first_in] == [n for _, n in in_lay] and first_f == f:
            for (a, _), (b, _) in zip(first_in, in_lay, strict=True):
                g.union(a, b)
            lay[node], cdim[node], factor[node] = first_out, out_cdim, 1
        else:
            opaque(node, f"module {name} is called on inputs with different channel layouts")
        return True

    for node in list(gm.graph.nodes):
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
            if sh is not None and len(sh) >= 1:
                param_of[node] = str(node.target)
                sid = g.new_space(sh[-1])
                lay[node], cdim[node] = [(sid, sh[-1])], len(sh) - 1
                g.freeze(lay[node], f"parameter {node.target} used functionally")
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
            elif name in opaque_mods:
                opaque(node, opaque_mods[name])
            elif isinstance(mod, nn.modules.conv._ConvNd):
                in_lay = lay[src]
                if cdim[src] != 1 or factor.get(src, 1) != 1:
                    opaque(node, f"convolution on a non-channel layout at {name}")
                    continue
                transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
                if mod.groups == 1 or (
                    not transposed and mod.groups == mod.in_channels == mod.out_channels
                ):
                    if shared_call(node, name, in_lay, 1, 1):
                        continue
                    if mod.groups > 1:  # depthwise
                        g.uses.append(Use(name, "carrier", in_lay))
                        out = in_lay
                    else:
                        g.uses.append(Use(name, "consumer", in_lay))
                        sid = g.new_space(mod.out_channels)
                        out = [(sid, mod.out_channels)]
                        g.uses.append(Use(name, "producer", out))
                    calls[name] = (in_lay, out, 1)
                    lay[node], cdim[node] = out, 1
                    if name in exclude:
                        g.freeze(out, f"excluded: {name}")
                else:
                    opaque(node, f"grouped convolution {name} (groups={mod.groups})")
            elif isinstance(mod, nn.Linear):
                in_lay = lay[src]
                ssh = shape(src)
                if ssh is None or cdim[src] != len(ssh) - 1:
                    opaque(node, f"linear on a non-channel layout at {name}")
                    continue
                if shared_call(node, name, in_lay, factor.get(src, 1), len(sh) - 1):
                    continue
                g.uses.append(Use(name, "consumer", in_lay, factor.get(src, 1)))
                sid = g.new_space(mod.out_features)
                out = [(sid, mod.out_features)]
                g.uses.append(Use(name, "producer", out))
                calls[name] = (in_lay, out, factor.get(src, 1))
                lay[node], cdim[node] = out, len(sh) - 1
                if name in exclude:
                    g.freeze(out, f"excluded: {name}")
            elif isinstance(mod, _PER_CHANNEL_NORMS):
                if cdim[src] != 1 or factor.get(src, 1) != 1:
                    opaque(node, f"batch/instance norm on a non-channel layout at {name}")
                    continue
                if shared_call(node, name, lay[src], 1, 1):
                    continue
                g.uses.append(Use(name, "carrier", lay[src]))
                calls[name] = (lay[src], lay[src], 1)
                passthrough(node, src)
            elif isinstance(mod, nn.LayerNorm):
                ssh = shape(src)
                normed = range(len(ssh) - len(mod.normalized_shape), len(ssh)) if ssh else ()
                if ssh is not None and cdim[src] not in normed:
                    passthrough(node, src)  # normalises within each channel
                else:
                    opaque(node, f"layer norm over channels at {name} (mixes channels)")
            elif isinstance(mod, nn.Flatten):
                _flatten(node, src, mod.start_dim, mod.end_dim)
            elif isinstance(mod, _SOFTMAX_MODULES):
                softmax(node, src, mod.dim)
            elif isinstance(mod, pass_modules):
                passthrough(node, src)
            else:
                opaque(node, f"unsupported module {name} ({type(mod).__name__})")
            if isinstance(mod, _LEAVES) and lay.get(node) is not None:
                g.outputs.setdefault(name, lay[node])
        elif node.op in ("call_function", "call_method"):
            target = node.target
            if (
                target is operator.getitem
                and isinstance(node.args[0], fx.Node)
                and node.args[0] in pieces
            ):
                idx = node.args[1]
                items = pieces[node.args[0]]
                item = (
                    items[idx] if isinstance(idx, int) and -len(items) <= idx < len(items) else None
                )
                if item is not None and lay.get(item) is not None:
                    passthrough(node, item)
                else:
                    opaque(node, f"item {idx!r} of {node.args[0].name}")
                continue
            srcs = tensor_args(node)
            if not srcs:
                lay[node] = None
            elif target in _JOIN or (node.op == "call_method" and target in _JOIN_METHODS):
                join(node, srcs)
            elif target in pass_funcs or (node.op == "call_method" and target in _PASS_METHODS):
                passthrough(node, srcs[0])
            elif target in _SOFTMAX_FUNCS or (
                node.op == "call_method" and target in _SOFTMAX_METHODS
            ):
                softmax(node, srcs[0], _arg(node, 1, "dim", None))
            elif target in _SPLIT_FUNCS or (node.op == "call_method" and target in _SPLIT_METHODS):
                split(node, srcs[0], _arg(node, 2, "dim", 0))
            elif target is torch.cat or target is torch.concat:
                dim = _arg(node, 1, "dim", 0)
                first = srcs[0]
                if dim < 0:
                    dim += len(shape(first))
                if dim == cdim[first] and all(factor.get(s, 1) == 1 for s in srcs):
                    lay[node], cdim[node] = [seg for s in srcs for seg in lay[s]], cdim[first]
                else:
                    join(node, srcs)
            elif target is torch.flatten or (node.op == "call_method" and target == "flatten"):
                _flatten(node, srcs[0], _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
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
                dims = _arg(node, 1, "dim", None)
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
                    if not _arg(node, 2, "keepdim", False):
                        cdim[node] = cdim[src] - sum(1 for d in dims if d < cdim[src])
            elif target in (getattr, "size", "dim") or (
                node.op == "call_method" and target in ("size", "dim")
            ):
                lay[node] = None
            else:
                opaque(node, f"unsupported op {getattr(target, '__name__', target)} at {node.name}")
        else:
            lay[node] = None
        # every tensor-valued result gets a layout: an unknown one is frozen, never skipped
        metas = node.meta.get("tensor_meta")
        if node.op != "output" and lay.get(node) is None and node not in pieces:
            if sh is not None and len(sh) >= 2:
                lay[node], cdim[node] = fresh_frozen(sh, f"untracked tensor at {node.name}")
            elif isinstance(metas, list | tuple) and metas:
                srcs = tensor_args(node)
                for a in srcs:
                    g.freeze(lay[a], f"op returning several tensors at {node.name}")
                items = []
                for i, m in enumerate(metas):
                    item = piece(node, i)
                    if hasattr(m, "shape") and len(m.shape) >= 2:
                        lay[item], cdim[item] = fresh_frozen(
                            m.shape, f"op returning several tensors at {node.name}"
                        )
                    else:
                        lay[item] = None
                    items.append(item)
                pieces[node] = items

    return g
