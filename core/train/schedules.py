"""Learning-rate schedules as multiplicative factors of the peak lr, per optimizer step.

* ``cosine``: linear warm-up from 0 over ``warmup_steps``, then cosine decay to
  ``min_lr_ratio`` at ``total_steps``.
* ``constant``: linear warm-up, then flat.
* ``step``: multiply by ``gamma`` every ``step_size`` steps.

Factors are pure functions of the step, wrapped in ``LambdaLR`` so the scheduler's state is
just its step counter (checkpointable as JSON).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from core.train.config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """The lr multiplier as a function of the optimizer step (0-based)."""
    warm = cfg.warmup_steps

    def warmup(step: int) -> float | None:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        return None

    if cfg.name == "constant":
        return lambda step: warmup(step) or 1.0
    if cfg.name == "step":
        return lambda step: cfg.gamma ** (step // cfg.step_size)

    def cosine(step: int) -> float:
        w = warmup(step)
        if w is not None:
            return w
        span = max(total_steps - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
