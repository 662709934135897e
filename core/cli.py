"""``dv``: the domain-free command line.

``dv train digits`` trains the reference digits CNN through the engine (``--nproc 2`` relaunches
itself under torchrun; ``torchrun --nproc-per-node 2 -m core.cli train digits`` works too).
Thin by rule: it parses options, builds the same config dataclasses Python callers build,
calls the library and reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import exits_on_error, read_json_config, setup_logging
from core.errors import ConfigError

app = typer.Typer(help="DeepVerticals core commands.", no_args_is_help=True, add_completion=False)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
@exits_on_error
def train(
    task: Annotated[str, typer.Argument(help="reference task to train: 'digits'")],
    out: Annotated[Path | None, typer.Option(help="model directory to write")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file with TrainerConfig fields")] = None,
    epochs: Annotated[int | None, typer.Option(help="max epochs")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 | bf16")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="where checkpoints go")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint every N optimizer steps")] = 0,
    resume: Annotated[str | None, typer.Option(help="'auto' or a checkpoint directory")] = None,
    nproc: Annotated[
        int, typer.Option(help="local processes (DDP); >1 relaunches under torchrun")
    ] = 1,
    comm_hook: Annotated[str, typer.Option(help="none | fp16 | bf16 | powersgd | topk")] = "none",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    track: Annotated[bool, typer.Option(help="track the run in MLflow")] = False,
) -> None:
    """Train a reference task through the engine and print its test metrics."""
    if task != "digits":
        raise ConfigError(
            f"unknown task {task!r}",
            fix="the core reference task is 'digits'; "
            "domain pipelines have their own CLIs (vision-qc, ...)",
        )
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        args = [a for a in sys.argv[1:]]
        i = args.index("--nproc") if "--nproc" in args else None
        if i is not None:
            del args[i : i + 2]
        else:
            args = [a for a in args if not a.startswith("--nproc=")]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "core.cli",
            *args,
        ]
        raise typer.Exit(subprocess.call(cmd))

    from core.reference.digits import DigitsConfig, default_trainer_config, train_digits
    from core.train import TrainerConfig

    tcfg = default_trainer_config().to_dict() | read_json_config(config)
    if epochs is not None:
        tcfg["max_epochs"] = epochs
    if precision is not None:
        tcfg["precision"] = precision
    if track:
        tcfg["tracking"] = "mlflow"
    tcfg["checkpoint"] = tcfg["checkpoint"] | {
        "dir": str(checkpoint_dir) if checkpoint_dir else tcfg["checkpoint"].get("dir"),
        "every_n_steps": checkpoint_every or tcfg["checkpoint"].get("every_n_steps", 0),
        "resume": resume,
    }
    tcfg["distributed"] = tcfg["distributed"] | {"comm_hook": comm_hook}
    cfg = DigitsConfig(
        out_dir=str(out) if out else None, seed=seed, trainer=TrainerConfig.from_dict(tcfg)
    )
    result, trainer, test = train_digits(cfg)
    if trainer.is_main:
        print(
            json.dumps(
                {
                    "test": test,
                    "global_step": result.global_step,
                    "resumed_from": result.resumed_from,
                    "elapsed_s": round(result.elapsed_s, 2),
                    "comm_bytes_per_step": result.comm_bytes_per_step,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    app()
