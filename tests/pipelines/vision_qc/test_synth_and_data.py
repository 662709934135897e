"""vision_qc synthetic data and readers: exact ground truth, determinism, and every bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from core.errors import ConfigError, DataError
from pipelines.vision_qc.config import SynthConfig
from pipelines.vision_qc.data import (
    boxes_from_mask,
    load_coco,
    load_mvtec,
    load_yolo,
    manifest,
    split,
)
from pipelines.vision_qc.synth import paste_defects, surface, write_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(
        out_dir=str(tmp_path_factory.mktemp("s") / "set"),
        surfaces=("brushed_metal", "pcb"),
        n_train_good=3,
        n_test_good=2,
        n_test_per_defect=2,
        size=128,
    )
    return write_dataset(cfg), cfg


def tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(synth, tmp_path):
    root, cfg = synth
    again = write_dataset(SynthConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "again")}))
    assert tree_digest(again) == tree_digest(root)
    other = write_dataset(
        SynthConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "other"), "seed": 1})
    )
    assert tree_digest(other) != tree_digest(root)


def test_mvtec_layout_boxes_match_the_coco_json(synth):
    root, cfg = synth
    coco = load_coco(root / "annotations.json")
    by_path = {s.path: s for s in coco.samples}
    for surf in cfg.surfaces:
        mv = load_mvtec(root / surf, classes=cfg.defects)
        assert len(mv.where("train")) == 3 and all(not s.defective for s in mv.where("train"))
        defective = [s for s in mv.samples if s.defective]
        assert len(defective) == 2 * len(cfg.defects)
        for s in defective:
            c = by_path[s.path]
            assert sorted(s.boxes) == sorted(c.boxes) and sorted(s.labels) == sorted(c.labels)
            assert set(s.labels) == {s.path.parent.name}


def test_every_defect_class_appears_with_tight_boxes(synth):
    root, _ = synth
    coco = json.loads((root / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {names[a["category_id"]] for a in coco["annotations"]} == set(names.values())
    assert all(a["area"] <= a["bbox"][2] * a["bbox"][3] for a in coco["annotations"])


def test_paste_defects_on_a_real_normal_image_returns_exact_masks():
    rng = np.random.default_rng(3)
    normal = (surface("cast_part", np.random.default_rng(0), 128) * 255).astype(np.uint8)
    img, inst = paste_defects(normal, rng, ["hole", "scratch"], n=2)
    assert len(inst) == 2 and img.shape == (128, 128, 3)
    changed = np.abs(img - normal / 255.0).max(axis=2) > 1e-6
    union = inst[0].mask | inst[1].mask
    assert changed.sum() > 0 and not (changed & ~union).any()  # nothing outside the masks moved
    for it in inst:
        assert boxes_from_mask(it.mask) == [[float(v) for v in it.box]]


def test_corrupt_image_unknown_class_and_bad_box_are_reported_by_file(synth, tmp_path):
    root, _ = synth
    work = tmp_path / "broken"
    shutil.copytree(root, work)
    victim = sorted((work / "pcb" / "test" / "hole").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated PNG
    with pytest.raises(DataError, match="unreadable image") as exc:
        load_mvtec(work / "pcb")
    assert victim.name in str(exc.value)
    coco = json.loads((work / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [120, 120, 50, 50]
    coco["categories"].append({"id": 99, "name": "smudge"})
    coco["annotations"][1]["category_id"] = 99
    (work / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError) as exc:
        load_coco(work / "annotations.json", classes=("scratch", "dent", "stain", "crack", "hole"))
    msg = str(exc.value)
    assert (
        "outside the 128x128 image" in msg
        and "unknown class 'smudge'" in msg
        and "unreadable image" in msg
    )


def test_missing_mask_and_empty_set_are_errors(synth, tmp_path):
    root, _ = synth
    work = tmp_path / "nomask"
    shutil.copytree(root / "pcb", work)
    next((work / "ground_truth" / "dent").iterdir()).unlink()
    with pytest.raises(DataError, match="missing mask ground_truth/dent/"):
        load_mvtec(work)
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_mvtec(tmp_path / "empty")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not an MVTec category folder"):
        load_mvtec(tmp_path / "plain")


def test_a_folder_of_categories_reads_every_category(synth):
    root, _ = synth
    both = load_mvtec(root)
    cats = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(cats) >= 2
    per_cat = [load_mvtec(root / c) for c in cats]
    assert len(both) == sum(len(d) for d in per_cat)
    assert {s.path.parent.parent.parent.name for s in both.samples} == set(cats)


def test_yolo_labels_round_trip_and_bad_lines(synth, tmp_path):
    root, _ = synth
    coco = load_coco(root / "annotations.json")
    classes = ("scratch", "dent", "stain", "crack", "hole")
    imgs, lbls = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    lbls.mkdir()
    picked = [s for s in coco.samples if s.defective][:3]
    for i, s in enumerate(picked):
        shutil.copy(s.path, imgs / f"{i}.png")
        lines = [
            f"{classes.index(lab)} {(b[0] + b[2]) / 2 / s.width} {(b[1] + b[3]) / 2 / s.height} "
            f"{(b[2] - b[0]) / s.width} {(b[3] - b[1]) / s.height}"
            for b, lab in zip(s.boxes, s.labels, strict=True)
        ]
        (lbls / f"{i}.txt").write_text("\n".join(lines))
    yolo = load_yolo(imgs, lbls, classes)
    for s, ref in zip(yolo.samples, picked, strict=True):
        np.testing.assert_allclose(s.boxes, ref.boxes, atol=1e-3)
        assert s.labels == ref.labels
    (lbls / "0.txt").write_text("7 0.5 0.5 0.1 0.1\nbroken line\n")
    with pytest.raises(DataError) as exc:
        load_yolo(imgs, lbls, classes)
    assert "0.txt:1: class index 7 outside 0..4" in str(
        exc.value
    ) and "0.txt:2: expected 'class cx cy w h'" in str(exc.value)


def test_manifest_and_seeded_stratified_split(synth):
    root, _ = synth
    ds = load_mvtec(root / "brushed_metal")
    m = manifest(ds, root)
    assert m["images"] == len(ds) and len(m["dataset_hash"]) == 64 and m["instances"]["hole"] >= 2
    a = split(ds.samples, 0.5, seed=0)
    b = split(ds.samples, 0.5, seed=0)
    assert [s.path for s in a[1]] == [s.path for s in b[1]]
    val_classes = {s.labels[0] if s.labels else "good" for s in a[1]}
    assert val_classes == {"good", "scratch", "dent", "stain", "crack", "hole"}


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="unknown surfaces"):
        SynthConfig(surfaces=("marble",))
    with pytest.raises(ConfigError, match="unknown defect classes"):
        SynthConfig(defects=("rust",))


def test_mask_boxes_one_per_component():
    m = np.zeros((20, 20), np.uint8)
    m[2:5, 3:8] = 255
    m[10:12, 10:19] = 1
    assert boxes_from_mask(m) == [[3.0, 2.0, 8.0, 5.0], [10.0, 10.0, 19.0, 12.0]]
