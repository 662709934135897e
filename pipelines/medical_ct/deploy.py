"""Deploying the nodule U-Net: pruning, ONNX export, INT8 static and the parity report.

:func:`deploy` optionally prunes channels (``core.compress.prune``: every U-Net level, the
encoder skips concatenated into the decoder keep their offsets, no fine-tuning: the gate
judges), exports fp32 ONNX (parity checked against PyTorch) and INT8 static ONNX (QDQ, run by
ONNX Runtime, activation ranges from training patches), then scores all three variants on
labelled test cases: per-case Dice, CPM, sensitivity, and the voxel agreement of each mask
with the fp32 PyTorch mask. Each variant is a model directory that
:class:`~pipelines.medical_ct.predict.NoduleSegmenter` loads (:func:`load_deployed`).

What stays float in the INT8 model, and why:

- Batch norms (the default ``ModelConfig.norm``) are folded into their convolutions by ONNX
  Runtime's graph optimizer before quantization, so nothing of them is left. A model trained
  with ``norm="instance"`` keeps ``InstanceNormalization`` in float: its statistics are
  computed per input at run time and ONNX Runtime has no INT8 kernel for it, so the tensors
  around it are dequantized and ``LeakyRelu`` after it reads its float output.
- ``ConvTranspose`` (the decoder's up-sampling): ONNX Runtime's CPU provider has no INT8
  transposed convolution, so it runs in float. Its weights are *stored* in INT8
  (``core.compress.quantize.store_weights_int8``: per output channel, read through a
  ``DequantizeLinear``), which shrinks the file at the same speed.
- Convolutions with fewer than ``DeployConfig.int8_min_channels`` output channels (the
  full-resolution level and the 2-class output): measured node by node on this CPU (AVX2,
  no VNNI), MLAS's INT8 kernel ran them 6-20x slower than its fp32 NCHWc kernel, while the
  convolutions with 16 or more channels ran 1.1-2.6x faster in INT8. They compute in float;
  their weights are stored in INT8 as the transposed convolutions' are.

Not here: the network and its input grid (``model.py``), metrics (``evaluate.py``), running a
model directory for users (``predict.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.artifacts import read_config, save_onnx_variant
from core.errors import ConfigError, DataError, ModelLoadError
from pipelines.medical_ct.evaluate import evaluate_cases
from pipelines.medical_ct.model import ModelConfig, Segmenter, load_segmenter

log = logging.getLogger(__name__)

CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class DeployConfig:
    """Compression of a trained U-Net and the parity gate."""

    out_dir: str = "data/runs/medical_ct/deploy"  # fp32/ and int8/ model dirs + parity.json
    prune_ratio: float = 0.0  # channel pruning of every level, no fine-tuning (0 = off)
    calibration: str = "percentile"  # INT8 activation ranges: minmax | percentile | entropy | mse
    calibration_patches: int = 32  # training patches (roi-sized, half centred on nodules)
    int8_min_channels: int = 16  # convolutions with fewer output channels stay float
    max_dice_drop: float = 0.01  # gate: INT8 per-case Dice may fall at most this much
    min_agreement: float = 0.9  # gate: Dice between the INT8 and fp32 PyTorch masks
    threads: int = 2  # ONNX Runtime threads for the parity run
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune_ratio < 0.9:
            raise ConfigError("prune_ratio must lie in [0, 0.9)", fix="use 0 (off) or e.g. 0.25")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"unknown calibration {self.calibration!r}", fix=f"use one of {CALIBRATIONS}"
            )
        if self.calibration_patches < 1:
            raise ConfigError("calibration_patches must be >= 1", fix="use e.g. 32")
        if self.int8_min_channels < 1:
            raise ConfigError("int8_min_channels must be >= 1", fix="use 16, or 1 for every conv")


@dataclass
class VariantParity:
    name: str
    dice_mean: float | None
    cpm: float
    sensitivity: float
    agreement: float  # voxel Dice of this variant's mask with the fp32 PyTorch mask
    size_bytes: int
    path: str = ""


@dataclass
class DeployReport:
    variants: list[VariantParity]
    dice_drop: float  # fp32 PyTorch Dice minus INT8 Dice (0 when neither has a Dice)
    size_ratio: float  # fp32 ONNX file / INT8 ONNX file (same container, same graph)
    passed: bool
    reasons: list[str] = field(default_factory=list)
    fp32_dir: str = ""
    int8_dir: str = ""
    cases: int = 0
    compression: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- ONNX runtime side
class OnnxNet:
    """An ONNX Runtime session as the callable :class:`Segmenter` runs: ``(B, 1, *roi)``
    float tensor in, logits ``(B, 2, *roi)`` out."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        from core.compress.report import load_ort_session

        self.session = load_ort_session(path, threads, "re-run medical-ct compress")
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


