"""``vision-qc``: the vision_qc command line (synth, train, evaluate, compress, predict, serve).

Thin by rule: each command builds the same config dataclasses a Python caller builds, calls the
pipeline function and reports. Errors print one line (``error: what (where); fix``) and exit 2.
A typical session::

    vision-qc synth --out data/vision_qc/synth
    vision-qc train --data data/vision_qc/synth --out data/runs/vision_qc/model
    vision-qc evaluate data/runs/vision_qc/model --data data/vision_qc/synth
    vision-qc compress data/runs/vision_qc/model --data data/vision_qc/synth
    vision-qc predict data/runs/vision_qc/deploy/int8 part.png --out preds.json --draw annotated/
    vision-qc serve data/runs/vision_qc/deploy/int8 --port 8080
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cliutil import domain_app, exits_on_error, read_json_config
from core.typedconfig import build

app = domain_app(
    "Industrial defect detection: synthesise, train, evaluate, compress, predict, serve."
)

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="data set root (MVTec folder(s), or COCO/YOLO root); default: the config's "
        "data.root, else $DV_DATA_ROOT/vision_qc/synth",
    ),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="mvtec | coco | yolo (default: mvtec)")
]
ClassesOpt = Annotated[
    str | None, typer.Option(help="comma-separated defect classes (default: the five synthetic)")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(help="JSON with the stage's config fields; its data section is kept too"),
]
TestSetOpt = Annotated[
    bool,
    typer.Option(
        "--test-set", help="the whole data set is a test set (no training or validation part)"
    ),
]


def _under_data_root(*parts: str) -> Path:
    """A default path under ``$DV_DATA_ROOT`` (``./data`` when unset)."""
    from core.paths import data_root

    return data_root().joinpath(*parts)


def _stage_config(config: Path | None, out: Path | None, stage: str) -> dict[str, Any]:
    """A stage's config fields from ``--config`` (``{}`` without), ``out_dir`` set from
    ``--out``, else the file's, else ``$DV_DATA_ROOT/runs/vision_qc/<stage>``."""
    kw = read_json_config(config)
    if out is not None or "out_dir" not in kw:
        kw["out_dir"] = str(out or _under_data_root("runs", "vision_qc", stage))
    return kw


def _data(
    base: dict[str, Any] | None,
    data: Path | None,
    fmt: str | None,
    classes: str | None,
    test_set: bool = False,
) -> Any:
    """The stage's DataConfig: the config file's ``data`` section with the options given on
    the command line laid over it (an option left out keeps the file's value)."""
    from pipelines.vision_qc.config import DataConfig

    kw: dict[str, Any] = dict(base or {})
    if data is not None:
        kw["root"] = str(data)
    kw.setdefault("root", str(_under_data_root("vision_qc", "synth")))
    if fmt is not None:
        kw["format"] = fmt
    if classes:
        kw["classes"] = tuple(c.strip() for c in classes.split(",") if c.strip())
    if test_set:
        kw["test_only"] = True
    return DataConfig(**kw)


def _status(label: str) -> Any:
    """A spinner for steps without a count (a no-op line when not on a terminal)."""
    from rich.console import Console

    return Console(stderr=True).status(label)


