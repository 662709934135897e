"""Subprocess body for resume tests: train digits deterministically, optionally die mid-run.

Usage: python digits_child.py CKPT_DIR OUT_WEIGHTS [--kill-at STEP] [--term-at-batch N]
    [--resume] [--accum K] [--every N]
--kill-at sends SIGKILL to itself right after optimizer step STEP (no chance to clean up);
--term-at-batch sends SIGTERM after N micro-batches (the trainer checkpoints and stops).
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from safetensors.torch import save_file

from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Callback, Trainer, TrainerConfig, accuracy, seed_everything


class Killer(Callback):
    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if self.step is not None and step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--term-at-batch", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--every", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_digits_splits(8, seed=0)
    seed_everything(0)
    model = DigitsCNN(16)
    # Dropout makes the RNG state matter for exactness.
    model.head = torch.nn.Sequential(torch.nn.Dropout(0.2), model.head)
    cfg = TrainerConfig(
        max_epochs=a.epochs,
        batch_size=32,
        grad_accum_steps=a.accum,
        deterministic=True,
        progress="off",
        optimizer={"name": "adamw", "lr": 2e-3},
        schedule={"name": "cosine", "warmup_steps": 5},
        checkpoint={
            "dir": a.ckpt,
            "every_n_steps": a.every,
            "keep_last": 3,
            "monitor": "val/accuracy",
            "resume": "auto" if a.resume else None,
        },
    )
    trainer = Trainer(model, cfg, metrics={"accuracy": accuracy}, callbacks=[Killer(a.kill_at)])
    if a.term_at_batch is not None:
        seen = {"n": 0}
        orig = trainer.compute_loss

        def counting(m, batch):
            seen["n"] += 1
            if seen["n"] == a.term_at_batch:
                os.kill(os.getpid(), signal.SIGTERM)
            return orig(m, batch)

        trainer.compute_loss = counting
    result = trainer.fit(splits["train"], splits["val"])
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, a.out)
    print(
        f"RESULT step={result.global_step} preempted={result.preempted} resumed={result.resumed_from}"
    )


if __name__ == "__main__":
    main()