def load_deployed(model_dir: str | os.PathLike[str], threads: int | None = None) -> Segmenter:
    """The :class:`Segmenter` of any medical_ct model directory: PyTorch weights (``train``)
    or ``model.onnx`` (fp32 or INT8, ``compress``)."""
    model_dir = Path(model_dir)
    if not (model_dir / "model.onnx").is_file():
        return load_segmenter(model_dir)
    config = read_config(model_dir)
    if config.get("task") != "medical_ct":
        raise ModelLoadError(
            f"not a medical_ct model (task {config.get('task')!r})", where=str(model_dir)
        )
    return Segmenter(
        OnnxNet(model_dir / "model.onnx", threads),
        ModelConfig(**config["model"]),
        config.get("threshold", 0.5),
        config.get("min_diameter_mm", 2.0),
    )


# ------------------------------------------------------------------------- compression
def calibration_patches(cases: Sequence[Any], cfg: ModelConfig, n: int, seed: int) -> np.ndarray:
    """``(n, 1, *roi)`` float32 patches from ``cases`` as the network sees them in training
    (half centred on nodule voxels, no augmentation)."""
    from pipelines.medical_ct.train import PatchDataset

    ds = PatchDataset(list(cases), cfg, n, pos=0.5, augment=False, seed=seed)
    return np.stack([ds[i][0].numpy() for i in range(n)]).astype(np.float32)


def int8_convs(onnx_path: Path, min_channels: int) -> tuple[list[str], list[str]]:
    """``(quantized, kept float)`` names of the ``Conv`` nodes: a conv is quantized when its
    weight has ``min_channels`` or more output channels."""
    import onnx

    model = onnx.load(str(onnx_path))
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    q, f = [], []
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_ch = dims.get(node.input[1], [0])[0]
            (q if out_ch >= min_channels else f).append(node.name)
    return q, f


def float_ops(onnx_path: Path) -> list[str]:
    """Op types of an INT8 QDQ model that run in float (every op but the Q/DQ pairs and the
    convolutions that compute in INT8: their input, not only their weight, comes through a
    ``DequantizeLinear``; a weight stored INT8 alone still computes in float)."""
    import onnx

    g = onnx.load(str(onnx_path)).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    ops = set()
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.op_type == "Conv" and producer.get(n.input[0]) == "DequantizeLinear":
            continue
        ops.add(n.op_type)
    return sorted(ops)


def _write_variant(
    out: Path, onnx_file: Path, config: dict[str, Any], step: str, details: dict[str, Any]
) -> None:
    save_onnx_variant(out, onnx_file, config, step, details, "medical_ct nodule U-Net")


def _mask_agreement(ref: list[np.ndarray], other: list[np.ndarray]) -> float:
    inter = sum(int(((a > 0) & (b > 0)).sum()) for a, b in zip(ref, other, strict=True))
    total = sum(int((a > 0).sum() + (b > 0).sum()) for a, b in zip(ref, other, strict=True))
    return 2 * inter / total if total else 1.0


