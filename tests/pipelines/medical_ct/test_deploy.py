"""Compression of the nodule U-Net: fp32 and INT8 ONNX variants, the parity report and gate,
loading every variant, and the bad inputs (empty sets, another task's model, a corrupt file)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from core.artifacts import write_manifest
from core.errors import ConfigError, DataError, ModelLoadError
from pipelines.medical_ct.deploy import DeployConfig, OnnxNet, deploy, load_deployed
from pipelines.medical_ct.predict import NoduleSegmenter
from pipelines.medical_ct.synth import write_dataset
from pipelines.medical_ct.train import TrainConfig, default_trainer, load_cases, train
from tests.pipelines.medical_ct.conftest import small_cfg

TINY = {"filters": [8, 16, 32], "roi": [16, 32, 32], "spacing_mm": [2.5, 2.5, 2.5]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_deploy")
    write_dataset(small_cfg(out_dir=str(root / "data"), n_cases=2, seed=21, nodules=(2, 2)))
    tr = default_trainer()
    tr.max_steps, tr.progress, tr.precision = 30, "off", "fp32"
    tr.optimizer.lr = 1e-2
    _, out = train(
        TrainConfig(
            data=str(root / "data"),
            out_dir=str(root / "model"),
            model=TINY,
            trainer=tr,
            patches_per_epoch=8,
        )
    )
    cases = load_cases(root / "data")
    rep = deploy(
        out, cases, cases, DeployConfig(out_dir=str(root / "deploy"), calibration_patches=8)
    )
    return out, cases, rep, root


def test_deploy_writes_fp32_and_int8_variants_whose_masks_agree(trained):
    _, _, rep, root = trained
    names = [v.name for v in rep.variants]
    assert names == ["fp32_torch", "fp32_onnx", "int8_onnx"]
    torch_v, onnx_v, int8_v = rep.variants
    assert onnx_v.agreement > 0.99  # same network, other runtime
    assert onnx_v.cpm == pytest.approx(torch_v.cpm, abs=1e-6)
    assert rep.dice_drop == pytest.approx((torch_v.dice_mean or 0) - (int8_v.dice_mean or 0))
    assert int8_v.size_bytes < onnx_v.size_bytes
    saved = json.loads((root / "deploy" / "parity.json").read_text())
    assert saved["passed"] == rep.passed and saved["cases"] == 2
    card = (root / "deploy" / "int8" / "model_card.md").read_text()
    assert "float_ops" in card and "Conv with < 16 output channels" in card


def test_int8_quantizes_only_the_wide_convolutions(trained):
    _, _, rep, root = trained
    g = onnx.load(str(root / "deploy" / "int8" / "model.onnx")).graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    kinds = {i.name: i.data_type for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    quantized, floating = [], []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        w = producer[n.input[1]]
        assert w.op_type == "DequantizeLinear"  # every weight is stored INT8
        assert kinds[w.input[0]] == onnx.TensorProto.INT8
        x = producer.get(n.input[0])
        if x is not None and x.op_type == "DequantizeLinear":  # INT8 input: computes in INT8
            quantized.append(dims[w.input[0]][0])
        else:
            floating.append(dims[w.input[0]][0])
    assert quantized and min(quantized) >= 16  # 16- and 32-channel convolutions in INT8
    assert floating and max(floating) < 16  # the 8-channel level and the 2-class head: float
    # the transposed up-convolutions compute in float from INT8-stored weights too
    ups = [n for n in g.node if n.op_type == "ConvTranspose"]
    assert ups and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in ups)
    assert rep.compression["int8_weights_float_compute"] == len(floating) + len(ups)
    assert rep.compression["int8_convs"] == len(quantized)
    # batch norms are folded before quantization: nothing of them is left in the graph
    assert not any(n.op_type == "BatchNormalization" for n in g.node)
    assert "Conv" in rep.compression["float_ops"] and "BatchNormalization" not in str(
        rep.compression["float_ops"]
    )


def test_every_variant_loads_and_predicts_the_same_study(trained):
    out, cases, _, root = trained
    vol = cases[0].volume
    ref = NoduleSegmenter(out).predict(vol)
    for d in ("fp32", "int8"):
        seg = NoduleSegmenter(root / "deploy" / d, threads=1)
        assert isinstance(seg.segmenter.net, OnnxNet)
        got = seg.predict(vol)
        assert got.probability.shape == vol.shape
        diff = np.abs(got.probability - ref.probability)
        if d == "fp32":
            assert diff.max() < 1e-3
        else:  # INT8 moves voxels near p = 0.5 of this barely trained model, not the volume
            assert diff.mean() < 0.01 and np.quantile(diff, 0.999) < 0.2


def test_the_gate_names_what_failed(trained):
    out, cases, _, root = trained
    rep = deploy(
        out,
        cases[:1],
        cases[:1],
        DeployConfig(
            out_dir=str(root / "strict"), calibration_patches=4, max_dice_drop=-1.0,
            min_agreement=1.01,
        ),
    )  # fmt: skip
    assert not rep.passed
    assert any("Dice drop" in r for r in rep.reasons)
    assert any("agreement" in r for r in rep.reasons)


def test_bad_deploy_inputs(trained, tmp_path):
    out, cases, _, root = trained
    with pytest.raises(DataError, match="parity test set is empty"):
        deploy(out, cases, [], DeployConfig(out_dir=str(tmp_path / "a")))
    with pytest.raises(DataError, match="no calibration cases"):
        deploy(out, [], cases, DeployConfig(out_dir=str(tmp_path / "b")))
    with pytest.raises(ConfigError, match="no convolution has 512"):
        deploy(out, cases, cases, DeployConfig(out_dir=str(tmp_path / "c"), int8_min_channels=512,
                                               calibration_patches=2))  # fmt: skip
    assert not (tmp_path / "c").exists()  # checked before anything is written
    with pytest.raises(ConfigError, match="calibration"):
        DeployConfig(calibration="best")
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(root / "deploy" / "int8", bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        load_deployed(bad)
    other = tmp_path / "other"
    shutil.copytree(root / "deploy" / "fp32", other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "task": "vision_qc"}))
    with pytest.raises(ModelLoadError, match=r"config\.json is corrupt"):  # edited by hand
        load_deployed(other)
    write_manifest(other)  # a consistent directory of another task
    with pytest.raises(ModelLoadError, match="not a medical_ct model"):
        load_deployed(other)
