"""The detector behind core.serve over real HTTP, and the vision-qc CLI end to end."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer
from pipelines.vision_qc.cli import app
from pipelines.vision_qc.data import load_dataset
from pipelines.vision_qc.predict import DefectDetector
from pipelines.vision_qc.serve import DefectPredictor, ServeLimits
from pipelines.vision_qc.train import partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vqc_trained")]


def wait_ready(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("never ready")


def png_bytes(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_http_endpoint_answers_multipart_and_base64_and_enforces_limits(trained):
    test = partition(load_dataset(trained.data), trained.data)["test"]
    defective = next(s for s in test if s.defective)
    data = defective.path.read_bytes()
    expected = DefectDetector(trained.model_dir).detect(defective.path)
    pred = DefectPredictor(
        trained.model_dir, "vqc", limits=ServeLimits(max_images=2, max_pixels=600 * 600)
    )
    app_ = create_app(pred, ServeConfig(max_body_bytes=2_000_000))
    with BackgroundServer(app_) as srv:
        wait_ready(srv.url)
        url = f"{srv.url}/v1/models/vqc/predict"
        r = httpx.post(url, files={"image": ("part.png", data, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "vqc" and body["predictions"] == [expected]
        assert expected["defective"] and expected["detections"][0]["class"] in trained.classes

        b64 = base64.b64encode(data).decode()
        r = httpx.post(url, json={"images": [b64, b64]}, timeout=60)
        assert r.status_code == 200 and r.json()["predictions"] == [expected, expected]

        bad = [
            ({"images": ["%%%not-base64"]}, ["body", "images", 0], "base64"),
            (
                {"image": base64.b64encode(b"plain text").decode()},
                ["body", "image"],
                "not a readable image",
            ),
            (
                {
                    "image": base64.b64encode(
                        png_bytes(np.zeros((32, 32, 3), np.uint8), "GIF")
                    ).decode()
                },
                ["body", "image"],
                "format GIF not accepted",
            ),
            (
                {"image": base64.b64encode(png_bytes(np.zeros((700, 700, 3), np.uint8))).decode()},
                ["body", "image"],
                "over the 360000 px limit",
            ),
            ({"images": [b64, b64, b64]}, ["body"], "at most 2 images"),
            ({"inputs": [1, 2]}, ["body"], "multipart/form-data"),
        ]
        for payload, loc, msg in bad:
            r = httpx.post(url, json=payload, timeout=60)
            assert r.status_code == 422, (payload, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"] == loc and msg in detail["msg"], detail

        r = httpx.post(url, files={"image": ("x.png", b"garbage", "image/png")}, timeout=60)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "files", "x.png"]
        r = httpx.post(url, files={"image": ("big.bin", b"\0" * 2_100_000)}, timeout=60)
        assert r.status_code == 413
        r = httpx.post(
            url,
            content=b"--x\r\nbroken",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 422


def test_cli_synth_train_evaluate_compress_predict(trained, tmp_path):
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(app, list(map(str, args)))
        return res

    small = tmp_path / "small"
    res = run(
        "synth",
        "--out",
        small,
        "--surfaces",
        "pcb",
        "--n-train-good",
        4,
        "--n-test-good",
        2,
        "--n-test-per-defect",
        1,
        "--seed",
        3,
    )
    assert res.exit_code == 0, res.output
    assert (small / "pcb" / "train" / "good" / "000.png").is_file() and (
        small / "annotations.json"
    ).is_file()
    # --epochs is exact: it overrides the default (and the file's) length in steps
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"trainer": {"max_steps": 1}}))
    res = run(
        "train",
        "--data",
        small,
        "--out",
        tmp_path / "m",
        "--epochs",
        1,
        "--batch-size",
        2,
        "--config",
        steps,
    )
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output and (tmp_path / "m" / "model.safetensors").is_file()

    # the well-trained session model for the rest
    ev = tmp_path / "eval"
    res = run(
        "evaluate",
        trained.model_dir,
        "--data",
        trained.root,
        "--classes",
        "hole,stain",
        "--out",
        ev,
    )
    assert res.exit_code == 0, res.output
    assert json.loads((ev / "metrics.json").read_text())["map50"] > 0.4
    dep = tmp_path / "deploy"
    res = run(
        "compress",
        trained.model_dir,
        "--data",
        trained.root,
        "--classes",
        "hole,stain",
        "--out",
        dep,
        "--max-drop",
        0.05,
    )
    assert res.exit_code == 0, res.output
    assert "int8_onnx" in res.output and (dep / "int8" / "model.onnx").is_file()

    test = [s for s in partition(load_dataset(trained.data), trained.data)["test"] if s.defective][
        :2
    ]
    out, drawn = tmp_path / "preds.json", tmp_path / "drawn"
    res = run("predict", dep / "int8", *[s.path for s in test], "--out", out, "--draw", drawn)
    assert res.exit_code == 0, res.output
    preds = json.loads(out.read_text())
    assert set(preds) == {str(s.path) for s in test}
    assert all(p["defective"] for p in preds.values())
    for s in test:
        with Image.open(drawn / f"{s.path.stem}.png") as im:
            assert im.size == (256, 256)
            # red boxes were drawn onto the part
            assert (np.asarray(im)[..., 0] == 255).any()

    res = run("predict", dep / "int8", tmp_path / "nope.png")
    assert res.exit_code == 2 and "error: image not found" in res.output
    res = run("train", "--data", tmp_path / "empty-root", "--out", tmp_path / "m2")
    assert res.exit_code == 2 and "error:" in res.output
