"""Export to ONNX (dynamic batch axis) and ``torch.export``, each with a parity check.

:func:`export_onnx` writes ``model.onnx`` through ``torch.onnx.export`` (the dynamo-based
exporter), opens it in ONNX Runtime and compares its outputs with PyTorch's on the example
*and* on a batch of a different size (the dynamic axis must really be dynamic). Above the
tolerance it raises :class:`ParityError` and leaves no file behind. :func:`export_program`
does the same for ``torch.export`` (``.pt2``). Not here: quantization (see
:mod:`core.compress.quantize`), which starts from the exported ONNX file.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.compress.report import ort_session
from core.errors import DVError


class ParityError(DVError):
    """An exported model's outputs differ from PyTorch's by more than the tolerance."""


class ExportError(DVError):
    """The model cannot be exported (unsupported op, wrong example shape)."""


@dataclass
class Parity:
    """Largest absolute and relative output differences against PyTorch."""

    max_abs: float
    max_rel: float
    batch_sizes: tuple[int, ...]

    def ok(self, atol: float, rtol: float) -> bool:
        return self.max_abs <= atol or self.max_rel <= rtol


def _compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    scale = np.abs(ref).max() + 1e-12
    return float(diff.max()), float(diff.max() / scale)


Example = torch.Tensor | tuple[torch.Tensor, ...]


def _as_tuple(example: Example) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def _other_batch(example: Example) -> tuple[torch.Tensor, ...]:
    """The example repeated to 3x its batch (floats slightly perturbed): checks the dynamic axis."""
    out = []
    for x in _as_tuple(example):
        big = x.repeat(3, *([1] * (x.dim() - 1)))
        out.append(big + 0.01 * torch.randn_like(big) if big.is_floating_point() else big)
    return tuple(out)


def _run_torch(model: nn.Module, xs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    out = model(*xs)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.float().numpy() for o in outs]


def export_onnx(
    model: nn.Module,
    example: Example,
    path: str | os.PathLike[str],
    *,
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] = ("output",),
    dynamic_seq: bool = False,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Parity:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch axis (and sequence axis).

    Inputs are named ``input`` (one input) or ``input_names``; outputs ``output_names``
    (a model returning a tuple names each; parity covers every output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    xs = _as_tuple(example)
    names = list(
        input_names or (["input"] if len(xs) == 1 else [f"input{i}" for i in range(len(xs))])
    )
    tmp = path.with_name(f".tmp-{path.name}")
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=65536)
    dims = tuple({0: batch, 1: seq} if dynamic_seq and x.dim() > 1 else {0: batch} for x in xs)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                xs,
                str(tmp),
                dynamo=True,
                external_data=False,
                input_names=names,
                output_names=list(output_names),
                opset_version=opset,
                dynamic_shapes=dims,
            )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            where=type(model).__name__,
            fix="check the example input's shape and dtype; replace unsupported ops",
        ) from exc
    try:
        parity = onnx_parity(model, tmp, xs)
        if not parity.ok(atol, rtol):
            raise ParityError(
                f"ONNX output differs from PyTorch (max abs {parity.max_abs:.3g}, "
                f"max rel {parity.max_rel:.3g}; tolerance {atol:g} abs or {rtol:g} rel)",
                where=str(path),
                fix="look for ops exported with different semantics",
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return parity


def compact_names(path: str | os.PathLike[str]) -> dict[str, int]:
    """Rename every node and every tensor except the graph's inputs and outputs of the ONNX
    model at ``path`` to short ids (``n12``, ``t34``), and drop the nodes' debugging metadata,
    in place; returns the file size before and after. The exporter names tensors by module
    path and the quantizer appends to them
    (``skip_layers.next_layer.downsample.conv1.conv.weight_DequantizeLinear_Output``), and it
    records for every node its module path, FX node and Python stack trace (with the
    exporting machine's file paths): on a small network the two are a third of an INT8 file,
    and the stack traces leak where and by what code it was built. Computation is
    unchanged."""
    import onnx

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path))
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in g.initializer:
        init.name = new(init.name)
    for k, node in enumerate(g.node):
        node.name = f"n{k}"
        del node.metadata_props[:]
        node.doc_string = ""
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for vi in g.value_info:
        vi.name = new(vi.name)
    for v in g.input:  # initializers listed as inputs (older opsets)
        if v.name in names:
            v.name = names[v.name]
    save_checked(model, path)
    return {"bytes_before": before, "bytes_after": path.stat().st_size}


def save_checked(model: Any, path: Path) -> None:
    """Check an edited ONNX model and write it over ``path`` atomically (a reader never sees
    half a file; a model that fails the checker is not written)."""
    import onnx

    onnx.checker.check_model(model)
    tmp = path.with_name(f".tmp-{path.name}")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


@torch.no_grad()
def onnx_parity(model: nn.Module, onnx_path: str | os.PathLike[str], example: Example) -> Parity:
    """Compare ONNX Runtime with PyTorch on ``example`` and on a batch of another size."""
    sess = ort_session(onnx_path)
    names = [i.name for i in sess.get_inputs()]
    worst_abs = worst_rel = 0.0
    sizes = []
    for xs in (_as_tuple(example), _other_batch(example)):
        refs = _run_torch(model, xs)
        gots = sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
        for ref, got in zip(refs, gots, strict=True):
            a, r = _compare(ref, got)
            worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
        sizes.append(xs[0].shape[0])
    return Parity(worst_abs, worst_rel, tuple(sizes))


def export_program(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> Parity:
    """``torch.export`` with a dynamic batch dim, saved as ``.pt2``, with a parity check."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ExportError(
            f"torch.export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            where=type(model).__name__,
            fix="remove data-dependent control flow",
        ) from exc
    worst_abs = worst_rel = 0.0
    sizes = []
    with torch.no_grad():
        for x in (example, _other_batch(example)[0]):
            a, r = _compare(model(x).numpy(), program.module()(x).numpy())
            worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
            sizes.append(x.shape[0])
    parity = Parity(worst_abs, worst_rel, tuple(sizes))
    if not parity.ok(atol, rtol):
        raise ParityError(
            f"exported program differs from the model (max abs {parity.max_abs:.3g})",
            where=str(path),
            fix="check for ops with training/eval differences",
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)
    return parity


