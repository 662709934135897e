"""Configuration dataclasses for the training engine.

One small dataclass per component, each validated in ``__post_init__`` with errors that
name the fix. The CLI, the Prefect flows and Python callers all build these same objects;
:meth:`TrainerConfig.from_dict` accepts the JSON form (nested dicts).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError
from core.typedconfig import build, check_types

Precision = Literal["fp32", "fp16", "bf16"]
CommHookName = Literal["none", "fp16", "bf16", "powersgd", "topk"]


def _check(cond: bool, what: str, fix: str) -> None:
    if not cond:
        raise ConfigError(what, fix=fix)


@dataclass
class OptimizerConfig:
    """Optimizer choice and hyper-parameters."""

    name: Literal["sgd", "adam", "adamw"] = "adamw"  # torch.optim class to build
    lr: float = 1e-3  # peak learning rate (after warm-up)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for sgd/adam
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only
    nesterov: bool = False  # sgd only
    impl: Literal["auto", "fused", "foreach", "for-loop"] = (
        "auto"  # auto: fused kernels where the device has them, else multi-tensor (foreach)
    )

    def __post_init__(self) -> None:
        check_types(self)
        _check(
            self.lr > 0 and math.isfinite(self.lr),
            f"optimizer.lr must be > 0, got {self.lr}",
            "set a positive learning rate such as 1e-3",
        )
        _check(self.weight_decay >= 0, "optimizer.weight_decay must be >= 0", "set 0 to disable it")
        _check(0.0 <= self.momentum < 1.0, "optimizer.momentum must lie in [0, 1)", "use e.g. 0.9")
        _check(
            all(0.0 <= b < 1.0 for b in self.betas),
            f"optimizer.betas must lie in [0, 1), got {list(self.betas)}",
            "use e.g. [0.9, 0.999]",
        )


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["cosine", "constant", "step"] = (
        "cosine"  # warm-up then cosine / flat / step decay
    )
    warmup_steps: int = 0  # linear warm-up from 0 to the peak lr (cosine and constant)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak lr
    step_size: int = 1000  # step schedule: decay every this many optimizer steps
    gamma: float = 0.1  # step schedule: multiply lr by this at each decay

    def __post_init__(self) -> None:
        check_types(self)
        _check(self.warmup_steps >= 0, "schedule.warmup_steps must be >= 0", "set 0 for no warm-up")
        _check(
            0.0 <= self.min_lr_ratio <= 1.0,
            "schedule.min_lr_ratio must lie in [0, 1]",
            "use e.g. 0.0 or 0.1",
        )
        _check(self.step_size > 0, "schedule.step_size must be > 0", "use e.g. 1000")
        _check(self.gamma > 0, "schedule.gamma must be > 0", "use e.g. 0.1")


@dataclass
class CheckpointConfig:
    """When and where checkpoints are written, and how many are kept."""

    dir: str | None = None  # checkpoint directory; None disables checkpointing
    every_n_steps: int = 0  # also checkpoint every this many optimizer steps (0: epoch ends only)
    keep_last: int = 2  # newest checkpoints kept (the best one is kept in addition)
    monitor: str | None = None  # metric that defines "best", e.g. "val/accuracy"
    mode: Literal["max", "min"] = "max"  # whether a larger or smaller monitored value is better
    resume: str | None = None  # None: fresh run; "auto": newest valid checkpoint in dir; or a path
    overwrite: bool = False  # a fresh run may delete the checkpoints another run left in dir

    def __post_init__(self) -> None:
        if isinstance(self.dir, os.PathLike):  # a pathlib.Path from Python callers
            self.dir = os.fspath(self.dir)
        check_types(self)
        _check(self.keep_last >= 1, "checkpoint.keep_last must be >= 1", "keep at least one")
        _check(self.every_n_steps >= 0, "checkpoint.every_n_steps must be >= 0", "0 disables it")
        _check(
            self.resume is None or self.dir is not None or self.resume != "auto",
            "checkpoint.resume='auto' needs checkpoint.dir",
            "set checkpoint.dir",
        )


@dataclass
class EarlyStoppingConfig:
    """Stop when a monitored metric has not improved for ``patience`` evaluations."""

    monitor: str = "val/loss"  # metric name as logged, e.g. "val/accuracy"
    mode: Literal["max", "min"] = "min"  # improvement direction
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0  # smallest change that counts as an improvement

    def __post_init__(self) -> None:
        check_types(self)
        _check(self.patience >= 1, "early_stopping.patience must be >= 1", "use e.g. 3")
        _check(self.min_delta >= 0, "early_stopping.min_delta must be >= 0", "use e.g. 0.0")


@dataclass
class DistributedConfig:
    """Data-parallel settings; read only when launched with several processes."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # DDP, or FSDP2 (fully_shard) for large models
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    comm_hook: CommHookName = "none"  # DDP gradient compression
    topk_ratio: float = 0.01  # fraction of each bucket the topk hook sends
    powersgd_rank: int = 1  # PowerSGD matrix approximation rank
    powersgd_warmup: int = 10  # plain all-reduce iterations before PowerSGD starts (>= 2)
    bucket_cap_mb: float = 25.0  # DDP bucket size

    def __post_init__(self) -> None:
        check_types(self)
        _check(
            0.0 < self.topk_ratio <= 1.0,
            "distributed.topk_ratio must lie in (0, 1]",
            "use e.g. 0.01 for 1%",
        )
        _check(self.powersgd_rank >= 1, "distributed.powersgd_rank must be >= 1", "use 1 to 4")
        _check(
            self.powersgd_warmup >= 2,
            "distributed.powersgd_warmup must be >= 2",
            "PowerSGD needs at least 2 plain all-reduce iterations (DDP rebuilds buckets after the first)",
        )
        _check(
            self.strategy == "ddp" or self.comm_hook == "none",
            "comm hooks apply to DDP only",
            "set comm_hook='none' with strategy='fsdp'",
        )
        _check(self.bucket_cap_mb > 0, "distributed.bucket_cap_mb must be > 0", "use e.g. 25")


