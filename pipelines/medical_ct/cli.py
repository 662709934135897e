"""``medical-ct``: the medical_ct command line.

Thin by rule: each command builds the config dataclasses a Python caller builds, calls the
pipeline function and reports. Errors print one line (``error: what at where — fix``) and exit
2; no output ever carries a patient-identifying tag. A typical session::

    medical-ct synth --out data/medical_ct/synth --cases 6
    medical-ct ingest data/medical_ct/synth/case_000/dicom --list
    medical-ct ingest /pacs/export/study1 --out study1.nii.gz
    medical-ct anonymize /pacs/export/study1 /share/study1_anon
    medical-ct train --data data/medical_ct/synth --out data/runs/medical_ct/model
    medical-ct evaluate data/runs/medical_ct/model --data data/medical_ct/test --out eval/
    medical-ct compress data/runs/medical_ct/model --data data/medical_ct/synth --test data/medical_ct/test
    medical-ct predict data/runs/medical_ct/model /pacs/export/study1 --out reports/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import domain_app, exits_on_error

app = domain_app(
    "CT lung-nodule segmentation: synthesise, ingest DICOM, de-identify, train, evaluate, compress, predict, serve."
)


@app.command()
@exits_on_error
def synth(
    out: Annotated[
        Path | None, typer.Option(help="where to write (default: $DV_DATA_ROOT/medical_ct/synth)")
    ] = None,
    cases: Annotated[int, typer.Option(help="studies to write")] = 6,
    size: Annotated[int, typer.Option(help="rows and columns per slice")] = 160,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Write seeded chest-CT phantom studies as DICOM series with NIfTI masks and nodule lists."""
    from rich.progress import track

    from core.paths import data_root
    from pipelines.medical_ct.config import SynthConfig
    from pipelines.medical_ct.synth import write_study

    out = out or data_root() / "medical_ct" / "synth"
    cfg = SynthConfig(out_dir=str(out), n_cases=cases, shape=(size, size), seed=seed)
    n = 0
    for c in track(range(cfg.n_cases), description=f"writing {cfg.n_cases} studies"):
        n += len(write_study(cfg, c, out / f"case_{c:03d}").nodules)
    print(f"{cfg.n_cases} studies with {n} nodules in {out}")


@app.command()
@exits_on_error
def ingest(
    folder: Annotated[
        Path, typer.Argument(help="folder of DICOM files (any depth), or a .nii/.nii.gz")
    ],
    list_series: Annotated[
        bool, typer.Option("--list", help="print the folder's series and stop")
    ] = False,
    series: Annotated[
        str | None, typer.Option("--series", help="read this SeriesInstanceUID")
    ] = None,
    resample_gaps: Annotated[
        bool, typer.Option(help="interpolate missing slices (and say so) instead of failing")
    ] = False,
    skip_corrupt: Annotated[bool, typer.Option(help="skip unreadable DICOM files")] = False,
    out: Annotated[Path | None, typer.Option(help="write the volume as NIfTI (.nii.gz)")] = None,
) -> None:
    """Read the axial CT series of a folder; say which series were skipped and why."""
    from pipelines.medical_ct.config import IngestConfig
    from pipelines.medical_ct.data import (
        choose_series,
        index_folder,
        read_dicom,
        read_nifti,
        write_nifti,
    )

    cfg = IngestConfig(series_uid=series, resample_gaps=resample_gaps, skip_corrupt=skip_corrupt)
    if list_series:
        idx = index_folder(folder, cfg)
        try:
            choose_series(idx, cfg)
        except Exception as exc:  # still list them; the reason is in each row
            print(f"no series chosen: {exc}")
        for r in (s.row() for s in idx.series):
            print(
                f"{r['status']:8} {r['series_uid']}  #{r['number']}  {r['modality']}  "
                f"{r['images']:4d} images {r['size']}  {r['description']!r}"
                + (f"  — {r['reason']}" if r["reason"] else "")
            )
        if idx.skipped_files:
            print(
                "files skipped: " + ", ".join(f"{n} {k}" for k, n in idx.skipped_counts().items())
            )
        return
    name = folder.name.lower()
    vol = read_nifti(folder) if name.endswith((".nii", ".nii.gz")) else read_dicom(folder, cfg)
    summary = {
        "series_uid": vol.series_uid,
        "shape": vol.shape,
        "spacing_mm": [round(s, 4) for s in vol.spacing],
        "origin_mm": [round(o, 3) for o in vol.origin],
        "hu_range": [float(vol.array.min()), float(vol.array.max())],
        **{
            k: vol.meta[k]
            for k in ("skipped_files", "resampled_gaps", "gantry_tilt_deg")
            if k in vol.meta
        },
        "skipped_series": [
            {"series_uid": s["series_uid"], "reason": s["reason"]}
            for s in vol.meta.get("skipped_series", [])
        ],
    }
    print(json.dumps(summary, indent=1))
    if out:
        write_nifti(vol, out)
        print(f"wrote {out}")


