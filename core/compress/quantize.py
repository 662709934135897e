"""INT8 quantization as one verb plus a config: ``quantize(model, Int8StaticConfig(...), ...)``.

* :class:`Int8StaticConfig` — static post-training INT8 as an ONNX **QDQ** model run by ONNX
  Runtime (uint8 activations, int8 weights). Calibration ``minmax``, ``percentile``
  (ONNX Runtime's calibrators), ``entropy`` (ONNX Runtime's KL-divergence calibrator on a
  2048-bin histogram; its default of 128 bins left only the full range, i.e. minmax) or
  ``mse`` (ours: for every activation, a search
  over clipping ranges that minimises the quantization mean-squared error on the calibration
  activations). Weights per channel or per tensor. ``reduce_range="auto"`` uses 7-bit weights
  when the CPU lacks VNNI (AVX2's ``vpmaddubsw`` saturates on full 8-bit products).
* :class:`Int8DynamicConfig` — dynamic INT8 for MatMul/Gemm/LSTM-heavy models (transformers):
  weights quantized ahead of time, activations per batch at run time.
* :class:`Int8PT2EConfig` — the PyTorch-native path for users who stay in PyTorch:
  ``torch.export`` + pt2e with the x86 quantizer (torchao), calibrated, converted. Real INT8
  kernels come from ``torch.compile`` (inductor) on x86; in eager it runs the reference ops.
* :func:`prepare_qat` / :func:`convert_qat` — quantization-aware training: fake-quant the
  exported model, fine-tune it with ``core.train.Trainer``, then convert.

A PyTorch model is exported first (:func:`core.compress.export.export_onnx`, with its parity
check); an ONNX path is used as is. The result is a :class:`QuantizedModel` holding the path
of the written ``.onnx`` and the choices made. Dispatch is by config type
(``functools.singledispatch``), so a new scheme is a new config class plus one function.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def store_weights_int8(
    path: str | os.PathLike[str], op_types: tuple[str, ...] = ("ConvTranspose",)
) -> list[str]:
    """Weight-only INT8 storage for the float nodes of ``op_types`` in the ONNX model at
    ``path``, in place: each such node's float weight initializer becomes INT8 with one
    symmetric scale per output channel, read through a ``DequantizeLinear`` node, so the op
    still runs in float (for ops ONNX Runtime has no INT8 kernel for, such as
    ``ConvTranspose``) while its weights take a quarter of the space. Returns the nodes
    changed. The weights become their INT8 round trip: the same error a quantized op's
    weights have."""
    import onnx
    from onnx import helper, numpy_helper

    from core.compress.export import save_checked

    path = Path(path)
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed, new_nodes = [], []
    for node in g.node:
        w_name = node.input[1] if node.op_type in op_types and len(node.input) > 1 else ""
        init = inits.get(w_name)
        if (
            init is None
            or init.data_type != onnx.TensorProto.FLOAT
            or uses[w_name] != 1  # shared: another node reads it as float
        ):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(init)
        axis = 1 if node.op_type == "ConvTranspose" else 0  # the output-channel axis
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        g.initializer.remove(init)
        g.initializer.extend([
            numpy_helper.from_array(q, f"{w_name}_q"),
            numpy_helper.from_array(scale, f"{w_name}_s"),
            numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{w_name}_z"),
        ])  # fmt: skip
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{w_name}_q", f"{w_name}_s", f"{w_name}_z"], [w_name],
            name=f"{node.name}_wdq", axis=axis,
        ))  # fmt: skip
        new_nodes.append(node)
        changed.append(node.name)
    if changed:
        del g.node[:]
        g.node.extend(new_nodes)
        save_checked(model, path)
    return changed


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True when the CPU has an 8-bit dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX).

    ``cpuinfo`` defaults to the text of ``/proc/cpuinfo``.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {
        f
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for f in line.split(":", 1)[1].split()
    }
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass
class Int8StaticConfig:
    """Static post-training INT8 (ONNX QDQ, run by ONNX Runtime)."""

    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"  # activation ranges
    per_channel: bool = True  # one weight scale per output channel (else per tensor)
    reduce_range: bool | Literal["auto"] = "auto"  # 7-bit weights; auto: when the CPU lacks VNNI
    percentile: float = 99.999  # percentile calibration: kept fraction of |activations|, in %
    exclude_nodes: tuple[str, ...] = ()  # ONNX node names left in float (mixed precision)
    include_nodes: tuple[str, ...] = ()  # when set, only these nodes are quantized (sensitivity)
    op_types: tuple[str, ...] = ()  # when set, only these op types are quantized (e.g. ("Conv",))
    max_calibration_batches: int = 32  # at most this many batches are read

    def __post_init__(self) -> None:
        if self.calibration not in ("minmax", "percentile", "entropy", "mse"):
            raise ConfigError(
                f"unknown calibration {self.calibration!r}",
                fix="use minmax, percentile, entropy or mse",
            )
        if not 90.0 < self.percentile <= 100.0:
            raise ConfigError("percentile must lie in (90, 100]", fix="use e.g. 99.999")
        self.exclude_nodes = tuple(self.exclude_nodes)
        self.include_nodes = tuple(self.include_nodes)
        self.op_types = tuple(self.op_types)

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range == "auto" else bool(self.reduce_range)


@dataclass
class Int8DynamicConfig:
    """Dynamic INT8 (weights ahead of time, activations per batch) for MatMul/Gemm/LSTM."""

    per_channel: bool = (
        True  # per-column weight scales (MiniLM: cosine 0.948 per tensor, 0.991 per column)
    )
    reduce_range: bool | Literal["auto"] = "auto"
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "LSTM", "Attention")  # ops to quantize
    exclude_nodes: tuple[str, ...] = ()

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range == "auto" else bool(self.reduce_range)


@dataclass
class Int8PT2EConfig:
    """PyTorch-native static INT8: torch.export + pt2e, X86InductorQuantizer (torchao)."""

    max_calibration_batches: int = 32  # at most this many calibration batches are run


@dataclass
class QuantizedModel:
    """A quantized model (an ONNX file, or a PyTorch module for pt2e/QAT) and how it was made."""

    path: Path | None
    config: dict[str, Any]
    reduce_range: bool
    excluded_nodes: list[str] = field(default_factory=list)
    module: nn.Module | None = None

    def session(self, threads: int | None = None) -> Any:
        from core.compress.report import ort_session

        return ort_session(self.path, threads)


def quantize(
    model: nn.Module | str | os.PathLike[str],
    config: Any,
    *,
    out: str | os.PathLike[str] | None = None,
    calibration: Iterable[np.ndarray | torch.Tensor] | None = None,
    example: torch.Tensor | None = None,
) -> QuantizedModel:
    """Quantize ``model`` (a PyTorch module or an ONNX path) by ``config``.

    ONNX schemes write ``out`` (required); pt2e returns the quantized module in ``.module``.
    """
    return _quantize(config, model, Path(out) if out is not None else None, calibration, example)


@functools.singledispatch
def _quantize(config: Any, model: Any, out: Path, calibration: Any, example: Any) -> QuantizedModel:
    raise ConfigError(
        f"no quantization scheme for config type {type(config).__name__}",
        fix="pass Int8StaticConfig or Int8DynamicConfig",
    )


def _as_onnx(
    model: nn.Module | str | os.PathLike[str], example: torch.Tensor | None, workdir: Path
) -> Path:
    if isinstance(model, nn.Module):
        if example is None:
            raise ConfigError(
                "quantizing a PyTorch model needs an example input for export",
                fix="pass example=<a batch of inputs>",
            )
        from core.compress.export import export_onnx

        path = workdir / "fp32.onnx"
        export_onnx(model, example, path)
        return path
    path = Path(model)
    if not path.is_file():
        raise DataError("ONNX model not found", where=str(path), fix="export the model first")
    return path


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference + graph optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as exc:  # pre-processing is an optimisation, never a requirement
        log.warning("quantization pre-processing skipped (%s)", exc)
        return src


@contextlib.contextmanager
def _onnx_job(model: Any, example: Any, out: Path | None) -> Iterator[tuple[Path, Path]]:
    """The ONNX quantizers' shared frame: export (if a module), pre-process, write into a temp
    file, then move it onto ``out`` only when the quantizer succeeded. Yields (input, temp out)."""
    if out is None:
        raise ConfigError("ONNX quantization writes a file", fix="pass out=<path>.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dv-quant-") as tmpd:
        tmp = Path(tmpd)
        src = _preprocess(_as_onnx(model, example, tmp), tmp / "pre.onnx")
        tmp_out = tmp / "int8.onnx"
        yield src, tmp_out
        os.replace(tmp_out, out)


class _Reader:
    """An ONNX Runtime CalibrationDataReader over numpy/torch batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self.name, self.batches, self.i = name, batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.batches)


