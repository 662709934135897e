"""``make demo``: train the digits CNN through the engine, kill it, resume it, and report.

1. Train uninterrupted (the reference) in a child process.
2. Train again in a child process that SIGKILLs itself in the middle of an epoch, right after
   a checkpoint has been overtaken by a few more steps.
3. Resume from the newest valid checkpoint (``resume="auto"``) to the end.
4. Print a summary: test accuracy, where it died and resumed, and whether the resumed weights
   are bit-identical to the uninterrupted run's. Outputs go under ``$DV_DATA_ROOT/runs/demo``.
Later issues grow this into the full end-to-end demo (flows, compression, serving).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from core.paths import data_root

KILL_AT_STEP = 100  # epoch 2 of 8 (40 steps per epoch), 2 steps after the checkpoint at 98


def _child(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core.reference.demo", "--child", *args],
        capture_output=True,
        text=True,
    )


def child_main(argv: list[str]) -> None:
    """Child process: train digits deterministically; ``--kill-at N`` dies by SIGKILL at step N."""
    import os
    import signal

    from core.reference.digits import DigitsConfig, default_trainer_config, train_digits
    from core.train import Callback

    out, ckpt_dir, kill_at, resume = argv[0], argv[1], int(argv[2]), argv[3] == "resume"

    class Kill(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    tcfg = default_trainer_config()
    tcfg.deterministic = True
    tcfg.progress = "off"
    tcfg.checkpoint.dir = ckpt_dir
    tcfg.checkpoint.every_n_steps = 14
    tcfg.checkpoint.resume = "auto" if resume else None
    result, _trainer, test = train_digits(DigitsConfig(out_dir=out, trainer=tcfg), [Kill()])
    print(
        json.dumps(
            {
                "accuracy": test["test/accuracy"],
                "steps": result.global_step,
                "resumed_from": result.resumed_from,
                "elapsed_s": result.elapsed_s,
            }
        )
    )


def main() -> None:
    console = Console()
    root = data_root() / "runs" / "demo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    console.print("[bold]1/3[/] training digits uninterrupted (reference)...")
    ref = _child([str(root / "reference"), str(root / "reference_ckpt"), "-1", "fresh"])
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed:\n{ref.stderr[-2000:]}")
    console.print(f"[bold]2/3[/] training again and SIGKILLing it at step {KILL_AT_STEP}...")
    killed = _child([str(root / "model"), str(root / "ckpt"), str(KILL_AT_STEP), "fresh"])
    if killed.returncode != -9:
        raise SystemExit(f"expected the run to die by SIGKILL, got exit {killed.returncode}")
    console.print("[bold]3/3[/] resuming from the newest valid checkpoint...")
    resumed = _child([str(root / "model"), str(root / "ckpt"), "-1", "resume"])
    if resumed.returncode != 0:
        raise SystemExit(f"resumed run failed:\n{resumed.stderr[-2000:]}")
    r, f = json.loads(ref.stdout), json.loads(resumed.stdout)
    a = load_file(str(root / "reference" / "model.safetensors"))
    b = load_file(str(root / "model" / "model.safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    table = Table(title="DeepVerticals demo — digits CNN through core.train")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("data", "scikit-learn digits (1,797 real scans)")
    table.add_row("test accuracy (resumed run)", f"{f['accuracy']:.4f}")
    table.add_row("test accuracy (uninterrupted)", f"{r['accuracy']:.4f}")
    table.add_row("optimizer steps", str(f["steps"]))
    table.add_row("killed (SIGKILL) at step", str(KILL_AT_STEP))
    table.add_row("resumed from", str(f["resumed_from"]).replace(str(root) + "/", ""))
    table.add_row(
        "weights bit-identical to uninterrupted", "[green]yes[/]" if identical else "[red]NO[/]"
    )
    table.add_row("model directory", str(root / "model"))
    table.add_row("wall time", f"{time.perf_counter() - t0:.1f} s")
    console.print(table)
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