@dataclass
class TrainerConfig:
    """Everything the :class:`~core.train.Trainer` needs; defaults run on a laptop CPU."""

    max_epochs: int = 10  # epochs to run (an upper bound when max_steps is set)
    max_steps: int | None = None  # stop after this many optimizer steps
    batch_size: int = 32  # per-process micro-batch size
    eval_batch_size: int | None = None  # defaults to batch_size
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip_norm: float | None = None  # clip the global gradient norm to this value
    precision: Precision = "fp32"  # autocast dtype; fp16 adds a dynamic loss scaler
    max_nonfinite_steps: int = 25  # consecutive skipped (non-finite) steps before NonFiniteError
    seed: int = 0  # seeds model-independent randomness: data order, dropout, augmentation
    deterministic: bool = (
        False  # torch.use_deterministic_algorithms (needed for bit-exact resume on GPU)
    )
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1"...
    compile: bool = False  # wrap the model's forward in torch.compile
    ema_decay: float | None = None  # keep an exponential moving average of weights, e.g. 0.999
    num_workers: int = 0  # DataLoader worker processes
    drop_last: bool = False  # drop the last incomplete training batch
    eval_every_n_epochs: int = 1  # run evaluation after every n-th epoch (0: never)
    log_every_n_steps: int = 10  # metric logging interval in optimizer steps
    progress: Literal["auto", "rich", "plain", "off"] = (
        "auto"  # auto: rich on a terminal, plain otherwise
    )
    tracking: Literal["mlflow", "none"] = "none"  # experiment tracking backend
    experiment: str = "deepverticals"  # MLflow experiment name
    run_name: str | None = None  # MLflow run name
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        check_types(self)  # also builds the nested configs given as dicts
        _check(self.max_epochs >= 1, "max_epochs must be >= 1", "use e.g. 10")
        _check(
            self.max_steps is None or self.max_steps >= 1,
            "max_steps must be >= 1 or None",
            "leave it None to run max_epochs",
        )
        _check(self.batch_size >= 1, "batch_size must be >= 1", "use e.g. 32")
        _check(
            self.eval_batch_size is None or self.eval_batch_size >= 1,
            "eval_batch_size must be >= 1",
            "leave it None to use batch_size",
        )
        _check(self.num_workers >= 0, "num_workers must be >= 0", "0 loads in the main process")
        _check(
            self.eval_every_n_epochs >= 0,
            "eval_every_n_epochs must be >= 0",
            "use 1 to evaluate every epoch, 0 never",
        )
        _check(
            self.grad_accum_steps >= 1, "grad_accum_steps must be >= 1", "1 disables accumulation"
        )
        _check(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            "grad_clip_norm must be > 0",
            "leave it None to disable clipping",
        )
        _check(
            self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
            "ema_decay must lie in (0, 1)",
            "use e.g. 0.999, or None to disable EMA",
        )
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1", "use e.g. 25")
        _check(self.log_every_n_steps >= 1, "log_every_n_steps must be >= 1", "use e.g. 10")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        """Build from nested dicts (JSON); unknown keys at any depth and values of the wrong
        type raise one ConfigError naming the dotted field path."""
        return build(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for config.json, MLflow params and checkpoints)."""
        return dataclasses.asdict(self)

    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else None
