"""A customer's own data through the CLI and the Python API: config files merged over the
defaults, a folder that is nothing but a test set, an evaluation that leaves the model alone,
defaults under ``$DV_DATA_ROOT``, and the errors that used to point the wrong way."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from core.errors import DataError
from core.typedconfig import deep_merge
from pipelines.vision_qc.cli import app
from pipelines.vision_qc.data import _split_tag, load_coco, load_mvtec
from pipelines.vision_qc.train import TrainConfig, default_trainer


def run(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_a_partial_trainer_section_keeps_the_pipeline_defaults():
    cfg = TrainConfig(trainer={"max_epochs": 3, "optimizer": {"lr": 5e-4}})
    d = default_trainer()
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.optimizer.lr == 5e-4
    # before: batch 32, fp32, no clipping, no warm-up, no weight decay (TrainerConfig's own)
    assert cfg.trainer.batch_size == d.batch_size == 4
    assert cfg.trainer.precision == d.precision
    assert cfg.trainer.grad_clip_norm == 10.0
    assert cfg.trainer.optimizer.weight_decay == 1e-4 and cfg.trainer.optimizer.name == "adamw"
    assert cfg.trainer.schedule.warmup_steps == 20


def test_deep_merge_merges_sections_and_replaces_the_rest():
    base = {"a": 1, "t": {"x": 1, "o": {"lr": 1, "wd": 2}}, "l": [1, 2]}
    got = deep_merge(base, {"t": {"o": {"lr": 9}}, "l": [3]})
    assert got == {"a": 1, "t": {"x": 1, "o": {"lr": 9, "wd": 2}}, "l": [3]}
    assert base["t"]["o"]["lr"] == 1  # the base is not changed


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("test/a.png", "test"),
        ("part/test/crack/b.png", "test"),
        ("train/good/c.png", "train"),
        ("contest/d.png", "train"),
        ("test.png", "train"),
        ("x\\test\\e.png", "test"),
    ],
)
def test_split_tag_reads_a_test_folder_at_any_depth(name, tag):
    assert _split_tag(name) == tag


def _coco(tmp_path, boxes):
    from PIL import Image

    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "a.png")
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]
    (tmp_path / "annotations.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
                "annotations": anns,
                "categories": [{"id": 1, "name": "hole"}],
            }
        )
    )
    return tmp_path / "annotations.json"


def test_an_inverted_box_is_called_inverted_not_outside(tmp_path):
    with pytest.raises(DataError) as e:
        load_coco(_coco(tmp_path, [[40, 10, -20, 8]]), classes=("hole",))
    assert "inverted or empty" in str(e.value) and "outside" not in str(e.value)
    with pytest.raises(DataError, match="outside the 64x64 image"):
        load_coco(_coco(tmp_path, [[50, 10, 30, 8]]), classes=("hole",))


def test_an_mvtec_read_of_a_coco_folder_suggests_format_coco(tmp_path):
    _coco(tmp_path, [[4, 4, 8, 8]])
    with pytest.raises(DataError) as e:
        load_mvtec(tmp_path)
    assert "--format coco" in str(e.value)
    res = run("evaluate", tmp_path / "missing-model", "--data", tmp_path)
    assert res.exit_code == 2 and "--format coco" in res.output


def test_default_paths_live_under_dv_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "root"))
    res = run(
        "synth",
        "--surfaces",
        "pcb",
        "--n-train-good",
        1,
        "--n-test-good",
        1,
        "--n-test-per-defect",
        1,
        "--size",
        256,
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "root" / "vision_qc" / "synth" / "annotations.json").is_file()


def _dedicated_test_set(trained, dest):
    """The trained set's test images alone, as a COCO folder whose files sit in ``test/``."""
    coco = json.loads((trained.root / "annotations.json").read_text())
    keep = [im for im in coco["images"] if "/test/" in im["file_name"]]
    ids = {im["id"] for im in keep}
    for im in keep:
        new = "test/" + im["file_name"].replace("/", "_")
        (dest / "test").mkdir(parents=True, exist_ok=True)
        shutil.copy(trained.root / im["file_name"], dest / new)
        im["file_name"] = new
    coco["images"] = keep
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (dest / "annotations.json").write_text(json.dumps(coco))
    return len(keep)


