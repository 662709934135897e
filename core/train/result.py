"""What a finished ``Trainer.fit`` reports: :class:`FitResult`.

A leaf module, so that callbacks (which receive it) and the trainer (which makes it) both
import it without importing each other. Not here: the metrics themselves (``Trainer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitResult:
    """What a finished ``fit`` reports."""

    global_step: int
    epochs_completed: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    nonfinite_steps: int = 0
    stopped_early: bool = False
    preempted: bool = False
    elapsed_s: float = 0.0
    samples_per_s: float = 0.0
    comm_bytes_per_step: float = 0.0

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {
            "final_metrics": self.final_metrics
        }
