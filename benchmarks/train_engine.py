"""Training-engine benchmarks (results in benchmarks/results/train_engine.json).

1. Engine overhead: ``Trainer.fit`` vs a hand-written PyTorch loop doing the same work (same
   model, data, batch order, AdamW + warm-up/cosine schedule, steps), on CPU in one process.
   Target ratio (engine / hand-written) <= 1.03. Median of 5 alternating runs after a warm-up.
2. DDP gradient compression: two gloo processes, torchvision ResNet-18 (11.2M parameters) on
   digits resized to 32x32: bytes handed to the collective per step and step time for
   none / fp16 / powersgd / topk 1%.
3. Optimizer implementation: AdamW over a timm ResNet-18 (batch 8, 64x64, 2 threads), the
   per-tensor loop PyTorch picks by default on CPU against the fused kernel the engine picks
   (``OptimizerConfig.impl="auto"``): whole training step and optimizer step alone,
   interleaved in one run. ``optimizer.fused_speedup`` is the training-step ratio.
4. bf16 vs fp32 on a GPU (ResNet-50, batch 64): only when CUDA is present.

Run: ``make bench`` or ``.venv/bin/python benchmarks/train_engine.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_result
from core.reference.digits import DigitsCNN, load_digits_splits
from core.train import Callback, Trainer, TrainerConfig, launch_local, seed_everything
from core.train.schedules import build_scheduler


def _overhead_cfg(epochs: int) -> TrainerConfig:
    return TrainerConfig(
        max_epochs=epochs,
        batch_size=64,
        progress="plain",
        seed=0,
        optimizer={"name": "adamw", "lr": 3e-3},
        schedule={"name": "cosine", "warmup_steps": 10},
    )


def run_engine(train, epochs: int) -> float:
    seed_everything(0)
    model = DigitsCNN(64)
    trainer = Trainer(model, _overhead_cfg(epochs))
    t = time.perf_counter()
    trainer.fit(train)
    return time.perf_counter() - t


def run_plain(train, epochs: int) -> float:
    """The peer: what a careful user writes by hand with the same sampler, optimizer and schedule."""
    seed_everything(0)
    model = DigitsCNN(64)
    cfg = _overhead_cfg(epochs)
    sampler = torch.utils.data.DistributedSampler(
        train, num_replicas=1, rank=0, shuffle=True, seed=0
    )
    loader = torch.utils.data.DataLoader(train, batch_size=64, sampler=sampler)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)  # as the engine picks
    sched = build_scheduler(opt, cfg.schedule, epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    t = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def bench_overhead(repeats: int, epochs: int) -> dict:
    train = load_digits_splits(16, seed=0)["train"]
    run_engine(train, 1), run_plain(train, 1)  # warm-up
    engine, plain = [], []
    for i in range(repeats):  # alternate so drift hits both
        if i % 2 == 0:
            engine.append(run_engine(train, epochs))
            plain.append(run_plain(train, epochs))
        else:
            plain.append(run_plain(train, epochs))
            engine.append(run_engine(train, epochs))
    e, p = statistics.median(engine), statistics.median(plain)
    return {
        "model": "DigitsCNN(width=64), 16x16 digits, batch 64, AdamW + cosine",
        "epochs": epochs,
        "engine_s": e,
        "hand_written_s": p,
        "ratio": e / p,
        "target_ratio_max": 1.03,
        "engine_runs_s": engine,
        "hand_written_runs_s": plain,
    }


class _StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = time.perf_counter()

    def on_step_end(self, trainer, step, logs):
        now = time.perf_counter()
        self.times.append(now - self._t)
        self._t = now


def ddp_worker(hook: str, steps: int, skip: int) -> dict:
    import torchvision

    torch.set_num_threads(1)
    seed_everything(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    train = load_digits_splits(32, seed=0)["train"]
    timer = _StepTimer()
    cfg = TrainerConfig(
        max_steps=steps,
        batch_size=16,
        progress="off",
        optimizer={"name": "sgd", "lr": 0.05},
        schedule={"name": "constant"},
        distributed={"comm_hook": hook, "topk_ratio": 0.01, "powersgd_warmup": 2},
    )
    trainer = Trainer(model, cfg, callbacks=[timer])
    result = trainer.fit(train)
    hook_obj = trainer.comm_hook
    return {
        "bytes_per_step": float(hook_obj.last_step_bytes),
        "step_s": statistics.median(timer.times[skip:]),
        "params": float(sum(p.numel() for p in model.parameters())),
        "loss_steps": float(result.global_step),
    }


def bench_ddp(steps: int) -> dict:
    rows = {}
    for hook in ("none", "fp16", "powersgd", "topk"):
        r = launch_local(ddp_worker, 2, hook, steps, 4)[0]
        rows[hook] = r
    base = rows["none"]
    for r in rows.values():
        r["bytes_ratio_vs_none"] = r["bytes_per_step"] / base["bytes_per_step"]
        r["step_time_ratio_vs_none"] = r["step_s"] / base["step_s"]
    return {
        "model": "torchvision resnet18 (1-channel stem), digits 32x32, batch 16 per rank, 2 gloo processes",
        "hooks": rows,
    }


def bench_optimizer(rounds: int) -> dict:
    import timm

    from core.compress.report import interleaved_latency
    from core.train.config import OptimizerConfig
    from core.train.optim import build_optimizer

    torch.set_num_threads(2)

    def make(impl: str):
        seed_everything(0)
        model = timm.create_model("resnet18", num_classes=10)
        opt = build_optimizer(
            model.parameters(),
            OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.05, impl=impl),
        )
        x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
        grads = [torch.full_like(p, 1e-3) for p in model.parameters()]

        def train_step() -> None:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def opt_step() -> None:
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g
            opt.step()

        return train_step, opt_step, opt

    (loop_train, loop_opt, _), (fused_train, fused_opt, opt) = make("for-loop"), make("auto")
    assert opt.defaults.get("fused"), "the engine did not pick the fused kernel on this device"
    train = interleaved_latency({"for-loop": loop_train, "fused": fused_train}, rounds, 5)
    step = interleaved_latency({"for-loop": loop_opt, "fused": fused_opt}, rounds, 5)
    return {
        "model": "timm resnet18, AdamW, batch 8 at 64x64, 2 threads",
        "train_step_s": train,
        "optimizer_step_s": step,
        "fused_speedup": train["for-loop"] / train["fused"],
        "optimizer_step_speedup": step["for-loop"] / step["fused"],
    }


def _gpu_step(precision: str) -> dict:
    """ResNet-50, batch 64 at 224x224: mean step time over 20 steps after 5 warm-up steps, peak memory."""
    import torchvision

    from core.train.precision import autocast

    dev = torch.device("cuda")
    model = torchvision.models.resnet50().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (64,), device=dev)

    def step() -> None:
        with autocast(precision, dev):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    return {
        "step_s": (time.perf_counter() - t) / 20,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def bench_gpu_bf16() -> dict:
    if not torch.cuda.is_available():
        return {"status": "not run: no CUDA device on this machine"}
    out = {p: _gpu_step(p) for p in ("fp32", "bf16")}
    out["speedup"] = out["fp32"]["step_s"] / out["bf16"]["step_s"]
    out["memory_saving"] = 1 - out["bf16"]["peak_mem_gb"] / out["fp32"]["peak_mem_gb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats/steps (a smoke run)")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    overhead = bench_overhead(repeats=3 if a.quick else 7, epochs=1 if a.quick else 3)
    ddp = bench_ddp(steps=8 if a.quick else 16)
    optimizer = bench_optimizer(rounds=2 if a.quick else 6)
    gpu = bench_gpu_bf16()
    path = write_result(
        "train_engine",
        {"overhead": overhead, "ddp_compression": ddp, "optimizer": optimizer, "gpu_bf16": gpu},
    )
    print_table(
        "Engine overhead (CPU)",
        ["engine s", "hand-written s", "ratio", "target"],
        [[overhead["engine_s"], overhead["hand_written_s"], overhead["ratio"], "<= 1.03"]],
    )
    print_table(
        "DDP compression, ResNet-18, 2 gloo processes",
        ["hook", "MB/step", "x bytes", "step s", "x time"],
        [
            [
                k,
                v["bytes_per_step"] / 1e6,
                v["bytes_ratio_vs_none"],
                v["step_s"],
                v["step_time_ratio_vs_none"],
            ]
            for k, v in ddp["hooks"].items()
        ],
    )
    print_table(
        "Optimizer implementation (CPU)",
        ["", "for-loop s", "fused s", "speedup"],
        [
            [
                "training step",
                optimizer["train_step_s"]["for-loop"],
                optimizer["train_step_s"]["fused"],
                optimizer["fused_speedup"],
            ],
            [
                "optimizer step",
                optimizer["optimizer_step_s"]["for-loop"],
                optimizer["optimizer_step_s"]["fused"],
                optimizer["optimizer_step_speedup"],
            ],
        ],
    )
    print(f"GPU bf16: {gpu}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
