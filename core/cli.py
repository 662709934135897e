"""``dv``: the domain-free command line.

``dv train digits`` trains the reference digits CNN through the engine (``--nproc 2`` relaunches
itself under torchrun; ``torchrun --nproc-per-node 2 -m core.cli train digits`` works too).
``dv prune | quantize | export | bench MODEL_DIR`` compress and measure a model directory.
Thin by rule: it parses options, builds the same config dataclasses Python callers build,
calls the library and reports.
"""

from __future__ import annotations

import gc
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
    # the CLI sits on top: it registers the reference architectures, so model directories
    # written before config.json named an arch_module still load
    import core.reference.digits  # noqa: F401


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
    overwrite_checkpoints: Annotated[
        bool, typer.Option(help="delete another run's checkpoints in --checkpoint-dir")
    ] = False,
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
        "overwrite": overwrite_checkpoints or tcfg["checkpoint"].get("overwrite", False),
    }
    tcfg["distributed"] = tcfg["distributed"] | {"comm_hook": comm_hook}
    cfg = DigitsConfig(
        out_dir=str(out) if out else None, seed=seed, trainer=TrainerConfig.from_dict(tcfg)
    )
    from core.train.distributed import barrier, shutdown_distributed

    result, trainer, test = train_digits(cfg)
    is_main = trainer.is_main
    # Every rank waits until rank 0 has written the model. Then the DDP reducer, its comm hook
    # and their pending gloo work are released while the interpreter is fully alive, and only
    # then is the group destroyed: gloo threads freeing tensors during interpreter shutdown
    # abort the process (SIGABRT, ~1 run in 16 under load; pytorch/pytorch#179291).
    barrier()
    del trainer
    gc.collect()
    shutdown_distributed()
    if is_main:
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


@app.command()
@exits_on_error
def prune(
    model_dir: Annotated[Path, typer.Argument(help="model directory to prune")],
    out: Annotated[Path, typer.Option(help="pruned model directory to write")],
    ratio: Annotated[float, typer.Option(help="fraction of channels to remove")] = 0.5,
    importance: Annotated[str, typer.Option(help="l1 | l2 | bn_scale | taylor")] = "l1",
    scope: Annotated[str, typer.Option(help="local | global")] = "local",
    exclude: Annotated[
        list[str] | None, typer.Option(help="module whose outputs are kept (repeatable)")
    ] = None,
) -> None:
    """Structured channel pruning: a genuinely smaller model, then fine-tune it."""
    from core.compress.prune import PruneConfig
    from core.compress.workflow import prune_model_dir

    cfg = PruneConfig(ratio=ratio, importance=importance, scope=scope, exclude=tuple(exclude or ()))
    r = prune_model_dir(model_dir, out, cfg)
    print(
        json.dumps(
            {
                "out": str(out),
                "macs_before": r.macs_before,
                "macs_after": r.macs_after,
                "mac_reduction": round(r.mac_ratio, 3),
                "params_before": r.params_before,
                "params_after": r.params_after,
                "frozen": r.frozen,
            },
            indent=2,
        )
    )


@app.command()
@exits_on_error
def quantize(
    model_dir: Annotated[Path, typer.Argument(help="model directory to quantize")],
    out: Annotated[Path, typer.Option(help="directory for the INT8 ONNX model")],
    scheme: Annotated[str, typer.Option(help="static | dynamic")] = "static",
    calibration: Annotated[
        str, typer.Option(help="minmax | percentile | entropy | mse")
    ] = "minmax",
    per_channel: Annotated[bool, typer.Option(help="per-channel weight scales")] = True,
    calib_data: Annotated[
        Path | None, typer.Option(help=".npy of (N, *input_shape) samples")
    ] = None,
) -> None:
    """INT8 quantization to an ONNX QDQ model run by ONNX Runtime."""
    from core.compress.quantize import Int8DynamicConfig, Int8StaticConfig
    from core.compress.workflow import calibration_data, quantize_model_dir
    from core.models import load_model_dir

    if scheme not in ("static", "dynamic"):
        raise ConfigError(f"unknown scheme {scheme!r}", fix="use 'static' or 'dynamic'")
    if scheme == "static":
        _, cfg = load_model_dir(model_dir)
        qcfg: object = Int8StaticConfig(calibration=calibration, per_channel=per_channel)
        batches = calibration_data(cfg, calib_data)
    else:
        qcfg, batches = Int8DynamicConfig(per_channel=per_channel), None
    q = quantize_model_dir(model_dir, out, qcfg, batches)
    print(
        json.dumps(
            {
                "out": str(q.path),
                "scheme": scheme,
                "reduce_range": q.reduce_range,
                "size_bytes": q.path.stat().st_size,
            },
            indent=2,
        )
    )


