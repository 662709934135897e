"""Evaluation of a short training run, export/INT8 parity, the DefectDetector and tiling."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from core.artifacts import read_config
from core.errors import DataError, ModelLoadError
from core.models import load_model_dir
from pipelines.vision_qc.data import load_dataset
from pipelines.vision_qc.deploy import DeployConfig, deploy
from pipelines.vision_qc.evaluate import EvalConfig, evaluate
from pipelines.vision_qc.model import load_detector_net, postprocess
from pipelines.vision_qc.predict import DefectDetector, tile_origins
from pipelines.vision_qc.synth import paste_defects, surface
from pipelines.vision_qc.train import partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vqc_trained")]


@pytest.fixture(scope="module")
def evaluated(trained):
    rep = evaluate(
        trained.model_dir,
        EvalConfig(data=trained.data, out_dir=str(trained.base / "eval"), write_threshold=True),
    )
    return rep


@pytest.fixture(scope="module")
def deployed(trained, evaluated):
    parts = partition(load_dataset(trained.data), trained.data)
    rep = deploy(
        trained.model_dir,
        parts["train"],
        parts["test"],
        DeployConfig(out_dir=str(trained.base / "deploy"), calibration_images=16),
    )
    return rep


def test_short_training_lifts_map_well_above_chance_and_stores_the_threshold(trained, evaluated):
    rep = evaluated
    # chance: random boxes on 256 px images almost never reach IoU 0.5 (mAP@.5 ~ 0)
    assert rep.map50 > 0.4, rep
    assert rep.map < rep.map50
    assert rep.detection_rate > 0.7 and rep.false_alarm_rate < 0.5
    assert rep.anomaly_auroc is not None and rep.anomaly_auroc > 0.6
    cfg = read_config(trained.model_dir)
    assert cfg["threshold"] == pytest.approx(rep.threshold) and "F1" in cfg["threshold_rule"]
    metrics = json.loads((trained.base / "eval" / "metrics.json").read_text())
    assert metrics["map50"] == pytest.approx(rep.map50)
    assert {"pr_curves.png", "confusion_matrix.png", "predictions.png"} <= set(rep.plots)


def test_the_exported_graph_matches_torchvision_fcos(trained):
    fcos, _ = load_model_dir(trained.model_dir)
    net = load_detector_net(trained.model_dir)
    test = partition(load_dataset(trained.data), trained.data)["test"][:6]
    x = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(s.path).convert("RGB"), np.float32) / 255
            ).permute(2, 0, 1)
            for s in test
        ]
    )
    with torch.no_grad():
        ref = fcos(list(x))
        boxes, scores, anomaly = net(x)
    assert anomaly.shape == (len(test),) and (anomaly > 0).all()
    compared = 0
    for i, r in enumerate(ref):
        got = postprocess(boxes[i].numpy(), scores[i].numpy(), 0.05, max_det=50)
        assert len(got["scores"]) == len(r["scores"])
        np.testing.assert_allclose(got["scores"], r["scores"].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["boxes"], r["boxes"].numpy(), atol=1e-2)
        assert (got["labels"] == r["labels"].numpy()).all()
        compared += len(got["scores"])
    assert compared > 0


def test_onnx_and_int8_keep_parity_on_the_test_set(trained, deployed):
    rep = deployed
    v = {x.name: x for x in rep.variants}
    assert abs(v["fp32_onnx"].map50 - v["fp32_torch"].map50) < 1e-3
    assert v["fp32_onnx"].box_agreement > 0.99
    assert v["int8_onnx"].box_agreement > 0.8
    assert abs(rep.map50_drop) < 0.05
    assert json.loads((trained.base / "deploy" / "parity.json").read_text())["images"] == rep.images
    graph = onnx.load(str(trained.base / "deploy" / "int8" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and "DequantizeLinear" in ops
    # default scope backbone: the body and the FPN's 1x1 laterals read INT8 weights, the FPN's
    # 3x3 output convolutions and the head stay float
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv_w = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    int8_w = [w for w in conv_w if w in dq]
    assert any("inner_blocks" in w for w in int8_w) and any("body." in w for w in int8_w)
    assert not any("head." in w or "layer_blocks" in w for w in int8_w)
    assert any("head." in w for w in conv_w)
    cfg = read_config(trained.base / "deploy" / "int8")
    assert cfg["threshold"] == read_config(trained.model_dir)["threshold"]
    assert cfg["compression"][-1]["step"] == "quantize"


def test_int8_scope_picks_the_quantized_convolutions():
    from pipelines.vision_qc.deploy import _int8_layer

    names = ["body.conv1.weight", "fpn.inner_blocks.0.0.weight", "fpn.layer_blocks.1.0.weight"]
    names += ["fpn.extra_blocks.p6.weight", "head.classification_head.conv.0.weight"]
    picked = {s: [_int8_layer(n, s) for n in names] for s in ("backbone", "backbone+fpn", "all")}
    assert picked == {
        "backbone": [True, True, False, False, False],
        "backbone+fpn": [True, True, True, True, False],
        "all": [True] * 5,
    }
    with pytest.raises(Exception, match="unknown int8_scope"):
        DeployConfig(int8_scope="head")


def test_detector_takes_paths_arrays_and_pil_alike(trained, deployed):
    det = DefectDetector(deployed.int8_dir)
    s = next(x for x in partition(load_dataset(trained.data), trained.data)["test"] if x.defective)
    a = det.detect(s.path)
    b = det.detect(np.asarray(Image.open(s.path)))
    c = det.detect(Image.open(s.path))
    d = det.detect(s.path.read_bytes())
    assert a == b == c == d
    assert a["defective"] and a["detections"][0]["class"] in trained.classes
    x1, y1, x2, y2 = a["detections"][0]["bbox"]
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
    many = det.detect_batch([s.path, s.path])
    assert many[0] == many[1]
    # a batch of 2 runs other INT8 kernels than a batch of 1: the same boxes, and the anomaly
    # distance equal up to float rounding (it is reported to 4 decimals)
    assert {**many[0], "anomaly_score": 0} == {**a, "anomaly_score": 0}
    assert many[0]["anomaly_score"] == pytest.approx(a["anomaly_score"], rel=1e-4)


def test_bad_images_are_named_errors(trained, tmp_path):
    det = DefectDetector(trained.model_dir)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"not a readable image.*broken\.png"):
        det.detect(bad)
    with pytest.raises(DataError, match="image file not found"):
        det.detect(tmp_path / "missing.png")
    nan = np.full((64, 64, 3), np.nan, np.float32)
    with pytest.raises(DataError, match="NaN or infinity at image 0"):
        det.detect(nan)
    with pytest.raises(DataError, match="not an image"):
        det.detect(np.zeros((64, 64, 5), np.uint8))
    with pytest.raises(DataError, match=r"not \[0, 1\]"):
        det.detect(np.full((64, 64, 3), 255.0, np.float32))
    with pytest.raises(ModelLoadError, match="not a vision_qc model"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text(json.dumps({"task": "digits"}))
        DefectDetector(tmp_path / "other")


def test_tile_origins_cover_the_image_with_overlap():
    assert tile_origins(256, 256, 0.25) == [0]
    o = tile_origins(1000, 256, 0.25)
    assert o[0] == 0 and o[-1] == 1000 - 256
    assert all(b - a <= 256 * 0.75 + 1 for a, b in itertools.pairwise(o))


def test_tiling_finds_a_small_defect_that_a_downscaled_pass_misses(trained):
    rng = np.random.default_rng(7)
    big = np.zeros((1024, 1024, 3), np.float32)
    for ty in range(4):
        for tx in range(4):
            big[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256] = surface(
                "brushed_metal", np.random.default_rng([99, ty, tx]), 256
            )
    tile, inst = paste_defects(big[256:512, 512:768], rng, ["hole"], 1)
    big[256:512, 512:768] = tile
    x1, y1, x2, y2 = inst[0].box
    truth = np.array([x1 + 512, y1 + 256, x2 + 512, y2 + 256], np.float32)

    def found(result):
        for d in result["detections"]:
            b = np.array(d["bbox"])
            inter = np.clip(np.minimum(b[2:], truth[2:]) - np.maximum(b[:2], truth[:2]), 0, None)
            iou = inter.prod() / (
                (b[2:] - b[:2]).prod() + (truth[2:] - truth[:2]).prod() - inter.prod()
            )
            if iou >= 0.3 and d["class"] == "hole":
                return True
        return False

    det = DefectDetector(trained.model_dir)
    assert det.detect(big) == DefectDetector(trained.model_dir, tile=True).detect(big)  # auto tiles
    assert found(det.detect(big))
    assert not found(DefectDetector(trained.model_dir, tile=False).detect(big))


def test_optional_pruning_shrinks_the_backbone_and_still_exports(trained, tmp_path):
    parts = partition(load_dataset(trained.data), trained.data)
    rep = deploy(
        trained.model_dir,
        parts["train"],
        parts["test"][:6],
        DeployConfig(out_dir=str(tmp_path / "pruned"), prune_ratio=0.3, calibration_images=8),
    )
    step = read_config(tmp_path / "pruned" / "fp32")["compression"][-1]
    assert step["backbone_macs_after"] < 0.8 * step["backbone_macs_before"]
    # the pruned graph (with its re-fitted anomaly bank) runs in ONNX Runtime, fp32 and INT8
    det = DefectDetector(tmp_path / "pruned" / "int8").detect(parts["test"][0].path)
    assert det["anomaly_score"] is not None and det["anomaly_score"] > 0
    assert {v.name for v in rep.variants} == {"fp32_torch", "fp32_onnx", "int8_onnx"}
