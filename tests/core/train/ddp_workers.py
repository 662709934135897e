"""Worker bodies for the multi-process tests (importable, so spawn can run them)."""

from __future__ import annotations

import torch
from torch import nn

from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Trainer, TrainerConfig, accuracy, seed_everything


def mlp() -> nn.Module:
    seed_everything(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 10))


def _mlp_config(
    batch_size: int, comm_hook: str, steps: int, strategy: str, ckpt_dir: str | None
) -> TrainerConfig:
    return TrainerConfig(
        max_steps=steps,
        batch_size=batch_size,
        progress="off",
        seed=0,
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
        schedule={"name": "constant"},
        checkpoint={"dir": ckpt_dir},
        distributed={"comm_hook": comm_hook, "strategy": strategy},
    )


def train_mlp(
    batch_size: int,
    comm_hook: str = "none",
    steps: int = 6,
    strategy: str = "ddp",
    ckpt_dir: str | None = None,
) -> dict:
    splits = load_digits_splits(8, seed=0)
    trainer = Trainer(mlp(), _mlp_config(batch_size, comm_hook, steps, strategy, ckpt_dir))
    result = trainer.fit(splits["train"])
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    else:
        state = trainer.model.state_dict()
    return {
        "weights": {k: v.detach().clone() for k, v in state.items()},
        "bytes_per_step": result.comm_bytes_per_step,
    }


def resume_expecting_error(ckpt_dir: str) -> str:
    from core.errors import DistributedError

    cfg = _mlp_config(16, "none", 12, "ddp", ckpt_dir)
    cfg.checkpoint.resume = "auto"
    try:
        Trainer(mlp(), cfg).fit(load_digits_splits(8, seed=0)["train"])
    except DistributedError as exc:
        return str(exc)
    return "no error"


def digits_accuracy(comm_hook: str, ratio: float = 0.01, epochs: int = 8) -> dict:
    splits = load_digits_splits(8, seed=0)
    seed_everything(0)
    cfg = TrainerConfig(
        max_epochs=epochs,
        batch_size=32,
        progress="off",
        seed=0,
        optimizer={"name": "adamw", "lr": 3e-3},
        schedule={"name": "cosine", "warmup_steps": 10},
        distributed={"comm_hook": comm_hook, "topk_ratio": ratio, "powersgd_warmup": 10},
    )
    trainer = Trainer(DigitsCNN(32), cfg, metrics={"accuracy": accuracy})
    result = trainer.fit(splits["train"])
    test = trainer.evaluate(splits["test"], prefix="test")
    return {
        "accuracy": test["test/accuracy"],
        "bytes_per_step": result.comm_bytes_per_step,
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


def hooks_suite() -> dict:
    """Everything the comm-hook test compares, in one spawn (imports are the slow part)."""
    out = {name: digits_accuracy(name) for name in ("none", "topk", "powersgd", "fp16")}
    out["topk100"] = digits_accuracy("topk", ratio=1.0)
    for v in out.values():
        if torch.distributed.get_rank() != 0:
            v.pop("weights")
    return out


def topk_run(ckpt_dir: str | None, max_steps: int, resume: bool) -> dict:
    """Digits CNN, 2 ranks, topk 5% with error feedback; optionally checkpointed/resumed."""
    splits = load_digits_splits(8, seed=0)
    seed_everything(0)
    cfg = TrainerConfig(
        max_steps=max_steps,
        batch_size=16,
        progress="off",
        seed=0,
        deterministic=True,
        optimizer={"name": "adamw", "lr": 3e-3},
        schedule={"name": "constant"},
        checkpoint={"dir": ckpt_dir, "resume": "auto" if resume else None},
        distributed={"comm_hook": "topk", "topk_ratio": 0.05},
    )
    trainer = Trainer(DigitsCNN(16), cfg)
    trainer.fit(splits["train"])
    errors = trainer.comm_hook.state_dict()["errors"]
    return {
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "error_norm": float(sum(e.norm() ** 2 for e in errors.values()) ** 0.5),
        "resumed": trainer.resume_info.get("path", ""),
    }