@app.command()
@exits_on_error
def export(
    model_dir: Annotated[Path, typer.Argument(help="model directory to export")],
    out: Annotated[Path, typer.Option(help="directory for model.onnx")],
) -> None:
    """ONNX export with a dynamic batch axis and a PyTorch-vs-ONNX Runtime parity check."""
    from core.compress.workflow import export_model_dir

    parity = export_model_dir(model_dir, out)
    print(
        json.dumps(
            {
                "out": str(out / "model.onnx"),
                "max_abs": parity.max_abs,
                "max_rel": parity.max_rel,
                "batch_sizes": list(parity.batch_sizes),
            },
            indent=2,
        )
    )


@app.command()
@exits_on_error
def bench(
    model_dirs: Annotated[
        list[Path], typer.Argument(help="model directories; the first is the baseline")
    ],
    batch: Annotated[
        list[int] | None, typer.Option(help="batch sizes to time (repeatable)")
    ] = None,
    threads: Annotated[int, typer.Option(help="intra-op threads")] = 2,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the report as JSON")
    ] = None,
) -> None:
    """Parameters, size, MACs and latency (median after warm-up), side by side with ratios."""
    from core.compress.report import compare
    from core.compress.workflow import bench_model_dir

    reports = [bench_model_dir(d, tuple(batch or (1, 8)), threads) for d in model_dirs]
    data = compare(reports, title="dv bench")
    if json_out:
        json_out.write_text(json.dumps(data, indent=2))


@app.command()
@exits_on_error
def serve(
    model_dir: Annotated[Path | None, typer.Argument(help="model directory to serve")] = None,
    registry: Annotated[
        str | None, typer.Option(help="serve this registered model's alias instead")
    ] = None,
    alias: Annotated[
        str, typer.Option(help="registry alias to follow (hot reload)")
    ] = "production",
    name: Annotated[
        str | None, typer.Option(help="model name in URLs (default: directory name)")
    ] = None,
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
    max_batch_size: Annotated[int, typer.Option(help="items per batched forward")] = 16,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="batching wait for the first item")
    ] = 5.0,
    quiet_gap_ms: Annotated[
        float,
        typer.Option(help="send a batch early once no item arrived for this long (0: never)"),
    ] = 0.0,
    batching: Annotated[
        bool, typer.Option(help="dynamic batching; --no-batching runs each request alone")
    ] = True,
    max_queue: Annotated[int, typer.Option(help="queued items before 503 Server Busy")] = 256,
    shed_delay_ms: Annotated[
        float,
        typer.Option(help="a 503 for a full queue is sent after this long (slows hammering)"),
    ] = 250.0,
    max_body_bytes: Annotated[int, typer.Option(help="request body limit (413 above)")] = 1 << 20,
    request_timeout: Annotated[float, typer.Option(help="seconds per request before 504")] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="seconds for a request body to arrive before 408")
    ] = 10.0,
    header_timeout: Annotated[
        float, typer.Option(help="seconds for a request's headers to arrive before 408")
    ] = 10.0,
    max_connections: Annotated[int, typer.Option(help="concurrent connections before 503")] = 1024,
    drain: Annotated[
        float,
        typer.Option(
            "--drain-seconds",
            help="on SIGTERM, readiness 503 and Connection: close for up to this long",
        ),
    ] = 5.0,
    decode_workers: Annotated[
        int, typer.Option(help="threads parsing and decoding request bodies")
    ] = 2,
    api_key_env: Annotated[
        str, typer.Option(help="variable whose value requests must carry as their API key")
    ] = "DV_API_KEY",
    watch_interval: Annotated[float, typer.Option(help="seconds between registry checks")] = 10.0,
) -> None:
    """Serve a model over HTTP with dynamic batching (POST /v1/models/NAME/predict)."""
    from core.serve import ModelDirPredictor, ServeConfig
    from core.serve.app import app_for
    from core.serve.server import serve as run_server

    cfg = ServeConfig(
        max_batch_size=max_batch_size if batching else 1,
        max_queue_delay_ms=max_queue_delay_ms if batching else 0.0,
        quiet_gap_ms=quiet_gap_ms,
        max_queue=max_queue,
        shed_delay_ms=shed_delay_ms,
        max_body_bytes=max_body_bytes,
        request_timeout_s=request_timeout,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
        max_connections=max_connections,
        drain_s=drain,
        decode_workers=decode_workers,
        api_key_env=api_key_env,
    )
    application = app_for(
        lambda path, n, version: ModelDirPredictor(path, name=n, version=version),
        cfg,
        model_dir,
        registry,
        name,
        alias=alias,
        watch_interval_s=watch_interval,
    )
    run_server(application, host, port)


if __name__ == "__main__":
    app()