def _calibration_batches(calibration: Iterable[Any] | None, limit: int) -> list[np.ndarray]:
    if calibration is None:
        raise DataError(
            "static quantization needs calibration data", fix="pass calibration=<batches>"
        )
    batches = []
    for i, b in enumerate(calibration):
        if i >= limit:
            break
        if isinstance(b, list | tuple):
            b = b[0]
        arr = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise DataError(
                f"calibration batch {i} holds NaN or inf",
                where=f"calibration batch {i}",
                fix="clean the calibration data",
            )
        batches.append(arr)
    if not batches:
        raise DataError("the calibration set is empty", fix="pass at least one batch")
    return batches


@_quantize.register
def _(
    config: Int8StaticConfig, model: Any, out: Path, calibration: Any, example: Any
) -> QuantizedModel:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    batches = _calibration_batches(calibration, config.max_calibration_batches)
    reduce_range = config.resolved_reduce_range()
    with _onnx_job(model, example, out) as (src, tmp_out):
        tmp = tmp_out.parent
        input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
        reader = _Reader(input_name, batches)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
            "mse": CalibrationMethod.MinMax,
        }[config.calibration]
        extra: dict[str, Any] = (
            {"CalibPercentile": config.percentile} if config.calibration == "percentile" else {}
        )
        cache = None
        if config.calibration == "mse":
            cache = tmp / "mse_ranges.json"
            _write_mse_cache(src, input_name, batches, cache)
        elif config.calibration == "entropy":
            cache = tmp / "entropy_ranges.json"
            _write_entropy_cache(src, reader, cache, tmp / "entropy_augmented.onnx")
        quantize_static(
            str(src),
            str(tmp_out),
            calibration_data_reader=None if cache else reader,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(config.include_nodes) or None,
            nodes_to_exclude=list(config.exclude_nodes),
            op_types_to_quantize=list(config.op_types) or None,
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=str(cache) if cache else None,
        )
    return QuantizedModel(out, asdict(config), reduce_range, list(config.exclude_nodes))