def _progress(label: str) -> Any:
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@app.command()
@exits_on_error
def synth(
    out: Annotated[
        Path | None,
        typer.Option(help="data set root to write (default: $DV_DATA_ROOT/vision_qc/synth)"),
    ] = None,
    surfaces: Annotated[
        str, typer.Option(help="comma-separated surfaces (MVTec categories)")
    ] = "brushed_metal,wood_grain,pcb",
    n_train_good: Annotated[int, typer.Option(help="normal training images per surface")] = 24,
    n_test_good: Annotated[int, typer.Option(help="normal test images per surface")] = 6,
    n_test_per_defect: Annotated[int, typer.Option(help="test images per surface and class")] = 4,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Write a seeded synthetic inspection data set (MVTec layout + COCO JSON)."""
    from pipelines.vision_qc.config import SynthConfig
    from pipelines.vision_qc.synth import write_dataset

    out = out or _under_data_root("vision_qc", "synth")
    cfg = SynthConfig(
        out_dir=str(out),
        surfaces=tuple(s.strip() for s in surfaces.split(",") if s.strip()),
        n_train_good=n_train_good,
        n_test_good=n_test_good,
        n_test_per_defect=n_test_per_defect,
        size=size,
        seed=seed,
    )
    with _status(f"synthesising {len(cfg.surfaces)} surfaces into {out}"):
        root = write_dataset(cfg)
    n = sum(1 for p in root.rglob("*.png") if "ground_truth" not in p.parts)
    typer.echo(f"wrote {n} images to {root} (MVTec layout + annotations.json)")


@app.command()
@exits_on_error
def train(
    data: DataOpt = None,
    fmt: FormatOpt = None,
    classes: ClassesOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="model directory to write (default: $DV_DATA_ROOT/runs/vision_qc/model)"),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="train exactly this many epochs (default: 1000 steps, however many images)"
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per step")] = None,
    backbone: Annotated[str | None, typer.Option(help="timm backbone")] = None,
    pretrained: Annotated[
        Path | None, typer.Option(help="local .safetensors with backbone weights")
    ] = None,
    scratch: Annotated[
        bool,
        typer.Option(help="random backbone weights instead of the shipped ImageNet ones"),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON with TrainConfig fields (data, trainer, model, ...); partial sections "
            "keep the defaults they do not name"
        ),
    ] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="checkpoints here")] = None,
    resume: Annotated[str | None, typer.Option(help="'auto' or a checkpoint directory")] = None,
    overwrite_checkpoints: Annotated[
        bool, typer.Option(help="delete another run's checkpoints in --checkpoint-dir")
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="random seed (default: the config's, or 0)")
    ] = None,
) -> None:
    """Train the detector (FCOS + timm FPN) and write a model directory."""
    from pipelines.vision_qc.train import TrainConfig
    from pipelines.vision_qc.train import train as run

    file_cfg = _stage_config(config, out, "model")
    file_cfg["data"] = _data(file_cfg.get("data"), data, fmt, classes)
    if seed is not None:
        file_cfg["seed"] = seed
    if backbone or pretrained or scratch:  # before the config checks the backbone's weights
        model = file_cfg.setdefault("model", {})
        model.update({"backbone": backbone} if backbone else {})
        model.update({"pretrained_path": str(pretrained)} if pretrained else {})
        model.update({"pretrained": False} if scratch else {})
    cfg = build(TrainConfig, file_cfg)
    if epochs is not None:
        cfg.trainer.max_epochs, cfg.trainer.max_steps = epochs, None
    if batch_size is not None:
        cfg.trainer.batch_size = batch_size
    if checkpoint_dir is not None:
        cfg.trainer.checkpoint.dir = str(checkpoint_dir)
    if resume is not None:
        cfg.trainer.checkpoint.resume = resume
    cfg.trainer.checkpoint.overwrite = overwrite_checkpoints
    t0 = time.perf_counter()
    result, model_dir = run(cfg)
    typer.echo(
        f"trained {result.global_step} steps in {time.perf_counter() - t0:.0f} s; model: {model_dir}"
    )


@app.command()
@exits_on_error
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="model directory (PyTorch or ONNX)")],
    data: DataOpt = None,
    fmt: FormatOpt = None,
    classes: ClassesOpt = None,
    test_set: TestSetOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="metrics.json and plots here (default: $DV_DATA_ROOT/runs/vision_qc/eval)"
        ),
    ] = None,
    rule: Annotated[str | None, typer.Option(help="threshold rule: f1 | far")] = None,
    target_far: Annotated[float | None, typer.Option(help="false-alarm target (rule far)")] = None,
    write_threshold: Annotated[
        bool, typer.Option(help="store the chosen threshold in the model directory")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """COCO mAP, per-class AP, detection and false-alarm rates. Changes nothing in the model
    unless --write-threshold is given."""
    from pipelines.vision_qc.evaluate import EvalConfig
    from pipelines.vision_qc.evaluate import evaluate as run

    kw = _stage_config(config, out, "eval")
    kw["data"] = _data(kw.get("data"), data, fmt, classes, test_set)
    for k, v in (("rule", rule), ("target_far", target_far)):
        if v is not None:
            kw[k] = v
    if write_threshold:
        kw["write_threshold"] = True
    cfg = build(EvalConfig, kw)
    bar, update = _progress("evaluating (validation + test images)")
    with bar:
        rep = run(model_dir, cfg, progress=update)
    shown = ("map", "map50", "threshold", "detection_rate", "false_alarm_rate")
    typer.echo(json.dumps({k: v for k, v in rep.to_json().items() if k in shown}))
    typer.echo(f"threshold {rep.threshold:.3f}: {rep.threshold_rule}")
    typer.echo(
        "stored in the model directory"
        if cfg.write_threshold
        else "model directory unchanged (--write-threshold stores the threshold)"
    )
    typer.echo(f"metrics and plots: {cfg.out_dir}")


@app.command()
@exits_on_error
def compress(
    model_dir: Annotated[Path, typer.Argument(help="trained model directory")],
    data: DataOpt = None,
    fmt: FormatOpt = None,
    classes: ClassesOpt = None,
    test_set: TestSetOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="fp32/, int8/ and parity.json here (default: $DV_DATA_ROOT/runs/vision_qc/deploy)"
        ),
    ] = None,
    prune_ratio: Annotated[
        float | None, typer.Option(help="channel pruning of the backbone (default 0)")
    ] = None,
    calibration: Annotated[
        str | None, typer.Option(help="minmax | percentile | entropy | mse (default minmax)")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="gate: allowed INT8 mAP@.5 drop (default 0.01)")
    ] = None,
    int8_scope: Annotated[
        str | None,
        typer.Option(
            help="INT8 convolutions: backbone | backbone+fpn | all (default backbone+fpn)"
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Fuse, (prune,) export fp32 and INT8 ONNX, and report parity on the test images.
    Calibration uses the training images, or the held-out ones where there are none."""
    from pipelines.vision_qc.data import load_dataset
    from pipelines.vision_qc.deploy import DeployConfig
    from pipelines.vision_qc.deploy import deploy as _deploy
    from pipelines.vision_qc.train import partition

    kw = _stage_config(config, out, "deploy")
    dcfg = _data(kw.pop("data", None), data, fmt, classes, test_set)
    given = {
        "prune_ratio": prune_ratio,
        "calibration": calibration,
        "max_map50_drop": max_drop,
        "int8_scope": int8_scope,
    }
    kw.update({k: v for k, v in given.items() if v is not None})  # options win over the file
    deploy_cfg = build(DeployConfig, kw)
    parts = partition(load_dataset(dcfg), dcfg, need_train=False)
    calib = parts["train"] or parts["val"] + parts["test"]
    if not parts["train"]:
        typer.echo(f"no training images: calibrating on the {len(calib)} held-out images")
    with _status("fusing, exporting, quantizing and checking parity"):
        rep = _deploy(model_dir, calib, parts["test"], deploy_cfg)
    out = Path(deploy_cfg.out_dir)
    for v in rep.variants:
        typer.echo(
            f"{v.name:11s} mAP@.5 {v.map50:.4f}  mAP {v.map:.4f}  box agreement {v.box_agreement:.3f}"
        )
    typer.echo(f"INT8 model: {rep.int8_dir}  gate: {'passed' if rep.passed else 'FAILED'}")
    if not rep.passed:
        from core.errors import DVError

        raise DVError(
            "; ".join(rep.reasons),
            where=str(out / "parity.json"),
            fix="try --calibration mse or --int8-scope backbone",
        )


@app.command()
@exits_on_error
def predict(
    model_dir: Annotated[Path, typer.Argument(help="model directory (PyTorch or ONNX)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path | None, typer.Option(help="write predictions JSON here")] = None,
    draw: Annotated[Path | None, typer.Option(help="write annotated images to this folder")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="override the operating threshold")
    ] = None,
    tile: Annotated[str, typer.Option(help="auto | on | off")] = "auto",
) -> None:
    """Detect defects in images; prints or writes JSON, optionally draws the boxes."""
    from core.errors import ConfigError, DataError
    from pipelines.vision_qc.data import IMAGE_EXTS
    from pipelines.vision_qc.evaluate import draw_detections
    from pipelines.vision_qc.predict import DefectDetector

    if tile not in ("auto", "on", "off"):
        raise ConfigError(f"unknown tile mode {tile!r}", fix="use auto, on or off")
    files: list[Path] = []
    for p in images:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        elif p.exists():
            files.append(p)
        else:
            raise DataError("image not found", where=str(p), fix="check the path")
    if not files:
        raise DataError("no images to predict", where=", ".join(map(str, images)), fix="pass files")
    det = DefectDetector(
        model_dir, threshold=threshold, tile={"auto": None, "on": True, "off": False}[tile]
    )
    results: dict[str, Any] = {}
    bad: dict[str, str] = {}

    def one_by_one(chunk: list[Path]) -> list[tuple[Path, Any]]:
        pairs = []
        for f in chunk:
            try:
                pairs.append((f, det.detect(f)))
            except DataError as exc:  # reported at the end; the other images go on
                bad[str(f)] = str(exc)
                results[str(f)] = {"error": str(exc)}
        return pairs

    bar, update = _progress("predicting")
    with bar:
        for i in range(0, len(files), 8):
            chunk = files[i : i + 8]
            try:
                pairs = list(zip(chunk, det.detect_batch(chunk), strict=True))
            except DataError:  # one bad file in the chunk: find it, keep the others
                pairs = one_by_one(chunk)
            for f, r in pairs:
                results[str(f)] = r
                if draw is not None:
                    draw_detections(f, r["detections"], draw / f"{f.stem}.png")
            update(min(i + 8, len(files)), len(files))
    text = json.dumps(results, indent=2)
    if out is not None:
        from core.atomic import atomic_write_text

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
        flagged = sum(bool(r.get("defective")) for r in results.values())
        typer.echo(f"{len(results) - len(bad)} images, {flagged} defective; predictions: {out}")
    else:
        typer.echo(text)
    if bad:
        for why in bad.values():
            typer.echo(f"skipped {why}", err=True)
        raise DataError(
            f"{len(bad)} of {len(files)} images could not be read (the others were predicted)",
            where=next(iter(bad)),
            fix="fix or remove the files named above",
        )


@app.command()
@exits_on_error
def serve(
    model_dir: Annotated[Path | None, typer.Argument(help="model directory to serve")] = None,
    registry: Annotated[
        str | None, typer.Option(help="serve this registered model's alias instead (hot reload)")
    ] = None,
    alias: Annotated[str, typer.Option(help="registry alias to follow")] = "production",
    name: Annotated[str | None, typer.Option(help="model name in URLs")] = None,
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
    max_body_mb: Annotated[float, typer.Option(help="request body limit (MB)")] = 20.0,
    max_images: Annotated[int, typer.Option(help="images per request")] = 16,
    max_megapixels: Annotated[float, typer.Option(help="per image")] = 16.0,
    inspections: Annotated[
        Path | None,
        typer.Option(
            help="where inspected images and reviews are kept; default "
            "DATA_ROOT/vision_qc/inspections"
        ),
    ] = None,
) -> None:
    """Serve the detector over HTTP: POST /v1/models/NAME/predict (multipart or base64 JSON);
    inspections for review at /v1/inspections and the review page at /ui/."""
    from core.paths import data_root
    from core.serve import ServeConfig
    from core.serve.app import app_for
    from core.serve.server import serve as run_server
    from pipelines.vision_qc.serve import ROUTES, UI, DefectPredictor, ServeLimits

    kept = inspections or data_root() / "vision_qc" / "inspections"
    limits = ServeLimits(max_images=max_images, max_pixels=int(max_megapixels * 1e6))
    cfg = ServeConfig(max_body_bytes=int(max_body_mb * 2**20), max_batch_size=8)
    application = app_for(
        lambda path, n, version: DefectPredictor(path, n, version, limits=limits, inspections=kept),
        cfg,
        model_dir,
        registry,
        name,
        alias=alias,
        watch_interval_s=10.0,
        routes=ROUTES,
        ui=UI,
    )
    typer.echo(f"review page: http://{host}:{port}/ui/")
    run_server(application, host, port)


if __name__ == "__main__":
    app()
