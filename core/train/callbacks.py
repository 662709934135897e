"""Trainer callbacks: a small, fixed event set.

Events, in the order a run sees them (every hook receives the trainer first):

===================  ============================================================
``on_fit_start``     after set-up and resume, before the first step
``on_epoch_start``   ``(epoch)`` before an epoch's first batch
``on_step_end``      ``(step, logs)`` after every optimizer step (skipped ones too);
                     ``logs`` holds loss, lr, grad_norm, loss_scale, skipped,
                     samples_per_s
``on_eval_end``      ``(metrics)`` after each evaluation, e.g. ``{"val/accuracy": .97}``
``on_checkpoint``    ``(path)`` after a checkpoint directory has been written
``on_epoch_end``     ``(epoch, metrics)`` after an epoch (and its evaluation)
``on_fit_end``       ``(result)`` once, when training ends normally
``on_exception``     ``(exc)`` when training ends by an exception
===================  ============================================================

A callback stops training by setting ``trainer.should_stop = True``. Callbacks run on every
rank; ones that write (logging, progress, tracking) check ``trainer.is_main``. Not here:
checkpointing and early stopping, which the Trainer does itself from its config.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from core.train.result import FitResult

# A core.train.Trainer. Not imported: the trainer imports this module, and imports go one way.
Trainer = Any

log = logging.getLogger("core.train")


class Callback:
    """Base class; override the events you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None: ...
    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Any) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None: ...
    def on_exception(self, trainer: Trainer, exc: BaseException) -> None: ...


class LossTrace(Callback):
    """Keeps every step's training loss; :meth:`summary` gives the mean of the first and the
    last ``n`` steps (the figures model cards quote)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def summary(self, n: int = 20) -> dict[str, float | None]:
        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 4) if xs else None

        return {f"loss_first_{n}": mean(self.losses[:n]), f"loss_last_{n}": mean(self.losses[-n:])}


class EpochSetter(Callback):
    """Calls ``dataset.set_epoch(epoch)`` as each epoch starts, so a dataset that draws its
    augmentation or patches from ``(seed, epoch, index)`` gives other samples every epoch and
    the same ones on a resumed run."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class ProgressCallback(Callback):
    """A rich progress bar (loss, lr, samples/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, mode: str = "auto") -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self._progress: Any = None
        self._task: Any = None
        self._last_log = 0.0
        self._t0 = 0.0
        self._step0 = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.global_step
        if not trainer.is_main or self.mode != "rich":
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=trainer.total_steps, completed=trainer.global_step, stats=""
        )

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        rate = logs.get("samples_per_s", 0.0)
        stats = (
            f"loss {logs['loss']:.4f}  lr {logs['lr']:.2e}  "
            f"{rate:.{0 if rate >= 10 else 2}f} samples/s"
        )
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
        elif self.mode == "plain" and (
            step % trainer.config.log_every_n_steps == 0 or step == trainer.total_steps
        ):
            elapsed = time.perf_counter() - self._t0
            done = step - self._step0
            eta = elapsed / done * (trainer.total_steps - step) if done > 0 else 0.0
            log.info(
                "step %d/%d  %s  elapsed %s  ETA %s",
                step,
                trainer.total_steps,
                stats,
                _clock(elapsed),
                _clock(eta),
            )

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.is_main and self.mode != "off":
            text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            if self._progress is not None:
                self._progress.console.print(f"epoch {trainer.epoch}: {text}")
            else:
                log.info("epoch %d: %s", trainer.epoch, text)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self._stop()


def _clock(seconds: float) -> str:
    """``1:05`` for 65 s, ``1:02:05`` past an hour."""
    m, sec = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class MLflowCallback(Callback):
    """Track params, per-step and per-epoch metrics and artifacts in MLflow (rank 0 only).

    Uses ``$MLFLOW_TRACKING_URI`` when set, else a local SQLite store under the data root
    (:func:`core.paths.default_tracking_uri`), so it works offline with nothing to start.
    Metrics are sent in batches every ``log_every_n_steps`` steps to keep overhead low.
    A resumed run continues the same MLflow run.
    """

    def __init__(
        self, experiment: str, run_name: str | None = None, tracking_uri: str | None = None
    ) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri
        self.client: Any = None
        self.run_id: str | None = None
        self._pending: list[Any] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from mlflow.tracking import MlflowClient

        from core.paths import default_artifact_location, default_tracking_uri

        uri = self.tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = default_artifact_location() if uri.startswith("sqlite") else None
            exp_id = self.client.create_experiment(self.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        resumed = trainer.resume_info.get("mlflow_run_id")
        if resumed:
            self.run_id = resumed
        else:
            run = self.client.create_run(exp_id, run_name=self.run_name)
            self.run_id = run.info.run_id
            params = _flat_params(trainer.config.to_dict())
            from mlflow.entities import Param

            self.client.log_batch(
                self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
            )
        trainer.extra_meta["mlflow_run_id"] = self.run_id

    def _metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._pending.append(
            Metric(key.replace("/", "_"), float(value), int(time.time() * 1000), step)
        )

    def _flush(self) -> None:
        if self._pending and self.client is not None:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if self.client is None:
            return
        if step % trainer.config.log_every_n_steps == 0:
            for k, v in logs.items():
                self._metric(f"train/{k}", v, step)
            self._flush()

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.client is None:
            return
        for k, v in metrics.items():
            self._metric(k, v, trainer.global_step)
        self._flush()

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.client is None:
            return
        self._flush()
        self.client.log_dict(self.run_id, result.summary(), "fit_result.json")
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        if self.client is not None:
            self._flush()
            self.client.set_terminated(self.run_id, "FAILED")


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{key}."))
        else:
            out[key] = v
    return out
