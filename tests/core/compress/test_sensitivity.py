"""Per-layer sensitivity, mixed precision and the accuracy-aware search, on the digits CNN."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from core.compress.export import export_onnx
from core.compress.quantize import Int8StaticConfig, quantize
from core.compress.report import ort_session
from core.compress.sensitivity import (
    AccuracyTargetError,
    layer_sensitivity,
    mixed_precision,
    quantizable_nodes,
    quantize_to_target,
)
from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Trainer, TrainerConfig, seed_everything

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    splits = load_digits_splits(8, seed=0)
    seed_everything(0)
    model = DigitsCNN(16)
    Trainer(model, TrainerConfig(max_epochs=3, progress="off", optimizer={"lr": 3e-3})).fit(
        splits["train"]
    )
    path = tmp_path_factory.mktemp("m") / "fp32.onnx"
    export_onnx(model.eval(), splits["val"][:4][0], path)
    calib = [splits["train"][i : i + 64][0].numpy() for i in range(0, 256, 64)]
    x, y = splits["val"][:]

    def accuracy(p) -> float:
        s = ort_session(p)
        return float(
            (s.run(None, {s.get_inputs()[0].name: x.numpy()})[0].argmax(1) == y.numpy()).mean()
        )

    return path, calib, accuracy


def quantized_nodes(path) -> set[str]:
    """Names of float layers fed by a DequantizeLinear of their weights (i.e. in INT8)."""
    g = onnx.load(str(path)).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {
        n.name
        for n in g.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in dq_out
    }


def test_sensitivity_covers_every_layer_and_quantizes_one_at_a_time(setup, tmp_path):
    path, calib, accuracy = setup
    seen: list[set[str]] = []

    def recording(p) -> float:
        seen.append(quantized_nodes(p))
        return accuracy(p)

    sens = layer_sensitivity(path, calib, recording)
    layers = [n for n, _ in quantizable_nodes(path)]
    assert seen[0] == set()  # the fp32 baseline
    assert seen[1:] == [{n} for n in layers]  # then each layer alone, and only that layer
    assert len(sens) == 4 and {s.op_type for s in sens} == {"Conv", "Gemm"}
    assert sens == sorted(sens, key=lambda s: s.drop, reverse=True)
    mp = mixed_precision(Int8StaticConfig(), sens, 2)
    assert mp.exclude_nodes == (sens[0].node, sens[1].node)


def test_accuracy_aware_stops_at_the_first_calibration_that_meets_the_target(setup, tmp_path):
    path, calib, accuracy = setup
    res = quantize_to_target(path, calib, accuracy, out=tmp_path / "q.onnx", max_relative_drop=0.05)
    assert res.relative_drop <= 0.05 and res.trials[-1]["meets_target"]
    assert all(not t["meets_target"] for t in res.trials[:-1])
    assert (tmp_path / "q.onnx").is_file() and res.model.path == tmp_path / "q.onnx"


def test_accuracy_aware_returns_the_damaging_layer_to_float(setup, tmp_path):
    path, calib, accuracy = setup
    culprit = quantizable_nodes(path)[1][0]

    def strict(p) -> float:  # a metric that collapses whenever the culprit layer is INT8
        return accuracy(p) - (0.5 if culprit in quantized_nodes(p) else 0.0)

    res = quantize_to_target(path, calib, strict, out=tmp_path / "q.onnx", max_relative_drop=0.05)
    assert culprit in res.config.exclude_nodes and res.trials[-1]["stage"] == "mixed precision"
    assert culprit not in quantized_nodes(res.model.path) and quantized_nodes(res.model.path)


def test_unreachable_target_is_a_clear_error(setup, tmp_path):
    path, calib, accuracy = setup
    with pytest.raises(AccuracyTargetError, match="no INT8 quantization met the target"):
        quantize_to_target(
            path,
            calib,
            lambda p: accuracy(p) - (0.0 if p.name == "pre.onnx" else 1.0),
            out=tmp_path / "q.onnx",
            max_relative_drop=0.01,
            max_float_layers=1,
        )
    assert not (tmp_path / "q.onnx").exists()


def _activation_scales(path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear (the ranges calibration chose)."""
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in g.node
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1
    }


def test_entropy_calibration_clips_ranges_that_minmax_keeps(setup, tmp_path):
    path, calib, _ = setup
    q = {}
    for method in ("minmax", "entropy"):
        q[method] = quantize(
            path,
            Int8StaticConfig(calibration=method),
            out=tmp_path / f"{method}.onnx",
            calibration=calib,
        ).path
    assert q["minmax"].read_bytes() != q["entropy"].read_bytes()
    mm, en = _activation_scales(q["minmax"]), _activation_scales(q["entropy"])
    assert mm.keys() == en.keys() and mm
    clipped = [k for k in mm if en[k] < mm[k] * 0.999]
    assert clipped, "entropy chose the full range everywhere, i.e. it is minmax"
    assert all(en[k] <= mm[k] * 1.001 for k in mm)  # never wider than the observed range


def test_search_evaluates_byte_identical_models_once(setup, tmp_path, monkeypatch):
    import core.compress.sensitivity as sens_mod

    path, calib, accuracy = setup
    evaluated: list[str] = []

    def counting(p) -> float:
        evaluated.append(p.name)
        return accuracy(p) - (0.0 if p.name == "pre.onnx" else 1.0)  # nothing meets the target

    real = sens_mod.quantize

    def same_for_mse_and_minmax(model, cfg, **kw):  # two configs that give the same bytes
        if cfg.calibration == "mse":
            cfg = dataclasses.replace(cfg, calibration="minmax")
        return real(model, cfg, **kw)

    monkeypatch.setattr(sens_mod, "quantize", same_for_mse_and_minmax)
    with pytest.raises(AccuracyTargetError):
        quantize_to_target(
            path,
            calib,
            counting,
            out=tmp_path / "q.onnx",
            max_relative_drop=0.01,
            max_float_layers=0,
        )
    # 8 calibration trials plus the baseline; the two mse trials reuse the minmax metric
    assert len(evaluated) == 1 + 8 - 2