def _write_mse_cache(
    model_path: Path, input_name: str, batches: list[np.ndarray], cache: Path
) -> None:
    """Per-tensor clipping ranges minimising uint8 quantization MSE, as an ORT calibration cache."""
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    from core.compress.report import ort_session

    m = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(m)
    float_t = onnx.TensorProto.FLOAT
    typed = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == float_t
    }
    inits = {i.name for i in m.graph.initializer}
    existing = {o.name for o in m.graph.output}
    names = [input_name] + [
        o for n in m.graph.node for o in n.output if o in typed and o not in inits
    ]
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, float_t, None))
            existing.add(name)
    aug = model_path.with_name("mse_augmented.onnx")
    onnx.save(m, str(aug))
    sess = ort_session(aug)
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    samples: dict[str, list[np.ndarray]] = {n: [] for n in out_names}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for b in batches:
        for name, val in zip(out_names, sess.run(None, {input_name: b}), strict=True):
            flat = np.asarray(val, dtype=np.float32).ravel()
            if flat.size == 0:
                continue
            lo[name] = min(lo.get(name, np.inf), float(flat.min()))
            hi[name] = max(hi.get(name, -np.inf), float(flat.max()))
            take = flat if flat.size <= 8192 else rng.choice(flat, 8192, replace=False)
            samples[name].append(take)
    data = {}
    for name in lo:
        x = np.concatenate(samples[name])
        best_lo, best_hi = _mse_range(x, lo[name], hi[name])
        data[name] = TensorData(lowest=np.float32(best_lo), highest=np.float32(best_hi))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)


# ONNX Runtime's entropy calibrator defaults to a 128-bin histogram: with 128 quantized bins
# the only candidate threshold is the full range, so "entropy" equalled "minmax" byte for
# byte. TensorRT's recipe: a fine histogram (2048 bins), KL divergence over thresholds that
# keep >= 128 of them. quantize_static does not pass num_bins on, so the ranges are computed
# here and handed over as a calibration cache, like mse.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


