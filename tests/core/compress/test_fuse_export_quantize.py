"""BN folding, ONNX/torch.export parity, and INT8 quantization on a trained digits CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.compress.export import ExportError, ParityError, export_onnx, export_program
from core.compress.fuse import fuse
from core.compress.quantize import Int8DynamicConfig, Int8StaticConfig, cpu_has_vnni, quantize
from core.compress.report import ort_session
from core.errors import ConfigError, DataError
from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Trainer, TrainerConfig, accuracy, seed_everything


@pytest.fixture(scope="module")
def trained():
    splits = load_digits_splits(16, seed=0)
    seed_everything(0)
    model = DigitsCNN(32)
    cfg = TrainerConfig(max_epochs=3, batch_size=32, progress="off", optimizer={"lr": 3e-3})
    Trainer(model, cfg, metrics={"accuracy": accuracy}).fit(splits["train"])
    return model.eval(), splits


def ort_accuracy(path, dataset) -> float:
    sess = ort_session(path)
    x, y = dataset[:]
    logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float((logits.argmax(1) == y.numpy()).mean())


def test_fuse_folds_every_bn_and_keeps_outputs(trained):
    model, splits = trained
    import copy

    fused = copy.deepcopy(model)
    pairs = fuse(fused)
    assert [p[1] for p in pairs] == ["features.1", "features.4", "features.8"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = splits["val"][:][0]
    with torch.no_grad():
        assert float((fused(x) - model(x)).abs().max()) < 1e-5


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv3_small_100", "resnet18"])
def test_fuse_keeps_the_activation_of_norm_act_layers(name):
    """timm's BatchNormAct2d normalises *and* activates: folding it as a plain batch norm
    (replacing it by Identity) dropped every ReLU6 of EfficientNet-Lite0, and the fused
    model's outputs grew without bound (vision_qc's exported detector found nothing)."""
    import copy

    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    for m in model.modules():  # statistics unlike the initial ones, so folding does something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = copy.deepcopy(model)
    pairs = fuse(fused)
    assert len(pairs) >= 20
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert float((got - ref).abs().max()) < 1e-3 * max(1.0, float(ref.abs().max()))


def test_a_batch_norm_subclass_with_its_own_forward_is_not_folded():
    class Scaled(nn.BatchNorm2d):
        def forward(self, x):
            return 2.0 * super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Scaled(4)).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert fuse(model) == [] and torch.allclose(model(x), ref)


def test_onnx_export_has_a_dynamic_batch_and_passes_parity(trained, tmp_path):
    model, splits = trained
    x = splits["val"][:4][0]
    parity = export_onnx(model, x, tmp_path / "m.onnx")
    assert parity.batch_sizes == (4, 12) and parity.max_abs < 1e-4
    sess = ort_session(tmp_path / "m.onnx")
    assert sess.run(None, {"input": splits["val"][:1][0].numpy()})[0].shape == (1, 10)


def test_parity_gate_fails_and_leaves_no_file(trained, tmp_path):
    model, splits = trained

    class Drifting(nn.Module):  # computes something else while being exported
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x) + (0.5 if torch.compiler.is_exporting() else 0.0)

    with pytest.raises(ParityError, match="ONNX output differs"):
        export_onnx(Drifting(), splits["val"][:4][0], tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())


def test_wrong_input_shape_is_an_export_error(trained, tmp_path):
    model, _ = trained
    with pytest.raises(ExportError, match="ONNX export failed"):
        export_onnx(model, torch.zeros(2, 3, 16), tmp_path / "m.onnx")


def test_torch_export_program_round_trips(trained, tmp_path):
    model, splits = trained
    parity = export_program(model, splits["val"][:4][0], tmp_path / "m.pt2")
    assert parity.max_abs < 1e-5
    program = torch.export.load(str(tmp_path / "m.pt2"))
    x = splits["val"][:7][0]
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy", "mse"])
def test_static_int8_keeps_accuracy_and_is_4x_smaller(trained, tmp_path, calibration):
    model, splits = trained
    x = splits["val"][:4][0]
    export_onnx(model, x, tmp_path / "fp32.onnx")
    calib = [splits["train"][i : i + 32][0] for i in range(0, 256, 32)]
    q = quantize(
        tmp_path / "fp32.onnx",
        Int8StaticConfig(calibration=calibration),
        out=tmp_path / "int8.onnx",
        calibration=calib,
    )
    assert q.reduce_range == (not cpu_has_vnni())
    fp32_acc = ort_accuracy(tmp_path / "fp32.onnx", splits["test"])
    int8_acc = ort_accuracy(q.path, splits["test"])
    assert int8_acc >= fp32_acc - 0.02
    import onnx

    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ratio = (tmp_path / "fp32.onnx").stat().st_size / q.path.stat().st_size
    assert ratio > 2.5  # this small model has fixed overheads; benchmarks measure the ResNet


def test_compact_names_shrinks_the_file_and_computes_the_same(trained, tmp_path):
    import onnx

    from core.compress.export import compact_names

    model, splits = trained
    x = splits["val"][:4][0]
    export_onnx(model, x, tmp_path / "fp32.onnx")
    calib = [splits["train"][i : i + 32][0] for i in range(0, 128, 32)]
    q = quantize(tmp_path / "fp32.onnx", Int8StaticConfig(), out=tmp_path / "int8.onnx",
                 calibration=calib)  # fmt: skip
    xs = splits["test"][:64][0].numpy()
    ref = ort_session(q.path).run(None, {"input": xs})[0]
    sizes = compact_names(q.path)
    assert sizes["bytes_after"] < sizes["bytes_before"]
    g = onnx.load(str(q.path)).graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["output"]
    assert max(len(n.name) for n in g.node) <= 6
    # the exporter's per-node module paths and stack traces are gone
    assert not any(n.metadata_props or n.doc_string for n in g.node)
    assert b"stack_trace" not in q.path.read_bytes()
    np.testing.assert_array_equal(ort_session(q.path).run(None, {"input": xs})[0], ref)


def test_static_quantization_rejects_empty_or_nan_calibration(trained, tmp_path):
    model, splits = trained
    export_onnx(model, splits["val"][:4][0], tmp_path / "fp32.onnx")
    with pytest.raises(DataError, match="calibration set is empty"):
        quantize(
            tmp_path / "fp32.onnx", Int8StaticConfig(), out=tmp_path / "q.onnx", calibration=[]
        )
    bad = splits["train"][:8][0].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="calibration batch 0 holds NaN"):
        quantize(
            tmp_path / "fp32.onnx", Int8StaticConfig(), out=tmp_path / "q.onnx", calibration=[bad]
        )
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_dispatches_by_config_type(tmp_path):
    with pytest.raises(ConfigError, match="no quantization scheme for config type dict"):
        quantize(tmp_path / "x.onnx", {"bits": 8}, out=tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match="unknown calibration 'kl'"):
        Int8StaticConfig(calibration="kl")


def test_dynamic_int8_on_a_linear_model_from_pytorch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval()
    x = torch.randn(8, 64)
    q = quantize(model, Int8DynamicConfig(), out=tmp_path / "dyn.onnx", example=x)
    got = ort_session(q.path).run(None, {"input": x.numpy()})[0]
    ref = model(x).detach().numpy()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99
    import onnx

    assert "MatMulInteger" in {
        n.op_type for n in onnx.load(str(q.path)).graph.node
    } or "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(q.path)).graph.node}


@pytest.mark.slow
def test_pt2e_static_int8_in_pytorch_keeps_accuracy(trained):
    from core.compress.quantize import Int8PT2EConfig

    model, splits = trained
    calib = [splits["train"][i : i + 32][0] for i in range(0, 128, 32)]
    q = quantize(model, Int8PT2EConfig(), out=None, calibration=calib, example=splits["val"][:4][0])
    x, y = splits["test"][:]
    with torch.no_grad():
        q_acc = (q.module(x).argmax(1) == y).float().mean().item()
        f_acc = (model(x).argmax(1) == y).float().mean().item()
    assert q_acc >= f_acc - 0.02
    assert any("quantize_per_tensor" in str(n.target) for n in q.module.graph.nodes)
    q.module.eval()  # converted modules accept the usual calls


@pytest.mark.slow
def test_qat_fine_tunes_through_the_trainer_then_converts(trained):
    import copy

    from core.compress.quantize import convert_qat, prepare_qat

    model, splits = trained
    qat = prepare_qat(copy.deepcopy(model), splits["train"][:4][0])
    cfg = TrainerConfig(
        max_epochs=1,
        batch_size=32,
        progress="off",
        optimizer={"name": "sgd", "lr": 1e-4, "momentum": 0.9},
    )
    trainer = Trainer(qat, cfg, metrics={"accuracy": accuracy})
    trainer.fit(splits["train"])
    assert trainer.evaluate(splits["test"])["val/accuracy"] > 0.9
    converted = convert_qat(qat)
    x, y = splits["test"][:]
    with torch.no_grad():
        assert (converted(x).argmax(1) == y).float().mean().item() > 0.9


def test_vnni_detection_reads_cpu_flags():
    assert not cpu_has_vnni("flags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert cpu_has_vnni("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni("flags\t\t: avx2 avx_vnni\n")
    assert not cpu_has_vnni("model name: avx512_vnni-like marketing text\n")
    assert Int8StaticConfig(reduce_range="auto").resolved_reduce_range() == (not cpu_has_vnni())


def test_interleaved_latency_times_every_peer_in_rotating_blocks():
    import time

    from core.compress.report import interleaved_latency

    order: list[str] = []

    def call(name, pause):
        def fn():
            order.append(name)
            time.sleep(pause)

        return fn

    lat = interleaved_latency(
        {"a": call("a", 0.0), "b": call("b", 0.004), "c": call("c", 0.0)},
        rounds=3,
        block=2,
        settle=1,
    )
    assert set(lat) == {"a", "b", "c"} and lat["b"] >= 0.004 > lat["a"]
    assert [order.count(n) for n in "abc"] == [9, 9, 9]  # 3 rounds x (1 settle + 2 timed)
    # each round runs every peer as one block of 3 calls, starting one further along each time
    assert "".join(order) == "aaabbbccc" + "bbbcccaaa" + "cccaaabbb"


def test_weights_stored_int8_for_ops_that_compute_in_float(tmp_path):
    """``store_weights_int8``: a ConvTranspose (no INT8 kernel in ONNX Runtime) and a Conv
    keep computing in float from INT8-stored weights; the file loses most of
    their weight bytes, the output moves by no more than INT8 weights allow, and a weight two
    nodes share is left alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from core.compress.quantize import store_weights_int8

    torch.manual_seed(0)

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv3d(2, 16, 3, padding=1)
            self.up = nn.ConvTranspose3d(16, 8, 2, stride=2)

        def forward(self, x):
            return self.up(torch.relu(self.down(x)))

    x = torch.randn(1, 2, 4, 8, 8)
    path = tmp_path / "up.onnx"
    net = Up().eval()
    export_onnx(net, x, path)
    ref = ort_session(path).run(None, {"input": x.numpy()})[0]
    before = path.stat().st_size
    changed = store_weights_int8(path, ("Conv", "ConvTranspose"))
    g = onnx.load(str(path)).graph
    weight_bytes = 4 * (net.down.weight.numel() + net.up.weight.numel())
    assert len(changed) == 2 and before - path.stat().st_size > 0.6 * weight_bytes
    assert {i.data_type for i in g.initializer if len(i.dims) == 5} == {TensorProto.INT8}
    assert [n.op_type for n in g.node].count("DequantizeLinear") == 2
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    err = np.abs(got - ref).max()
    assert 0 < err < 0.02 * np.abs(ref).max()
    assert store_weights_int8(path, ("Gemm",)) == []  # nothing of that type: unchanged

    # one weight feeding two convolutions is not rewritten
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    shared = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Conv", ["x", "w"], ["h"]),
                helper.make_node("Conv", ["h", "w"], ["y"]),
            ],
            "shared",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
            [w],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.save(shared, str(tmp_path / "shared.onnx"))
    assert store_weights_int8(tmp_path / "shared.onnx", ("Conv",)) == []
