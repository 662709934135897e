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


def test_positive_patches_visit_small_nodules_as_often_as_large_ones():
    """A voxel drawn from all nodule voxels would centre ~99% of the patches on the big
    nodule here (its 4,169 voxels against 33); drawing the nodule first gives each half."""
    import numpy as np

    from pipelines.medical_ct.data import Volume
    from pipelines.medical_ct.train import Case

    z, y, x = np.mgrid[:40, :96, :96]
    mask = np.zeros((40, 96, 96), np.int16)
    mask[(z - 20) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 100] = 1  # r = 10 voxels
    mask[(z - 20) ** 2 + (y - 70) ** 2 + (x - 70) ** 2 <= 4] = 2  # r = 2 voxels
    hu = np.where(mask > 0, 0.0, -850.0).astype(np.float32)
    vol = Volume(hu, (2.5, 2.5, 2.5), (0.0, 0.0, 0.0), np.eye(3))
    ds = PatchDataset([Case("c", vol, mask, [])], TINY, 60, pos=1.0, augment=False, seed=0)
    small = big = 0
    for i in range(60):
        lab = ds[i][1][0].numpy()
        # the small nodule's patch holds its ~33 voxels and none of the big one's
        small += int(0 < lab.sum() < 60)
        big += int(lab.sum() >= 60)
    assert small + big == 60
    assert 18 <= small <= 42, (small, big)


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