def _write_entropy_cache(model_path: Path, reader: _Reader, cache: Path, augmented: Path) -> None:
    """Per-tensor KL-divergence (entropy) ranges over a 2048-bin histogram, as an ORT cache."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    calibrator = create_calibrator(
        model_path,
        None,
        augmented_model_path=str(augmented),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    reader.rewind()
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()


def _mse_range(x: np.ndarray, lo: float, hi: float, steps: int = 40) -> tuple[float, float]:
    """Search ``[a*lo, a*hi]`` for ``a`` in (0.2, 1] minimising uint8 round-trip MSE on ``x``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return lo, hi
    best, best_err = (lo, hi), np.inf
    for a in np.linspace(1.0, 0.2, steps):
        a_lo, a_hi = lo * a, hi * a
        scale = (a_hi - a_lo) / 255.0
        zp = np.round(-a_lo / scale)
        q = np.clip(np.round(x / scale) + zp, 0, 255)
        err = float(np.mean((x - (q - zp) * scale) ** 2))
        if err < best_err:
            best, best_err = (a_lo, a_hi), err
    return best


@_quantize.register
def _(
    config: Int8DynamicConfig, model: Any, out: Path, calibration: Any, example: Any
) -> QuantizedModel:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = config.resolved_reduce_range()
    with _onnx_job(model, example, out) as (src, tmp_out):
        quantize_dynamic(
            str(src),
            str(tmp_out),
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(config.exclude_nodes),
        )
    return QuantizedModel(out, asdict(config), reduce_range, list(config.exclude_nodes))


def _x86_quantizer(is_qat: bool) -> Any:
    from core.errors import require

    require("torchao", feature="PyTorch-native (pt2e) quantization")
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def _export_for_quant(model: nn.Module, example: torch.Tensor | None) -> Any:
    if example is None:
        raise ConfigError("pt2e quantization needs an example input", fix="pass example=<a batch>")
    batch = torch.export.Dim("batch", min=1, max=4096)
    # strict=True: a module called at several sites (ResNet reuses its ReLU) must give one
    # partition per call site, or the x86 quantizer refuses the graph (pytorch/ao#4478).
    return torch.export.export(
        model, (example,), dynamic_shapes=({0: batch},), strict=True
    ).module()


@_quantize.register
def _(
    config: Int8PT2EConfig, model: Any, out: Path, calibration: Any, example: Any
) -> QuantizedModel:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not isinstance(model, nn.Module):
        raise ConfigError(
            "Int8PT2EConfig quantizes PyTorch modules", fix="pass the nn.Module, not an ONNX path"
        )
    batches = _calibration_batches(calibration, config.max_calibration_batches)
    prepared = prepare_pt2e(_export_for_quant(model.eval(), example), _x86_quantizer(is_qat=False))
    with torch.no_grad():
        for b in batches:
            prepared(torch.from_numpy(b))
    converted = _usable(convert_pt2e(prepared))
    return QuantizedModel(None, asdict(config), False, module=converted)


class QATModel(nn.Module):
    """A fake-quantized exported model that ``core.train.Trainer`` can fine-tune.

    Exported graphs cannot switch train/eval by ``Module.train``; this wrapper does it the
    pt2e way (``move_exported_model_to_train/eval``) so the Trainer's calls just work.
    """

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.gm = graph_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)

    def train(self, mode: bool = True) -> QATModel:
        from torchao.quantization.pt2e import (
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        self.training = mode
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.gm)
        return self


def prepare_qat(model: nn.Module, example: torch.Tensor) -> QATModel:
    """Insert fake-quantization (INT8, x86 scheme) for quantization-aware fine-tuning.

    Fine-tune with a small learning rate (about 1/10 to 1/100 of the training one, e.g. SGD
    1e-4): the observers and folded batch norms move with every step, and a training-sized
    rate undoes the trained weights (measured: ResNet-18 on digits fell from 95% to 78% at
    1e-3 and rose to 96% at 1e-4 in one epoch).
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    model.train()
    prepared = prepare_qat_pt2e(_export_for_quant(model, example), _x86_quantizer(is_qat=True))
    return QATModel(prepared).train()


def convert_qat(model: QATModel) -> nn.Module:
    """Freeze observers and convert a fine-tuned :class:`QATModel` to a quantized module."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model.eval()
    return _usable(convert_pt2e(model.gm))


def _usable(module: nn.Module) -> nn.Module:
    """Let ``.eval()``/``.train()`` work on a converted exported module, as users expect."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(module)
    module.eval()  # torchao's replacement eval() returns None, so do not chain it
    return module