@app.command()
@exits_on_error
def anonymize(
    src: Annotated[Path, typer.Argument(help="folder of DICOM files")],
    dst: Annotated[Path, typer.Argument(help="output folder (created; replaced if it exists)")],
    key: Annotated[
        str | None, typer.Option(help="secret fixing the UID mapping across runs (default: random)")
    ] = None,
) -> None:
    """De-identify by the DICOM PS3.15 basic profile; series stay series."""
    from pipelines.medical_ct.anonymize import anonymize_folder

    rep = anonymize_folder(src, dst, key=key)
    skipped = ", ".join(f"{n} {k}" for k, n in rep.skipped.items()) or "none"
    print(
        f"{rep.files} files in {rep.series} series written to {rep.out_dir} (not copied: {skipped})"
    )


@app.command()
@exits_on_error
def train(
    data: Annotated[
        Path | None,
        typer.Option(help="folder of case folders (default: $DV_DATA_ROOT/medical_ct/synth)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="model directory (default: $DV_DATA_ROOT/runs/medical_ct/model)"),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (default 400)")] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed of patches, augmentation and weights")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON with TrainConfig fields (model, trainer sections...)")
    ] = None,
) -> None:
    """Train the nodule U-Net on labelled cases (dicom/ or image.nii.gz + mask.nii.gz each)."""
    from core.cliutil import read_json_config
    from core.paths import data_root
    from core.typedconfig import build
    from pipelines.medical_ct.train import TrainConfig
    from pipelines.medical_ct.train import train as run_train

    kw = read_json_config(config)
    if data is not None or "data" not in kw:
        kw["data"] = str(data or data_root() / "medical_ct" / "synth")
    if out is not None or "out_dir" not in kw:
        kw["out_dir"] = str(out or data_root() / "runs" / "medical_ct" / "model")
    if seed is not None:
        kw["seed"] = seed
    cfg = build(TrainConfig, kw)
    if steps is not None:
        cfg.trainer.max_steps = steps
    res, path = run_train(cfg)
    print(f"model written to {path} ({res.global_step} steps, {res.elapsed_s:.0f} s)")


@app.command()
@exits_on_error
def evaluate(
    model: Annotated[Path, typer.Argument(help="model directory")],
    data: Annotated[Path, typer.Option(help="folder of labelled case folders")],
    out: Annotated[Path | None, typer.Option(help="write eval.json and froc.png here")] = None,
) -> None:
    """Per-case Dice, FROC, CPM, sensitivity at 1 FP/scan and size errors on labelled cases."""
    from rich.progress import Progress

    from pipelines.medical_ct.deploy import load_deployed
    from pipelines.medical_ct.evaluate import evaluate_cases, write_report
    from pipelines.medical_ct.train import load_cases

    seg = load_deployed(model)
    cases = load_cases(data)
    with Progress(transient=True) as bar:
        task = bar.add_task("evaluating", total=len(cases))
        rep = evaluate_cases(
            cases, lambda v: seg(v)[:2], progress=lambda i, n: bar.update(task, completed=i)
        )
    s = rep.summary()
    s.pop("froc")
    print(json.dumps(s, indent=1))
    if out:
        write_report(rep, out)
        print(f"wrote {out}/eval.json and froc.png")