def deploy(
    model_dir: str | os.PathLike[str],
    calibration: Sequence[Any],
    test: Sequence[Any],
    cfg: DeployConfig,
) -> DeployReport:
    """Prune (optional), export fp32 and INT8 ONNX, score the three variants on ``test``
    (:class:`~pipelines.medical_ct.train.Case` objects) and gate INT8 against fp32 PyTorch.

    ``calibration``: labelled cases for the INT8 activation ranges (the training cases). Writes
    ``out_dir/fp32``, ``out_dir/int8`` and ``out_dir/parity.json``; the report says why a gate
    failed."""
    from core.compress.export import compact_names, export_onnx
    from core.compress.quantize import Int8StaticConfig, quantize, store_weights_int8
    from core.compress.report import count_macs, disk_size
    from core.models import load_model_dir

    if not test:
        raise DataError("the parity test set is empty", fix="keep some labelled test cases")
    if not calibration:
        raise DataError("no calibration cases", fix="pass the training cases for calibration")
    model_dir, out = Path(model_dir), Path(cfg.out_dir)
    net, config = load_model_dir(model_dir)
    if config.get("task") != "medical_ct":
        raise ModelLoadError(
            f"not a medical_ct model (task {config.get('task')!r})", where=str(model_dir)
        )
    mcfg = ModelConfig(**config["model"])
    calib = calibration_patches(calibration, mcfg, cfg.calibration_patches, cfg.seed)
    example = torch.from_numpy(calib[:2])
    details: dict[str, Any] = {"macs_per_window": count_macs(net, example[:1])}
    if cfg.prune_ratio > 0:
        from core.compress.prune import PruneConfig, prune

        rep = prune(net, example[:1], PruneConfig(ratio=cfg.prune_ratio))
        details.update(
            prune_ratio=cfg.prune_ratio,
            macs_per_window=rep.macs_after,
            macs_before=rep.macs_before,
            params_before=rep.params_before,
            params_after=rep.params_after,
        )
    with tempfile.TemporaryDirectory(prefix="dv-ct-") as tmpd:
        tmp = Path(tmpd)
        parity = export_onnx(net, example, tmp / "fp32.onnx", atol=1e-3)
        details.update(parity_max_abs=parity.max_abs, parity_max_rel=parity.max_rel)
        include, kept = int8_convs(tmp / "fp32.onnx", cfg.int8_min_channels)
        if not include:
            raise ConfigError(
                f"no convolution has {cfg.int8_min_channels} or more output channels",
                where=str(model_dir),
                fix="lower int8_min_channels",
            )
        fp32_file = tmp / "fp32_compact.onnx"
        shutil.copy2(tmp / "fp32.onnx", fp32_file)
        details["names"] = compact_names(fp32_file)
        _write_variant(out / "fp32", fp32_file, config, "export", details)
        qcfg = Int8StaticConfig(
            calibration=cfg.calibration,  # type: ignore[arg-type]
            op_types=("Conv",),
            include_nodes=tuple(include),
        )
        batches = [calib[i : i + 4] for i in range(0, len(calib), 4)]
        q = quantize(tmp / "fp32.onnx", qcfg, out=tmp / "int8.onnx", calibration=batches)
        weight_only = store_weights_int8(tmp / "int8.onnx", ("Conv", "ConvTranspose"))
        names = compact_names(tmp / "int8.onnx")
        int8_details = {
            **details,
            "names": names,
            "scheme": "Int8StaticConfig",
            "calibration": cfg.calibration,
            "reduce_range": q.reduce_range,
            "calibration_patches": len(calib),
            "int8_convs": len(include),
            "float_convs": len(kept),
            "float_ops": float_ops(tmp / "int8.onnx"),
            "float_conv_rule": f"Conv with < {cfg.int8_min_channels} output channels",
            "int8_weights_float_compute": len(weight_only),
        }
        _write_variant(out / "int8", tmp / "int8.onnx", config, "quantize", int8_details)
    weights = model_dir / "model.safetensors"
    runs = {
        "fp32_torch": (load_segmenter(model_dir), model_dir, disk_size(weights)),
        "fp32_onnx": (
            load_deployed(out / "fp32", cfg.threads),
            out / "fp32",
            disk_size(out / "fp32" / "model.onnx"),
        ),
        "int8_onnx": (
            load_deployed(out / "int8", cfg.threads),
            out / "int8",
            disk_size(out / "int8" / "model.onnx"),
        ),
    }
    masks: dict[str, list[np.ndarray]] = {}
    variants = []
    for name, (seg, path, size) in runs.items():
        masks[name] = []

        def run(vol: Any, seg: Segmenter = seg, name: str = name) -> tuple[list, np.ndarray]:
            found, labels, _ = seg(vol)
            masks[name].append(labels)
            return found, labels

        rep = evaluate_cases(list(test), run)
        agree = _mask_agreement(masks["fp32_torch"], masks[name])
        variants.append(
            VariantParity(name, rep.dice_mean, rep.cpm, rep.sensitivity, agree, size, str(path))
        )
        log.info(
            "parity %s: dice %s, CPM %.3f, agreement %.4f", name, rep.dice_mean, rep.cpm, agree
        )
    ref, int8 = variants[0], variants[2]
    drop = (ref.dice_mean or 0.0) - (int8.dice_mean or 0.0)
    reasons = []
    if drop > cfg.max_dice_drop:
        reasons.append(f"INT8 Dice drop {drop:.4f} > {cfg.max_dice_drop}")
    if int8.agreement < cfg.min_agreement:
        reasons.append(f"INT8 mask agreement {int8.agreement:.4f} < {cfg.min_agreement}")
    report = DeployReport(
        variants,
        drop,
        variants[1].size_bytes / max(int8.size_bytes, 1),
        not reasons,
        reasons,
        str(out / "fp32"),
        str(out / "int8"),
        len(test),
        int8_details,
    )
    (out / "parity.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report