def _skl2onnx() -> Any:
    """skl2onnx, with its tree converters made to write 0/1 instead of Python booleans into
    ``nodes_missing_value_tracks_true`` (onnx >= 1.18 refuses booleans in an int list; the
    converter of skl2onnx 1.20 still passes them for histogram gradient boosting)."""
    from core.errors import require

    skl2onnx = require("skl2onnx", feature="scikit-learn to ONNX export")
    import skl2onnx.common.tree_ensemble as te

    if not getattr(te.add_node, "_dv_int_missing", False):
        original = te.add_node

        def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kw: Any) -> Any:
            return original(
                *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kw
            )

        add_node._dv_int_missing = True  # type: ignore[attr-defined]
        te.add_node = add_node
    return skl2onnx


def export_sklearn(
    estimator: Any,
    sample: np.ndarray,
    path: str | os.PathLike[str],
    reference: np.ndarray,
    *,
    output: int = 1,
    column: int | None = None,
    atol: float = 1e-5,
) -> Parity:
    """Export a fitted scikit-learn estimator to ONNX at ``path`` (float32 input ``input``,
    dynamic batch) and check it: ONNX Runtime's output ``output`` (column ``column``) on
    ``sample`` must equal ``reference`` (what scikit-learn gives on ``sample``) within
    ``atol``. Above it raises :class:`ParityError` and leaves no file behind. Classifiers are
    exported without the ZipMap, so probabilities come out as a plain ``(n, classes)`` array.
    """
    skl2onnx = _skl2onnx()
    from skl2onnx.common.data_types import FloatTensorType

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(sample, np.float32)
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    try:
        onx = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options=options,
        )
    except Exception as exc:
        raise ExportError(
            f"scikit-learn to ONNX failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            where=type(estimator).__name__,
            fix="check that skl2onnx supports this estimator and its options",
        ) from exc
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_bytes(onx.SerializeToString())
        got = ort_session(tmp).run(None, {"input": x})[output]
        got = np.asarray(got).reshape(len(x), -1)
        got = got[:, column] if column is not None else got.ravel()
        a, r = _compare(np.asarray(reference, np.float64).ravel(), got)
        parity = Parity(a, r, (len(x),))
        if a > atol:
            raise ParityError(
                f"ONNX output differs from scikit-learn (max abs {a:.3g}; tolerance {atol:g})",
                where=str(path),
                fix="feed the estimator float32 features when training (ONNX trees compare in float32)",
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return parity
