"""Knowledge distillation from a trained digits CNN into a smaller one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.compress.distill import DistillationTrainer, DistillConfig, Distiller, distillation_loss
from core.errors import ConfigError
from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Trainer, TrainerConfig, accuracy, seed_everything


def test_loss_is_cross_entropy_at_alpha_0_and_zero_kl_for_identical_logits():
    s = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    torch.testing.assert_close(
        distillation_loss(s, torch.randn(8, 10), y, alpha=0.0), F.cross_entropy(s, y)
    )
    assert distillation_loss(s, s.clone(), y, alpha=1.0).abs() < 1e-6
    assert distillation_loss(s, -s, y, alpha=1.0) > 0.1


@pytest.mark.slow
def test_student_learns_from_teacher_with_hints():
    splits = load_digits_splits(8, seed=0)
    seed_everything(0)
    teacher = DigitsCNN(32)
    cfg = TrainerConfig(max_epochs=4, batch_size=32, progress="off", optimizer={"lr": 3e-3})
    Trainer(teacher, cfg, metrics={"accuracy": accuracy}).fit(splits["train"])
    seed_everything(1)
    student = DigitsCNN(8)
    distiller = Distiller(
        student,
        teacher,
        DistillConfig(hint_weight=0.5, hints=(("features.8", "features.8"),)),
        example=splits["train"][:4][0],
    )
    assert "0" in distiller.adapters  # 16 -> 64 channels needs an adapter
    before = [p.clone() for p in teacher.parameters()]
    trainer = DistillationTrainer(distiller, cfg, metrics={"accuracy": accuracy})
    trainer.fit(splits["train"])
    acc = trainer.evaluate(splits["test"])["val/accuracy"]
    assert acc > 0.9
    assert all(
        torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True)
    )  # frozen
    assert not distiller.teacher.training


def test_invalid_settings_name_the_fix():
    with pytest.raises(ConfigError, match="alpha must lie"):
        DistillConfig(alpha=2)
    with pytest.raises(ConfigError, match="needs an example input"):
        Distiller(DigitsCNN(8), DigitsCNN(8), DistillConfig(hints=(("head", "head"),)))
