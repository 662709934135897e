"""Training through core.train: patches, the model directory and its input contract, and bad
training folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.errors import ConfigError, DataError
from pipelines.medical_ct.model import ModelConfig, load_segmenter
from pipelines.medical_ct.synth import write_dataset
from pipelines.medical_ct.train import PatchDataset, TrainConfig, default_trainer, load_cases, train
from tests.pipelines.medical_ct.conftest import small_cfg

TINY = ModelConfig(filters=(4, 8, 16), roi=(16, 32, 32), spacing_mm=(2.5, 2.5, 2.5))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_train")
    write_dataset(
        small_cfg(out_dir=str(root), n_cases=2, nodules=(2, 2), diameter_mm=(10.0, 16.0), seed=11)
    )
    return root


def test_patches_follow_the_positive_fraction(data):
    cases = load_cases(data)
    pos = PatchDataset(cases, TINY, 12, pos=1.0, augment=False, seed=0)
    neg = PatchDataset(cases, TINY, 12, pos=0.0, augment=False, seed=0)
    for i in range(12):
        x, y = pos[i]
        assert x.shape == (1, 16, 32, 32) and y.dtype == torch.int64
        assert y.sum() > 0  # centred on a nodule voxel (shifted inside the volume at its edge)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert sum(int(neg[i][1][0, 8, 16, 16]) for i in range(12)) <= 1  # background centres
    a, b = pos[3], pos[3]
    assert torch.equal(a[0], b[0])  # same (seed, epoch, index), same patch
    pos.set_epoch(1)
    assert not torch.equal(pos[3][0], a[0])


def test_train_writes_a_model_that_separates_nodules(data, tmp_path):
    tr = default_trainer()
    tr.max_steps, tr.progress, tr.precision = 50, "off", "fp32"
    tr.optimizer.lr = 1e-2
    res, out = train(
        TrainConfig(
            data=str(data),
            out_dir=str(tmp_path / "m"),
            model=TINY,
            trainer=tr,
            patches_per_epoch=16,
        )
    )
    assert res.global_step == 50
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["spacing_mm"] == [2.5, 2.5, 2.5] and cfg["task"] == "medical_ct"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss_last_20"] < metrics["loss_first_20"]
    seg = load_segmenter(out)
    case = load_cases(data)[0]
    _, labels, prob = seg(case.volume)
    assert prob.shape == case.volume.shape and labels.shape == case.volume.shape
    inside = prob[case.mask > 0].mean()
    outside = prob[case.mask == 0].mean()
    assert inside > outside + 0.2, (inside, outside)


def test_bad_training_folders(data, tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        load_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no case folders"):
        load_cases(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(data / "case_000", bad / "case_000")
    shutil.copytree(data / "case_001", bad / "case_001")
    from pipelines.medical_ct.data import read_nifti, write_nifti

    m = read_nifti(bad / "case_001" / "mask.nii.gz")
    m.array = m.array[:-1]
    write_nifti(m, bad / "case_001" / "mask.nii.gz")
    with pytest.raises(
        DataError, match=r"1 case\(s\) cannot be used: mask grid .* does not match .*case_001"
    ):
        load_cases(bad)
    with pytest.raises(DataError, match=r"cases \['case_009'\] not found"):
        load_cases(bad, ("case_009",))
    with pytest.raises(ConfigError, match="roi"):
        ModelConfig(roi=(20, 64, 64))
