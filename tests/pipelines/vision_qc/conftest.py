"""A detector trained once per test session (per xdist worker; the modules that use it share an
``xdist_group``), on one synthetic surface with two defect classes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.train import TrainerConfig, bf16_is_fast
from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.synth import write_dataset
from pipelines.vision_qc.train import TrainConfig, train

TRAINED_CLASSES = ("hole", "stain")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("vqc")
    root = write_dataset(
        SynthConfig(
            out_dir=str(base / "set"),
            surfaces=("brushed_metal",),
            defects=TRAINED_CLASSES,
            n_train_good=16,
            n_test_good=8,
            n_test_per_defect=8,
            size=256,
        )
    )
    data = DataConfig(root=str(root), classes=TRAINED_CLASSES)
    cfg = TrainConfig(
        data=data,
        trainer=TrainerConfig(
            max_epochs=30,
            batch_size=4,
            precision="bf16" if bf16_is_fast() else "fp32",
            progress="off",
            eval_every_n_epochs=0,
            grad_clip_norm=10.0,
            optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
            schedule={"name": "cosine", "warmup_steps": 10},
        ),
        out_dir=str(base / "model"),
    )
    _, model_dir = train(cfg)
    return SimpleNamespace(
        root=root, data=data, model_dir=model_dir, base=base, classes=TRAINED_CLASSES
    )