@pytest.mark.slow
@pytest.mark.xdist_group("vqc_trained")
def test_a_dedicated_coco_test_set_is_scored_whole_and_leaves_the_model_alone(trained, tmp_path):
    """``--test-set``: every image is scored (not 15% of them), no training images are needed,
    the model's stored threshold is used, and the model directory is not touched unless
    ``--write-threshold`` is given. The data section comes from ``--config``."""
    model = tmp_path / "model"
    shutil.copytree(trained.model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    n = _dedicated_test_set(trained, tmp_path / "set")
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"data": {"classes": ["hole", "stain"]}, "target_far": 0.05}))
    ev = tmp_path / "eval"
    res = run(
        "evaluate", model, "--data", tmp_path / "set", "--format", "coco", "--test-set",
        "--config", cfg, "--out", ev,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["images"] == n  # the whole folder, not a 15% share
    assert "stored threshold" in metrics["threshold_rule"] and "stored threshold" in res.output
    assert set(metrics["per_class_ap50"]) == {"hole", "stain"}
    assert metrics["map50"] > 0.4
    after = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    assert after == before and "model directory unchanged" in res.output

    # a stage's config file with another stage's key: one line naming it, exit 2
    res = run("compress", model, "--data", tmp_path / "set", "--format", "coco", "--config", cfg)
    assert res.exit_code == 2 and "unknown config key target_far" in res.output
    # compress on a set with no training images calibrates on the held-out ones
    dcfg = tmp_path / "deploy.json"
    dcfg.write_text(json.dumps({"data": {"classes": ["hole", "stain"]}, "calibration": "minmax"}))
    res = run(
        "compress", model, "--data", tmp_path / "set", "--format", "coco", "--test-set",
        "--config", dcfg, "--out", tmp_path / "deploy", "--max-drop", 0.2,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"calibrating on the {n} held-out images" in res.output

    # with validation images and --write-threshold, the threshold is chosen and stored
    res = run(
        "evaluate", model, "--data", trained.root, "--classes", "hole,stain",
        "--out", tmp_path / "eval2", "--write-threshold", "--rule", "far",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stored = json.loads((model / "config.json").read_text())
    assert stored["threshold_rule"].startswith("far") or "false-alarm" in stored["threshold_rule"]
    assert (model / "config.json").read_bytes() != before["config.json"]


def test_train_keeps_the_config_files_data_section(tmp_path):
    """``vision-qc train --config`` used to replace the file's data section with the CLI's
    defaults: the held-out share and the COCO JSON path could not be set. One epoch at batch 1
    on a 6-image COCO set: steps = training images, so the holdout share shows in the count."""
    res = run(
        "synth", "--out", tmp_path / "s", "--surfaces", "pcb", "--n-train-good", 2,
        "--n-test-good", 1, "--n-test-per-defect", 1, "--size", 256,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    (tmp_path / "s" / "labels.json").write_text(json.dumps(coco))
    n = len(coco["images"])
    cfg = tmp_path / "train.json"
    data = {
        "root": str(tmp_path / "s"),
        "format": "coco",
        "holdout_fraction": 0.5,
        "extra": {"json": str(tmp_path / "s" / "labels.json")},
    }
    cfg.write_text(json.dumps({"data": data, "trainer": {"max_epochs": 1, "batch_size": 1}}))
    res = run("train", "--config", cfg, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    from pipelines.vision_qc.config import DataConfig
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.train import partition

    dc = DataConfig(**data)
    n_train = len(partition(load_dataset(dc), dc)["train"])
    assert n_train < n  # the 0.5 holdout share really held images out
    assert f"trained {n_train} steps" in res.output


def test_16_bit_images_are_scaled_to_the_full_range_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from pipelines.vision_qc.predict import load_image
    from pipelines.vision_qc.train import image_tensor

    ramp = np.tile(np.linspace(0, 65535, 64), (64, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # a 16-bit grayscale PNG
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # PIL reads it as 16/32-bit integers
    got = load_image(tmp_path / "g16.png")
    # before: PIL's convert("RGB") clipped at 255, so 99.6% of these pixels came out white
    assert (got > 0.99).mean() < 0.05 and 0.45 < got.mean() < 0.55
    t = image_tensor(tmp_path / "g16.png", 64)  # training reads it the same way
    assert abs(float(t.mean()) - float(got.mean())) < 0.01
    twelve = (ramp // 16).astype(np.uint16)  # a 12-bit sensor stored in 16 bits
    Image.fromarray(twelve).save(tmp_path / "g12.png")
    assert load_image(tmp_path / "g12.png").max() > 0.99
    arr = load_image(twelve)  # a uint16 array is data too, not "a float image"
    assert arr.dtype == np.float32 and arr.max() > 0.99 and 0.45 < arr.mean() < 0.55
    with pytest.raises(DataError, match="integer image of dtype int32"):
        load_image(ramp.astype(np.int32))


def test_a_one_pixel_image_file_is_refused_not_scored(tmp_path):
    from PIL import Image

    from pipelines.vision_qc.predict import load_image

    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(DataError, match="1x1 px, smaller than 8x8"):
        load_image(tmp_path / "dot.png")
    with pytest.raises(DataError, match="smaller than 8x8"):
        load_image((tmp_path / "dot.png").read_bytes())


def test_third_party_info_lines_stay_out_of_cli_output(capsys):
    import logging

    from core.cliutil import setup_logging

    setup_logging(False)
    logging.getLogger("onnxruntime.quantization").info("Quantization parameters for tensor x")
    logging.getLogger("pipelines.vision_qc.deploy").info("exported fp32")
    logging.getLogger("onnx_ir").warning("a real warning")
    err = capsys.readouterr().err
    assert "Quantization parameters" not in err
    assert "exported fp32" in err and "a real warning" in err


@pytest.mark.slow
@pytest.mark.xdist_group("vqc_trained")
def test_a_large_part_keeps_more_defects_than_one_views_cap(trained):
    """The detection cap applies per view (whole image, each tile), not after the merge: nine
    copies of a defective part side by side keep more boxes than one view's cap."""
    import numpy as np

    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.predict import DefectDetector, load_image
    from pipelines.vision_qc.train import partition

    part = next(s for s in partition(load_dataset(trained.data), trained.data)["test"] if s.boxes)
    big = np.tile(load_image(part.path), (3, 3, 1))  # 768 x 768, nine copies
    det = DefectDetector(trained.model_dir, tile=True)
    det.max_det = 3
    raw = det.raw_batch([big])[0]
    assert len(raw["boxes"]) > 3  # before: cut to 3 after the tiles were merged


@pytest.mark.slow
@pytest.mark.xdist_group("vqc_trained")
def test_predict_on_a_folder_with_a_corrupt_image_predicts_the_rest(trained, tmp_path):
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.train import partition

    folder = tmp_path / "parts"
    folder.mkdir()
    good = partition(load_dataset(trained.data), trained.data)["test"][:3]
    for k, s in enumerate(good):
        shutil.copy(s.path, folder / f"{k}.png")
    (folder / "1b-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    out = tmp_path / "preds.json"
    res = run("predict", trained.model_dir, folder, "--out", out)
    assert res.exit_code == 2
    assert "1 of 4 images could not be read" in res.output and "1b-broken.png" in res.output
    preds = json.loads(out.read_text())
    assert len(preds) == 4 and "error" in preds[str(folder / "1b-broken.png")]
    assert all("detections" in preds[str(folder / f"{k}.png")] for k in range(3))


@pytest.mark.slow
@pytest.mark.xdist_group("vqc_trained")
def test_the_readme_summary_shows_what_detect_returns(trained):
    from pathlib import Path

    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.predict import DefectDetector

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    summary = readme.split("### `pipelines/vision_qc`", 1)[1].split("```", 1)[0]
    out = DefectDetector(trained.model_dir).detect(load_dataset(trained.data).samples[0].path)
    assert isinstance(out, dict) and "Images of parts in" in summary
    for key in out:
        assert f'"{key}"' in summary, key
    for key in out["detections"][0] if out["detections"] else ("class", "score", "bbox"):
        assert f'"{key}"' in summary, key
