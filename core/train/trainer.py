"""The training engine: one ``Trainer`` for every pipeline.

``Trainer(model, TrainerConfig(...), loss_fn=..., metrics={...}).fit(train_set, val_set)``
runs epochs of micro-batches with gradient accumulation, mixed precision, clipping, an LR
schedule, evaluation, early stopping, EMA, checkpoints and tracking, on one process or as one
rank of a ``torchrun`` job (DDP or FSDP2).

Data: the Trainer takes *datasets*, not loaders, because exact resume needs to own the sample
order. Each epoch's order is a permutation seeded by ``(seed, epoch)`` (``DistributedSampler``,
also on one process), so a run resumed at batch ``i`` of epoch ``e`` sees exactly the batches
an uninterrupted run would. Batches are ``(inputs, targets)`` by default; override
:meth:`Trainer.compute_loss` for other shapes (detection, dict batches).

Exact resume: on CPU in fp32 with ``deterministic=True`` and ``num_workers=0`` (or augmentation
seeded per sample), a run killed at any point and resumed from its last checkpoint ends with
weights bit-identical to an uninterrupted run. SIGTERM (preemption) writes a checkpoint at the
next micro-batch, mid-accumulation included (gradients are saved), then returns.

Not here: model definitions, data formats, compression — see ``core.compress`` and the
pipelines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from core.errors import CheckpointError, ConfigError, DataError, DistributedError, NonFiniteError
from core.train import checkpoint as ckpt
from core.train.callbacks import Callback, MLflowCallback, ProgressCallback
from core.train.comm_hooks import CommHook, build_comm_hook
from core.train.config import TrainerConfig
from core.train.device import select_device
from core.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    init_distributed,
)
from core.train.optim import build_optimizer
from core.train.precision import autocast, make_scaler
from core.train.result import FitResult
from core.train.schedules import build_scheduler

log = logging.getLogger("core.train")

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


class _SkipSampler(Sampler[int]):
    """Yields a sampler's indices after dropping the first ``skip``."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of logits ``(N, C)`` against class indices ``(N,)``."""
    return (outputs.argmax(dim=-1) == targets).float().mean().item()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class Trainer:
    """Train, evaluate and predict with one configuration object.

    Args:
        model: the network (moved to the run's device).
        config: a :class:`~core.train.config.TrainerConfig`.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; cross-entropy by default.
        metrics: ``{name: fn(outputs, targets) -> float}`` computed over the whole eval set;
            logged as ``val/<name>`` (``val/loss`` is always there).
        callbacks: extra :class:`~core.train.callbacks.Callback` objects.
        collate_fn: passed to the DataLoaders.
        optimizer_factory: ``fn(params) -> Optimizer`` replacing ``config.optimizer``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig | None = None,
        *,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        metrics: dict[str, MetricFn] | None = None,
        callbacks: Sequence[Callback] = (),
        collate_fn: Callable[[list[Any]], Any] | None = None,
        optimizer_factory: Callable[[Any], torch.optim.Optimizer] | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        cfg = self.config
        self.device = select_device(cfg.device)
        self.dist: DistInfo = init_distributed(cfg.distributed.backend, self.device)
        if (
            cfg.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError(
                "precision 'bf16' needs a GPU with bfloat16 support", fix="use 'fp16'"
            )
        if cfg.ema_decay is not None and cfg.distributed.strategy == "fsdp" and self.dist.enabled:
            raise ConfigError(
                "EMA is not supported with FSDP", fix="set ema_decay=None or use strategy='ddp'"
            )
        self.model = model.to(self.device)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.metrics = dict(metrics or {})
        self.collate_fn = collate_fn
        self.optimizer_factory = optimizer_factory
        self.callbacks: list[Callback] = [ProgressCallback(cfg.progress)]
        if cfg.tracking == "mlflow":
            self.callbacks.append(MLflowCallback(cfg.experiment, cfg.run_name))
        self.callbacks.extend(callbacks)
        self._check_monitors()

        self.run_id: str | None = None  # set by fit(): new, or the resumed checkpoint's
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.micro_step = 0
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.nonfinite_total = 0
        self.nonfinite_consecutive = 0
        self.should_stop = False
        self.history: list[dict[str, float]] = []
        self.best_metric: float | None = None
        self.best_checkpoint: str | None = None
        self.last_checkpoint: str | None = None
        self.resume_info: dict[str, Any] = {}
        self.extra_meta: dict[str, Any] = {}
        self._es_best: float | None = None
        self._es_bad = 0
        self._pending_best = False
        self._preempt = threading.Event()

        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = make_scaler(cfg.precision, self.device)
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        self.comm_hook: CommHook | None = None
        self._wrapped: nn.Module = self.model
        self._forward_model: nn.Module = self.model

    # ------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluation and prediction use: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else self._forward_model

    def metric_names(self, prefix: str = "val") -> set[str] | None:
        """Names :meth:`evaluate` logs (``val/loss`` and ``val/<metric>``); None when a
        subclass overrides ``evaluate`` and the names cannot be known before it runs."""
        if type(self).evaluate is not Trainer.evaluate:
            return None
        return {f"{prefix}/loss", *(f"{prefix}/{name}" for name in self.metrics)}

    def _monitors(self) -> list[tuple[str, str]]:
        cfg = self.config
        out = []
        if cfg.checkpoint.monitor is not None:
            out.append(("checkpoint.monitor", cfg.checkpoint.monitor))
        if cfg.early_stopping is not None:
            out.append(("early_stopping.monitor", cfg.early_stopping.monitor))
        return out

    def _check_monitors(self) -> None:
        """A monitored name must be one evaluation logs: checked when the Trainer is built,
        not after the first epoch."""
        names = self.metric_names()
        if names is None:
            return
        for key, name in self._monitors():
            if name not in names:
                raise ConfigError(
                    f"{key} {name!r} is not a logged metric",
                    fix=f"use one of {sorted(names)}",
                )

    def _fire(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.config
        if cfg.distributed.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.fsdp import fully_shard

            # Shard large direct children as their own units (overlapping their all-gathers
            # with compute), then the root for everything left.
            for child in self.model.children():
                if sum(p.numel() for p in child.parameters()) >= 1_000_000:
                    fully_shard(child)
            fully_shard(self.model)
            self._wrapped = self.model
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            cap = cfg.distributed.bucket_cap_mb
            if cfg.distributed.comm_hook == "powersgd" and dist.get_backend() == "gloo":
                # PowerSGD chains its P and Q all-reduces from future callbacks; with several
                # buckets in flight, gloo ranks can issue them in different orders (a collective
                # mismatch). One bucket (after DDP's rebuild, inside PowerSGD's warm-up) keeps
                # them in order.
                cap = max(
                    cap,
                    sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20 + 1,
                )
            self._wrapped = DDP(self.model, device_ids=ids, bucket_cap_mb=cap)
            names = {id(p): n for n, p in self.model.named_parameters()}
            self.comm_hook = build_comm_hook(cfg.distributed, names, seed=cfg.seed)
            self.comm_hook.register(self._wrapped)  # "none" too: it counts the bytes
        self._forward_model = torch.compile(self._wrapped) if cfg.compile else self._wrapped
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            self.optimizer = self.optimizer_factory(params)
        else:
            self.optimizer = build_optimizer(params, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, max(self.total_steps, 1))
        if cfg.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            )

    def _sampler(self, dataset: Dataset, shuffle: bool) -> DistributedSampler:
        return DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=shuffle,
            seed=self.config.seed,
            drop_last=False,
        )

    def _loader(
        self,
        dataset: Dataset,
        *,
        shuffle: bool,
        epoch: int = 0,
        skip_batches: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        cfg = self.config
        sampler = self._sampler(dataset, shuffle)
        sampler.set_epoch(epoch)
        bs = batch_size or cfg.batch_size
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=_SkipSampler(sampler, skip_batches * bs),
            num_workers=cfg.num_workers,
            collate_fn=self.collate_fn,
            drop_last=drop_last,
            generator=gen,
            pin_memory=self.device.type == "cuda",
        )

    def _batches_per_epoch(self, dataset: Dataset) -> int:
        n = len(self._sampler(dataset, True))
        bs = self.config.batch_size
        return n // bs if self.config.drop_last else math.ceil(n / bs)

    # ------------------------------------------------------------------ state
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.config.distributed.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            return get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.model.state_dict()

    def _optim_state(self) -> dict[str, Any]:
        if self.config.distributed.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            return get_optimizer_state_dict(
                self.model,
                self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current position (all ranks call; rank 0 writes)."""
        cfg = self.config
        root = cfg.checkpoint_dir
        if root is None:
            return None
        grads = None
        if self.micro_step > 0:
            grads = {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None}
        per_rank = {
            "rng": _rng_state(),
            "comm_hook": self.comm_hook.state_dict() if self.comm_hook else None,
            "grads": grads,
        }
        ranks = all_gather_objects(per_rank)
        model_state = self._model_state()
        optim_state = self._optim_state()
        path = None
        if self.is_main:
            state = {
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ranks": ranks,
            }
            meta = {
                "run_id": self.run_id,
                "epoch": self.epoch,
                "global_step": self.global_step,
                "batch_in_epoch": self.batch_in_epoch,
                "micro_step": self.micro_step,
                "world_size": self.dist.world_size,
                "history": self.history,
                "best_metric": self.best_metric,
                "best_checkpoint": self.best_checkpoint,
                "es_best": self._es_best,
                "es_bad": self._es_bad,
                "nonfinite_total": self.nonfinite_total,
                "precision": cfg.precision,
                "grad_accum_steps": cfg.grad_accum_steps,
                "batch_size": cfg.batch_size,
                "config": cfg.to_dict(),
                **self.extra_meta,
            }
            ema_state = self.ema.state_dict() if self.ema is not None else None
            path = ckpt.save_checkpoint(root, self.global_step, model_state, state, meta, ema_state)
            if self._pending_best:
                self.best_checkpoint = str(path)
                self._pending_best = False
            self.last_checkpoint = str(path)
            keep = Path(self.best_checkpoint) if self.best_checkpoint else None
            ckpt.prune_checkpoints(root, cfg.checkpoint.keep_last, self.run_id, keep)
        self._pending_best = False
        barrier()
        if path is not None:
            self._fire("on_checkpoint", path)
        return path

    def _claim_checkpoint_dir(self) -> None:
        """Refuse a checkpoint directory that holds another run's checkpoints.

        A fresh run refuses any existing ``step-*``; a resumed run refuses checkpoints whose
        metadata names another run. ``checkpoint.overwrite=True`` deletes them instead. With
        ``resume="auto"`` and no valid checkpoint, the invalid ones are left in place (never
        counted by retention) and the run starts fresh."""
        cfg = self.config
        root = cfg.checkpoint_dir
        if root is None:
            return
        existing = ckpt.list_checkpoints(root)
        if not existing:
            return
        if self.resume_info:
            foreign = [p for p in existing if ckpt.run_id_of(p) not in (None, self.run_id)]
        elif cfg.checkpoint.resume == "auto" and not cfg.checkpoint.overwrite:
            if self.is_main:
                log.warning(
                    "resume='auto': none of the %d checkpoints in %s is valid; starting a fresh "
                    "run that leaves them in place",
                    len(existing),
                    root,
                )
            return
        else:
            foreign = existing
        if not foreign:
            return
        if cfg.checkpoint.overwrite:
            if self.is_main:
                log.warning(
                    "checkpoint.overwrite: deleting %d checkpoint(s) of another run in %s",
                    len(foreign),
                    root,
                )
                for p in foreign:
                    shutil.rmtree(p, ignore_errors=True)
            barrier()
            return
        owners = sorted({ckpt.run_id_of(p) or "unreadable" for p in foreign})
        raise CheckpointError(
            f"the checkpoint directory holds {len(foreign)} checkpoint(s) of another run "
            f"({', '.join(p.name for p in foreign[-3:])}; run {', '.join(owners)})",
            where=str(root),
            fix="continue that run with resume='auto', pass checkpoint.overwrite=True to replace "
            "it, or use another checkpoint.dir",
        )

    def _resume(self) -> None:
        cfg = self.config
        target = cfg.checkpoint.resume
        if not target:
            return
        if target == "auto":
            loaded = ckpt.find_resumable(cfg.checkpoint_dir)
            if loaded is None:
                log.info(
                    "resume='auto': no valid checkpoint in %s, starting fresh", cfg.checkpoint_dir
                )
                return
        else:
            loaded = ckpt.load_checkpoint(Path(target))
        meta = loaded.meta
        if meta["world_size"] != self.dist.world_size:
            raise DistributedError(
                f"checkpoint was written by {meta['world_size']} processes but this run has "
                f"{self.dist.world_size}",
                where=str(loaded.path),
                fix=f"resume with --nproc {meta['world_size']}, or start a fresh run",
            )
        for key in ("grad_accum_steps", "batch_size"):
            if meta[key] != getattr(cfg, key):
                raise CheckpointError(
                    f"checkpoint has {key}={meta[key]} but this run uses {getattr(cfg, key)}",
                    where=str(loaded.path),
                    fix="resume with the same setting or start a fresh run",
                )
        if cfg.distributed.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, loaded.model, options=opts)
            set_optimizer_state_dict(
                self.model, self.optimizer, loaded.state["optimizer"], options=opts
            )
        else:
            self.model.load_state_dict(loaded.model)
            self.optimizer.load_state_dict(loaded.state["optimizer"])
        self.scheduler.load_state_dict(loaded.state["scheduler"])
        if loaded.state["scaler"]:
            self.scaler.load_state_dict(loaded.state["scaler"])
        if self.ema is not None and loaded.ema is not None:
            self.ema.load_state_dict(loaded.ema)
        mine = loaded.state["ranks"][self.dist.rank]
        _set_rng_state(mine["rng"])
        if self.comm_hook is not None and mine["comm_hook"] is not None:
            self.comm_hook.load_state_dict(mine["comm_hook"])
        if mine["grads"]:
            params = dict(self.model.named_parameters())
            for name, g in mine["grads"].items():
                params[name].grad = g.to(self.device)
        self.epoch = meta["epoch"]
        self.global_step = meta["global_step"]
        self.batch_in_epoch = meta["batch_in_epoch"]
        self.micro_step = meta["micro_step"]
        self.history = meta["history"]
        self.best_metric = meta["best_metric"]
        self.best_checkpoint = meta["best_checkpoint"]
        self._es_best, self._es_bad = meta["es_best"], meta["es_bad"]
        self.nonfinite_total = meta["nonfinite_total"]
        self.resume_info = dict(meta) | {"path": str(loaded.path)}
        self.run_id = meta["run_id"]
        self.last_checkpoint = str(loaded.path)
        if self.is_main:
            log.info(
                "resumed from %s (epoch %d, step %d, batch %d)",
                loaded.path,
                self.epoch,
                self.global_step,
                self.batch_in_epoch,
            )

    # ------------------------------------------------------------------ steps
    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """Forward one batch; returns ``(loss, outputs, targets)``. Override for other batch shapes."""
        inputs, targets = batch[0], batch[1]
        outputs = model(inputs)
        return self.loss_fn(outputs, targets), outputs, targets

    def _sync_context(self, sync: bool) -> contextlib.AbstractContextManager:
        if not self.dist.enabled or sync:
            if self.config.distributed.strategy == "fsdp" and self.dist.enabled:
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.config.distributed.strategy == "fsdp":
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self._wrapped.no_sync()

    def _optimizer_step(self, loss_value: float) -> dict[str, float]:
        cfg = self.config
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
        grad_norm = float(norm)
        finite = math.isfinite(grad_norm) and math.isfinite(loss_value)
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        if self.scaler.is_enabled():
            if finite:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                # GradScaler looks at the gradients only: a non-finite loss with finite
                # gradients would be applied. Skip the step and back off as for an overflow.
                self.scaler.update(new_scale=scale * self.scaler.get_backoff_factor())
        elif finite:
            self.optimizer.step()
        if finite:
            self.nonfinite_consecutive = 0
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        else:
            self.nonfinite_total += 1
            self.nonfinite_consecutive += 1
            if self.is_main:
                log.warning(
                    "step %d skipped: non-finite %s (loss %.4g, grad norm %s, loss scale %g); "
                    "%d skipped so far",
                    self.global_step + 1,
                    "loss" if not math.isfinite(loss_value) else "gradients",
                    loss_value,
                    grad_norm,
                    scale,
                    self.nonfinite_total,
                )
            if self.nonfinite_consecutive >= cfg.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{self.nonfinite_consecutive} consecutive steps had non-finite loss or gradients "
                    f"(last loss {loss_value:.4g}, grad norm {grad_norm}, loss scale {scale:g})",
                    where=f"epoch {self.epoch}, step {self.global_step + 1}",
                    fix="lower the learning rate, enable grad_clip_norm, use bf16 instead of fp16, "
                    "or check the data for NaN/inf",
                )
        with warnings.catch_warnings():
            # A skipped first step makes torch warn about call order; the schedule stays aligned.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.comm_hook is not None:
            self.comm_hook.end_step()
        return {
            "loss": loss_value,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "loss_scale": scale,
            "skipped": float(not finite),
        }

    # ------------------------------------------------------------------ fit
    def fit(self, train_set: Dataset, val_set: Dataset | None = None) -> FitResult:
        """Train until ``max_epochs``/``max_steps`` or early stopping; returns a :class:`FitResult`."""
        cfg = self.config
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise DataError("the training set is empty", fix="check the data path and filters")
        if val_set is not None and len(val_set) == 0:  # type: ignore[arg-type]
            raise DataError("the validation set is empty", fix="pass val_set=None or add samples")
        for key, name in self._monitors():
            if val_set is None or not cfg.eval_every_n_epochs:
                raise ConfigError(
                    f"{key} {name!r} needs evaluation, but "
                    + (
                        "no validation set was given"
                        if val_set is None
                        else "eval_every_n_epochs=0"
                    ),
                    fix="pass a validation set to fit() and evaluate, or unset the monitor",
                )
        self.steps_per_epoch = math.ceil(self._batches_per_epoch(train_set) / cfg.grad_accum_steps)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training set ({len(train_set)} samples) is smaller than one batch "  # type: ignore[arg-type]
                f"with drop_last=True",
                fix="lower batch_size or set drop_last=False",
            )
        self.total_steps = self.steps_per_epoch * cfg.max_epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        prev_det = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed + self.dist.rank)
        self._setup()
        self._resume()
        if self.run_id is None:  # a fresh run: one id for every rank
            self.run_id = broadcast_object(uuid.uuid4().hex)
        self._claim_checkpoint_dir()
        old_handler = self._install_sigterm()
        start = time.perf_counter()
        samples = 0
        result_flags = {"stopped_early": False, "preempted": False}
        try:
            self._fire("on_fit_start")
            samples = self._run_epochs(train_set, val_set, result_flags)
        except BaseException as exc:
            self._fire("on_exception", exc)
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            torch.use_deterministic_algorithms(prev_det)
        elapsed = time.perf_counter() - start
        result = FitResult(
            global_step=self.global_step,
            epochs_completed=self.epoch,
            history=list(self.history),
            best_metric=self.best_metric,
            best_checkpoint=self.best_checkpoint,
            last_checkpoint=self.last_checkpoint,
            resumed_from=self.resume_info.get("path"),
            nonfinite_steps=self.nonfinite_total,
            elapsed_s=elapsed,
            samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
            comm_bytes_per_step=(self.comm_hook.total_bytes / max(self.comm_hook.steps, 1))
            if self.comm_hook
            else 0.0,
            **result_flags,
        )
        self._fire("on_fit_end", result)
        return result

    def _install_sigterm(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self._preempt.set())

    def _preempt_now(self, at_step_boundary: bool) -> bool:
        if not self.dist.enabled:
            return self._preempt.is_set()
        if not at_step_boundary:
            return False
        flag = torch.tensor([float(self._preempt.is_set())], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _run_epochs(
        self, train_set: Dataset, val_set: Dataset | None, flags: dict[str, bool]
    ) -> int:
        cfg = self.config
        accum = cfg.grad_accum_steps
        n_batches = self._batches_per_epoch(train_set)
        samples = 0
        while (
            self.epoch < cfg.max_epochs
            and self.global_step < self.total_steps
            and not self.should_stop
        ):
            self._fire("on_epoch_start", self.epoch)
            self._forward_model.train()
            loader = self._loader(
                train_set,
                shuffle=True,
                epoch=self.epoch,
                skip_batches=self.batch_in_epoch,
                drop_last=cfg.drop_last,
            )
            group_loss = 0.0
            t_step = time.perf_counter()
            step_samples = 0
            for batch in loader:
                i = self.batch_in_epoch
                group_start = (i // accum) * accum
                group_size = min(accum, n_batches - group_start)
                self.micro_step = i - group_start
                last = self.micro_step == group_size - 1
                batch = _to_device(batch, self.device)
                with self._sync_context(last):
                    with autocast(cfg.precision, self.device):
                        loss, _, _ = self.compute_loss(self._forward_model, batch)
                    self.scaler.scale(loss / group_size).backward()
                group_loss += float(loss.detach()) / group_size
                bs = _batch_len(batch)
                step_samples += bs * self.dist.world_size
                self.batch_in_epoch += 1
                if not last:
                    self.micro_step += 1
                    if self._preempt_now(False):
                        return self._preempted(flags, samples)
                    continue
                self.micro_step = 0
                logs = self._optimizer_step(group_loss)
                dt = time.perf_counter() - t_step
                logs["samples_per_s"] = step_samples / dt if dt > 0 else 0.0
                samples += step_samples
                group_loss, step_samples, t_step = 0.0, 0, time.perf_counter()
                self._fire("on_step_end", self.global_step, logs)
                if self._preempt_now(True):
                    return self._preempted(flags, samples)
                if self.global_step >= self.total_steps or self.should_stop:
                    break
                if (
                    cfg.checkpoint.every_n_steps
                    and self.global_step % cfg.checkpoint.every_n_steps == 0
                    and self.batch_in_epoch < n_batches
                ):
                    self.save_checkpoint()
            epoch_done = self.batch_in_epoch >= n_batches
            metrics: dict[str, float] = {}
            if (
                val_set is not None
                and cfg.eval_every_n_epochs
                and (
                    (self.epoch + 1) % cfg.eval_every_n_epochs == 0
                    or not epoch_done
                    or self.global_step >= self.total_steps
                )
            ):
                metrics = self.evaluate(val_set)
                self._after_eval(metrics)
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
            self.save_checkpoint()
            self._fire("on_epoch_end", self.epoch, metrics)
            if not epoch_done:
                break
        flags["stopped_early"] = self.should_stop
        return samples

    def _preempted(self, flags: dict[str, bool], samples: int) -> int:
        if self.is_main:
            log.warning(
                "SIGTERM received: checkpointing at epoch %d batch %d (micro-step %d) and stopping",
                self.epoch,
                self.batch_in_epoch,
                self.micro_step,
            )
        self.save_checkpoint()
        flags["preempted"] = True
        return samples

    def _after_eval(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        self.history.append(
            {"epoch": float(self.epoch), "step": float(self.global_step), **metrics}
        )
        self._fire("on_eval_end", metrics)
        mon = cfg.checkpoint.monitor
        if mon is not None:
            if mon not in metrics:
                raise ConfigError(
                    f"checkpoint.monitor {mon!r} is not a logged metric",
                    fix=f"use one of {sorted(metrics)}",
                )
            v = metrics[mon]
            better = self.best_metric is None or (
                v > self.best_metric if cfg.checkpoint.mode == "max" else v < self.best_metric
            )
            if better:
                self.best_metric = v
                self._pending_best = True
        es = cfg.early_stopping
        if es is not None:
            if es.monitor not in metrics:
                raise ConfigError(
                    f"early_stopping.monitor {es.monitor!r} is not a logged metric",
                    fix=f"use one of {sorted(metrics)}",
                )
            v = metrics[es.monitor]
            improved = self._es_best is None or (
                v > self._es_best + es.min_delta
                if es.mode == "max"
                else v < self._es_best - es.min_delta
            )
            if improved:
                self._es_best, self._es_bad = v, 0
            else:
                self._es_bad += 1
                if self._es_bad >= es.patience:
                    if self.is_main:
                        log.info(
                            "early stopping: %s did not improve for %d evaluations (best %.4f)",
                            es.monitor,
                            es.patience,
                            self._es_best,
                        )
                    self.should_stop = True

    # ------------------------------------------------------------------ eval / predict
    def _gather(self, tensor: torch.Tensor, n: int) -> torch.Tensor:
        """Reassemble per-rank outputs of a non-shuffled DistributedSampler into dataset order."""
        if not self.dist.enabled:
            return tensor
        parts = all_gather_objects(tensor.cpu())
        stacked = torch.stack(parts, dim=1)  # (n_per_rank, world, ...)
        return stacked.reshape(-1, *stacked.shape[2:])[:n]

    @torch.no_grad()
    def _run_inference(self, dataset: Dataset, with_loss: bool) -> tuple[Any, Any, float]:
        cfg = self.config
        model = self.eval_model
        was_training = model.training
        model.eval()
        loader = self._loader(
            dataset, shuffle=False, batch_size=cfg.eval_batch_size or cfg.batch_size
        )
        outs, tgts = [], []
        loss_sum, count = 0.0, 0
        try:
            for batch in loader:
                batch = _to_device(batch, self.device)
                with autocast(cfg.precision, self.device):
                    if with_loss:
                        loss, out, tgt = self.compute_loss(model, batch)
                        bs = _batch_len(batch)
                        loss_sum += float(loss) * bs
                        count += bs
                        tgts.append(tgt)
                    else:
                        out = self.predict_step(model, batch)
                outs.append(out)
        finally:
            model.train(was_training)
        n = len(dataset)  # type: ignore[arg-type]
        outputs = _cat(outs)
        targets = _cat(tgts) if tgts else None
        if isinstance(outputs, torch.Tensor):
            outputs = self._gather(outputs.float(), n)
        if isinstance(targets, torch.Tensor):
            targets = self._gather(targets, n)
        if self.dist.enabled and with_loss:
            t = torch.tensor([loss_sum, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            loss_sum, count = float(t[0]), int(t[1])
        return outputs, targets, loss_sum / max(count, 1)

    def predict_step(self, model: nn.Module, batch: Any) -> Any:
        """Outputs for one batch at prediction time (inputs are ``batch[0]`` for tuple batches)."""
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return model(inputs)

    def evaluate(self, dataset: Dataset, prefix: str = "val") -> dict[str, float]:
        """Loss and every metric over ``dataset`` (all ranks), e.g. ``{"val/loss": .., "val/accuracy": ..}``."""
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataError("the evaluation set is empty", fix="add samples or skip evaluation")
        outputs, targets, loss = self._run_inference(dataset, with_loss=True)
        metrics = {f"{prefix}/loss": loss}
        for name, fn in self.metrics.items():
            metrics[f"{prefix}/{name}"] = float(fn(outputs, targets))
        return metrics

    def predict(self, dataset: Dataset) -> torch.Tensor:
        """Model outputs for every sample, in dataset order (float32, on CPU)."""
        outputs, _, _ = self._run_inference(dataset, with_loss=False)
        return outputs.cpu() if isinstance(outputs, torch.Tensor) else outputs


def _batch_len(batch: Any) -> int:
    """Samples in a batch: ``x`` or ``(x, y, ...)`` where ``x`` is a tensor (batch-first), a list
    of per-sample items (detection: a list of images) or a dict of batch-first tensors."""
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    if isinstance(first, torch.Tensor):
        return first.shape[0]
    if isinstance(first, list | tuple):
        return len(first)
    if isinstance(first, dict) and first:
        v = next(iter(first.values()))
        return v.shape[0] if isinstance(v, torch.Tensor) else len(v)
    return 1


def _cat(items: list[Any]) -> Any:
    if items and isinstance(items[0], torch.Tensor):
        return torch.cat([t.detach() for t in items])
    return items
