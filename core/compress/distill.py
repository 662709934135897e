"""Knowledge distillation through ``core.train``.

``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
       + hint_weight * sum MSE(adapter(f_s), f_t)``

(Hinton et al. 2015; FitNets hints, Romero et al. 2015.) :class:`Distiller` wraps a student
and a frozen teacher; hint layers are given as ``(student module, teacher module)`` name
pairs, and a 1x1 conv (or linear) adapter maps student features to the teacher's width when
they differ. :class:`DistillationTrainer` is a :class:`~core.train.Trainer` whose loss is the
above; train the ``Distiller`` with it, then deploy ``distiller.student``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.train import Trainer


@dataclass
class DistillConfig:
    """Distillation loss settings."""

    temperature: float = 4.0  # softens both distributions; gradients scale by T^2
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha for the hard labels
    hint_weight: float = 0.0  # weight of the feature (hint) loss
    hints: tuple[tuple[str, str], ...] = ()  # (student module, teacher module) pairs

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("distillation temperature must be > 0", fix="use e.g. 4.0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("distillation alpha must lie in [0, 1]", fix="use e.g. 0.7")
        self.hints = tuple(tuple(h) for h in self.hints)  # type: ignore[misc]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """Temperature-scaled KL to the teacher plus cross-entropy to the labels."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    hard = F.cross_entropy(student_logits, targets)
    return alpha * soft + (1 - alpha) * hard


class Distiller(nn.Module):
    """Student + frozen teacher (+ hint adapters). ``forward`` is the student's."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        config: DistillConfig | None = None,
        example: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config or DistillConfig()
        self.student = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        self._feats: dict[str, torch.Tensor] = {}
        for i, (s_name, t_name) in enumerate(self.config.hints):
            student.get_submodule(s_name).register_forward_hook(self._keep(f"s{i}"))
            teacher.get_submodule(t_name).register_forward_hook(self._keep(f"t{i}"))
        if self.config.hints:
            if example is None:
                raise ConfigError(
                    "hint distillation needs an example input to size the adapters",
                    fix="pass example=<one batch>",
                )
            with torch.no_grad():
                student.eval()(example)
                teacher(example)
            student.train()
            for i in range(len(self.config.hints)):
                fs, ft = self._feats[f"s{i}"], self._feats[f"t{i}"]
                if fs.shape[1] != ft.shape[1]:
                    self.adapters[str(i)] = (
                        nn.Conv2d(fs.shape[1], ft.shape[1], 1)
                        if fs.dim() == 4
                        else nn.Linear(fs.shape[-1], ft.shape[-1])
                    )

    def _keep(self, key: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            self._feats[key] = out

        return hook

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher always runs in inference mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def hint_loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for i in range(len(self.config.hints)):
            fs, ft = self._feats[f"s{i}"], self._feats[f"t{i}"]
            if str(i) in self.adapters:
                fs = self.adapters[str(i)](fs)
            if fs.shape[2:] != ft.shape[2:]:
                fs = F.interpolate(fs, size=ft.shape[2:], mode="bilinear", align_corners=False)
            total = total.to(fs.device) + F.mse_loss(fs, ft.detach())
        return total


class DistillationTrainer(Trainer):
    """Trains a :class:`Distiller`: soft teacher targets, hard labels and optional hints."""

    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        distiller: Distiller = self.model  # type: ignore[assignment]
        inputs, targets = batch[0], batch[1]
        student_out = model(inputs)
        with torch.no_grad():
            teacher_out = distiller.teacher(inputs)
        cfg = distiller.config
        loss = distillation_loss(student_out, teacher_out, targets, cfg.temperature, cfg.alpha)
        if cfg.hint_weight > 0 and cfg.hints:
            loss = loss + cfg.hint_weight * distiller.hint_loss()
        return loss, student_out, targets