@app.command()
@exits_on_error
def compress(
    model: Annotated[Path, typer.Argument(help="trained model directory (medical-ct train)")],
    data: Annotated[Path, typer.Option(help="training cases (INT8 calibration patches)")],
    test: Annotated[Path, typer.Option(help="labelled test cases (the parity report)")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="fp32/, int8/ and parity.json here (default: $DV_DATA_ROOT/runs/medical_ct/deploy)"
        ),
    ] = None,
    prune: Annotated[
        float, typer.Option(help="channel pruning ratio, no fine-tuning (0 = off)")
    ] = 0.0,
    calibration: Annotated[
        str, typer.Option(help="minmax | percentile | entropy | mse")
    ] = "percentile",
    config: Annotated[Path | None, typer.Option(help="JSON with DeployConfig fields")] = None,
) -> None:
    """Prune (optional), export fp32 and INT8 ONNX, and report parity on test cases; exits 1
    when the INT8 model fails the gate (its directory is still written, for inspection)."""
    from core.cliutil import read_json_config
    from core.paths import data_root
    from core.typedconfig import build
    from pipelines.medical_ct.deploy import DeployConfig, deploy
    from pipelines.medical_ct.train import load_cases

    kw = {"prune_ratio": prune, "calibration": calibration, **read_json_config(config)}
    kw["out_dir"] = str(out or kw.get("out_dir") or data_root() / "runs" / "medical_ct" / "deploy")
    cfg = build(DeployConfig, kw)
    rep = deploy(model, load_cases(data), load_cases(test), cfg)
    for v in rep.variants:
        dice = "-" if v.dice_mean is None else f"{v.dice_mean:.4f}"
        print(f"{v.name:11s} Dice {dice}  CPM {v.cpm:.4f}  agreement {v.agreement:.4f}  "
              f"{v.size_bytes / 1e6:.2f} MB  {v.path}")  # fmt: skip
    print(f"INT8 Dice drop {rep.dice_drop:.4f}, size ratio {rep.size_ratio:.2f}x; "
          f"gate {'passed' if rep.passed else 'FAILED: ' + '; '.join(rep.reasons)}")  # fmt: skip
    if not rep.passed:
        raise typer.Exit(1)


@app.command()
@exits_on_error
def predict(
    model: Annotated[Path, typer.Argument(help="model directory")],
    studies: Annotated[list[Path], typer.Argument(help="DICOM folders or NIfTI files")],
    out: Annotated[Path, typer.Option(help="report folders are written under this folder")],
    series: Annotated[
        str | None, typer.Option("--series", help="SeriesInstanceUID (one study)")
    ] = None,
) -> None:
    """Nodule reports (JSON, Markdown, overlays, NIfTI mask, DICOM SEG) for each study."""
    from rich.progress import track

    from pipelines.medical_ct.config import IngestConfig
    from pipelines.medical_ct.predict import NoduleSegmenter
    from pipelines.medical_ct.report import write_report

    seg = NoduleSegmenter(model)
    names = [
        s.name.removesuffix(".gz").removesuffix(".nii") or f"study_{i}"
        for i, s in enumerate(studies)
    ]
    if len(set(names)) != len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    for study, name in track(list(zip(studies, names, strict=True)), description="reading studies"):
        res = seg.predict(study, IngestConfig(series_uid=series))
        path = write_report(res, out / name)
        print(f"{study}: {len(res.nodules)} nodule(s) -> {path}")


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
    max_body_mb: Annotated[float, typer.Option(help="upload limit (MB)")] = 500.0,
    max_files: Annotated[int, typer.Option(help="files in an uploaded zip")] = 2000,
    max_voxels: Annotated[int, typer.Option(help="voxels of the uploaded volume")] = 512
    * 512
    * 1000,
    studies: Annotated[
        Path | None,
        typer.Option(
            help="where segmented studies and reviews are kept; default "
            "DATA_ROOT/medical_ct/studies"
        ),
    ] = None,
) -> None:
    """Serve the segmenter over HTTP: POST /v1/models/NAME/predict with a zipped DICOM series
    or a NIfTI file (multipart); the answer is the nodule list. Studies kept for review at
    /v1/studies, and the review page at /ui/."""
    from core.paths import data_root
    from core.serve import ServeConfig
    from core.serve.app import app_for
    from core.serve.server import serve as run_server
    from pipelines.medical_ct.serve import ROUTES, UI, NodulePredictor, UploadLimits

    kept = studies or data_root() / "medical_ct" / "studies"

    limits = UploadLimits(max_files=max_files, max_voxels=max_voxels)
    cfg = ServeConfig(
        max_body_bytes=int(max_body_mb * 2**20), max_batch_size=1, request_timeout_s=600.0
    )
    application = app_for(
        lambda path, n, version: NodulePredictor(path, n, version, limits=limits, studies=kept),
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
