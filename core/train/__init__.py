"""core.train: the training engine (Trainer, precision, checkpoints, DDP/FSDP2, comm hooks).

Public API::

    from core.train import Trainer, TrainerConfig, OptimizerConfig, ScheduleConfig
    result = Trainer(model, TrainerConfig(max_epochs=5), metrics={"accuracy": accuracy}).fit(train, val)
"""

from core.train.callbacks import (
    Callback,
    EpochSetter,
    LossTrace,
    MLflowCallback,
    ProgressCallback,
)
from core.train.config import (
    CheckpointConfig,
    DistributedConfig,
    EarlyStoppingConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainerConfig,
)
from core.train.device import select_device
from core.train.distributed import launch_local
from core.train.optim import build_optimizer
from core.train.precision import bf16_is_fast
from core.train.trainer import FitResult, Trainer, accuracy, seed_everything

__all__ = [
    "Callback",
    "CheckpointConfig",
    "DistributedConfig",
    "EarlyStoppingConfig",
    "EpochSetter",
    "FitResult",
    "LossTrace",
    "MLflowCallback",
    "OptimizerConfig",
    "ProgressCallback",
    "ScheduleConfig",
    "Trainer",
    "TrainerConfig",
    "accuracy",
    "bf16_is_fast",
    "build_optimizer",
    "launch_local",
    "seed_everything",
    "select_device",
]
