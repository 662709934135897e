"""medical_ct benchmark (results in benchmarks/results/medical_ct.json).

Sections (``--sections``, default all):

- ``ingest``: phantom studies (every stored-pixel encoding and file layout of ``synth.py``)
  plus trap series (oblique, gantry-tilted, reversed, shuffled ``InstanceNumber``, non-square
  pixels) read by ``read_dicom`` and by SimpleITK's ``ImageSeriesReader`` (GDCM).
  ``ingest.simpleitk_parity``: the fraction of series whose array, spacing, origin and
  direction agree (target 1). ``ingest.files_per_s`` and ``ingest.speedup_vs_simpleitk``:
  whole-folder reading (index + choose + load, against SimpleITK's series lookup + read), timed
  interleaved (``core.compress.report.interleaved_latency``).
- ``train`` / ``test``: train on seeded studies (seed 0), test on a differently seeded and
  differently configured set (other slice thicknesses, fields of view, noise, nodule mix), one
  run on this machine; training budget ``--steps``. Keys ``test.dice_mean`` (nodules >= 5 mm,
  per case), ``test.cpm``, ``test.sensitivity_at_1fp``, ``test.diameter_mae_mm``.

- ``heldout``: the same model on ``benchmarks/heldout_ct.py``'s studies (another generator:
  anatomy, nodule shapes, scanner noise and artefacts, export layout), the figures an outside
  tester would see.

- ``int8``: ``deploy.py`` on the trained model (calibration on training patches, parity on the
  test set): ``int8.dice_drop`` (fp32 PyTorch Dice minus INT8 Dice, absolute),
  ``int8.size_ratio`` (fp32 ONNX file / INT8 ONNX file), mask agreement, CPM of each variant.
- ``inference``: whole-volume inference of one test study, interleaved
  (``core.compress.report.interleaved_latency``): MONAI ``sliding_window_inference`` with the
  fp32 PyTorch model over the whole volume (the peer) against our deployed INT8 model (ONNX
  Runtime, only the windows that hold a lung-field voxel), same roi, overlap and Gaussian
  blending, both ending on the CT grid. ``inference.speedup_vs_monai``; the INT8 model over the
  whole volume and the fp32 ONNX model on the lung windows are timed too, so the two sources
  of the speed-up read apart.

Run: ``.venv/bin/python benchmarks/medical_ct.py [--sections ingest,train] [--steps 2000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEP_MODEL = Path(__file__).resolve().parents[1] / "data" / "runs" / "medical_ct" / "bench_model"
OBLIQUE = (0.9659258, 0.2588190, 0.0, -0.2241439, 0.8365163, 0.5)


def _sitk_read(folder: Path, uid: str, orthogonal: bool = True) -> Any:
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder), uid, False, True))  # recursive
    if not orthogonal:
        r.ForceOrthogonalDirectionOff()
    return r.Execute()


def _equal(vol: Any, img: Any, pad_hu: float | None) -> bool:
    import SimpleITK as sitk

    ref = sitk.GetArrayFromImage(img).astype(np.float32)
    if pad_hu is not None:
        ref[ref == pad_hu] = -1024.0
    return bool(
        ref.shape == vol.array.shape
        and np.allclose(vol.array, ref, atol=1e-3)
        and np.allclose(vol.spacing, img.GetSpacing()[::-1], rtol=1e-5)
        and np.allclose(vol.origin, img.GetOrigin(), atol=1e-4)
        and np.allclose(vol.direction, np.array(img.GetDirection()).reshape(3, 3), atol=1e-5)
    )


def ingest_section(work: Path, n_studies: int, size: int) -> dict[str, Any]:
    from core.compress.report import interleaved_latency
    from pipelines.medical_ct.config import IngestConfig, SynthConfig
    from pipelines.medical_ct.data import read_dicom
    from pipelines.medical_ct.synth import (
        ENCODINGS,
        SeriesSpec,
        axial_positions,
        write_series,
        write_study,
    )

    cfg = SynthConfig(shape=(size, size), n_cases=n_studies, seed=0)
    series: list[
        tuple[str, Path, str, bool, float | None]
    ] = []  # name, folder, uid, tilted, pad HU
    for c in range(n_studies):
        st = write_study(cfg, c, work / f"study_{c:02d}")
        _, intercept, slope, _, pad = ENCODINGS[st.scanner["encoding"]]
        pad_hu = pad * slope + intercept if pad is not None else None
        series.append(
            (
                f"study_{c:02d} ({st.scanner['encoding']}, {st.scanner['layout']})",
                st.folder / "dicom",
                st.series_uid,
                False,
                pad_hu,
            )
        )
    rng = np.random.default_rng(0)
    hu = rng.normal(-500, 300, (40, size, size)).astype(np.float32)
    traps = {
        "oblique": {"iop": OBLIQUE},
        "tilted_15deg": {"tilt": 15.0},
        "reversed": {"reverse": True},
        "shuffled_instances": {"shuffle": True},
        "non_square_pixels": {"spacing": (0.62, 0.81)},
    }
    for name, t in traps.items():
        iop = t.get("iop", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
        normal = np.cross(iop[:3], iop[3:])
        pos = np.array([-100.0, -120.0, -60.0]) + np.arange(len(hu))[:, None] * normal * 1.25
        if "tilt" in t:
            pos = axial_positions((-100.0, -120.0, -60.0), 1.25, len(hu), t["tilt"])
        inst = list(range(1, len(hu) + 1))
        if t.get("reverse"):
            inst = inst[::-1]
        if t.get("shuffle"):
            inst = [int(i) for i in rng.permutation(inst)]
        uid = f"1.2.826.0.1.3680043.8.498.77.{len(series)}"
        spec = SeriesSpec(
            pixel_spacing=t.get("spacing", (0.7, 0.7)),
            positions=pos,
            iop=iop,
            thickness=1.25,
            series_uid=uid,
            instance_numbers=inst,
            file_names=[f"f{(k * 37) % len(hu):04d}" for k in range(len(hu))],
        )
        write_series(hu, spec, work / name)
        series.append((name, work / name, uid, "tilt" in t, None))
    rows, equal = [], 0
    n_files = 0
    t_ours = t_sitk = 0.0
    for name, folder, uid, tilted, pad_hu in series:
        vol = read_dicom(folder)
        ok = _equal(vol, _sitk_read(folder, uid, not tilted), pad_hu)
        equal += ok
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        n_files += files

        def ours(folder: Path = folder) -> None:
            read_dicom(folder, IngestConfig())

        def theirs(folder: Path = folder, tilted: bool = tilted) -> None:
            import SimpleITK as sitk

            # GDCM lists series per directory: walk the folder as a SimpleITK user must
            ids = {
                i for d, _, _ in os.walk(folder) for i in sitk.ImageSeriesReader.GetGDCMSeriesIDs(d)
            }
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames
            best = max(ids, key=lambda i: len(names(str(folder), i, False, True)))
            _sitk_read(folder, best, not tilted)

        t = interleaved_latency({"ours": ours, "simpleitk": theirs}, rounds=3, block=2, settle=1)
        t_ours += t["ours"]
        t_sitk += t["simpleitk"]
        rows.append(
            {
                "series": name,
                "files": files,
                "equal": ok,
                "ours_s": t["ours"],
                "simpleitk_s": t["simpleitk"],
            }
        )
        print(
            f"  {name}: {files} files, equal to SimpleITK: {ok}, {t['ours']:.3f} s vs {t['simpleitk']:.3f} s",
            flush=True,
        )
    return {
        "simpleitk_parity": equal / len(series),
        "series": len(series),
        "files_per_s": n_files / t_ours,
        "simpleitk_files_per_s": n_files / t_sitk,
        "speedup_vs_simpleitk": t_sitk / t_ours,
        "rows": rows,
    }


def deploy_section(
    work: Path, model: Path, train_dir: str, test_dir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from core.compress.report import interleaved_latency
    from pipelines.medical_ct.deploy import DeployConfig, deploy, load_deployed
    from pipelines.medical_ct.model import (
        load_segmenter,
        predict_probability,
        resample,
        sliding_window,
        to_model_grid,
    )
    from pipelines.medical_ct.train import load_cases

    test = load_cases(test_dir)
    rep = deploy(model, load_cases(train_dir), test, DeployConfig(out_dir=str(work / "deploy")))
    v = {x.name: x for x in rep.variants}
    int8 = {
        "dice_drop": rep.dice_drop,
        "size_ratio": rep.size_ratio,
        "agreement": v["int8_onnx"].agreement,
        "passed": rep.passed,
        "reasons": rep.reasons,
        "variants": {
            k: {"dice_mean": x.dice_mean, "cpm": x.cpm, "size_bytes": x.size_bytes}
            for k, x in v.items()
        },
        "compression": rep.compression,
    }
    print(f"  int8: Dice drop {rep.dice_drop:.4f}, size ratio {rep.size_ratio:.2f}, "
          f"agreement {int8['agreement']:.4f}", flush=True)  # fmt: skip
    vol = max(test, key=lambda c: c.volume.array.size).volume
    torch_seg = load_segmenter(model)
    net, cfg = torch_seg.net, torch_seg.cfg
    q = load_deployed(Path(rep.int8_dir), threads=torch.get_num_threads())
    f = load_deployed(Path(rep.fp32_dir), threads=torch.get_num_threads())
    whole = type(cfg)(**{**cfg.__dict__, "lung_field": False})

    def monai() -> None:  # the peer: MONAI over the whole volume, fp32 PyTorch, on the CT grid
        x = to_model_grid(vol, cfg)
        prob = torch.softmax(sliding_window(net, x, cfg).float(), dim=1)[:, 1:2]
        resample(prob, vol.shape)

    t = interleaved_latency(
        {
            "monai_fp32_whole": monai,
            "ours_int8_lung_windows": lambda: predict_probability(q.net, vol, cfg),
            "int8_whole": lambda: predict_probability(q.net, vol, whole),
            "fp32_onnx_lung_windows": lambda: predict_probability(f.net, vol, cfg),
        },
        rounds=3,
        block=1,
        settle=1,
    )
    inference = {
        "volume_shape": list(vol.shape),
        "spacing_mm": list(vol.spacing),
        "seconds": t,
        "speedup_vs_monai": t["monai_fp32_whole"] / t["ours_int8_lung_windows"],
        "int8_whole_speedup_vs_monai": t["monai_fp32_whole"] / t["int8_whole"],
        "fp32_onnx_lung_windows_speedup_vs_monai": t["monai_fp32_whole"]
        / t["fp32_onnx_lung_windows"],
    }
    print(f"  inference: {inference['speedup_vs_monai']:.2f}x MONAI ({t})", flush=True)
    return int8, inference


def train_test_section(
    work: Path,
    steps: int,
    n_train: int,
    n_test: int,
    n_heldout: int,
    size: int,
    model: Path | None,
) -> dict[str, Any]:
    from benchmarks.heldout_ct import HeldoutConfig, write_heldout
    from pipelines.medical_ct.config import SynthConfig
    from pipelines.medical_ct.evaluate import evaluate_cases
    from pipelines.medical_ct.model import load_segmenter
    from pipelines.medical_ct.synth import test_config, write_dataset
    from pipelines.medical_ct.train import TrainConfig, default_trainer, load_cases, train

    train_cfg = SynthConfig(  # 3-8 nodules a study: more nodules to learn from per study
        out_dir=str(work / "train"), n_cases=n_train, shape=(size, size), seed=0, nodules=(3, 8)
    )
    # other scanners: spacing, thickness, noise, nodule mix (seed 1000)
    test_cfg = test_config(train_cfg, str(work / "test"), n_test)
    write_dataset(test_cfg)
    write_heldout(
        HeldoutConfig(out_dir=str(work / "heldout"), n_cases=n_heldout, shape=(size, size))
    )
    out: dict[str, Any] = {}
    sets = [("test", test_cfg.out_dir), ("heldout", str(work / "heldout"))]
    write_dataset(train_cfg)  # also with --model: INT8 calibrates on training patches
    if model is None:
        tr = default_trainer()
        tr.max_steps, tr.progress, tr.log_every_n_steps = steps, "plain", 50
        t0 = time.perf_counter()
        res, model = train(TrainConfig(data=train_cfg.out_dir, out_dir=str(KEEP_MODEL), trainer=tr))
        out["train"] = {
            "steps": res.global_step,
            "seconds": time.perf_counter() - t0,
            "cases": n_train,
        }
        sets.insert(0, ("own", train_cfg.out_dir))
    seg = load_segmenter(model)
    out["int8"], out["inference"] = deploy_section(work, model, train_cfg.out_dir, test_cfg.out_dir)
    for name, folder in sets:
        rep = evaluate_cases(load_cases(folder), lambda v: seg(v)[:2])
        s = rep.summary()
        s.pop("froc")
        out[name] = s
        print(
            f"  {name}: dice {s['dice_mean']}, CPM {s['cpm']:.3f}, "
            f"sens@1FP {s['sensitivity_at_1fp']:.3f}, FP/scan {s['fp_per_scan']:.1f}",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="ingest,train")
    ap.add_argument(
        "--steps", type=int, default=1800, help="training steps (about 0.7 s each on 2 cores)"
    )
    ap.add_argument("--train-cases", type=int, default=16)
    ap.add_argument("--test-cases", type=int, default=8)
    ap.add_argument("--heldout-cases", type=int, default=6)
    ap.add_argument("--model", type=Path, help="evaluate this model directory instead of training")
    ap.add_argument("--studies", type=int, default=4, help="phantom studies in the ingest section")
    ap.add_argument("--size", type=int, default=192, help="rows and columns of generated slices")
    ap.add_argument("--no-write", action="store_true", help="print, do not write the JSON")
    args = ap.parse_args()
    from benchmarks._common import print_table, write_result
    from core.cliutil import setup_logging

    setup_logging()  # training progress lines (step/total, loss, ETA)

    sections = set(args.sections.split(","))
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dv-ct-bench-") as tmp:
        work = Path(tmp)
        if "ingest" in sections:
            print("ingest: ours vs SimpleITK", flush=True)
            result["ingest"] = ingest_section(work / "ingest", args.studies, args.size)
        if "train" in sections:
            print(
                f"train {args.steps} steps on {args.train_cases} cases, test on {args.test_cases}",
                flush=True,
            )
            result.update(
                train_test_section(
                    work / "tt",
                    args.steps,
                    args.train_cases,
                    args.test_cases,
                    args.heldout_cases,
                    args.size,
                    args.model,
                )
            )
    if "ingest" in result:
        i = result["ingest"]
        print_table(
            "medical_ct ingest",
            ["series", "SimpleITK parity", "files/s", "SimpleITK files/s", "speedup"],
            [
                [
                    i["series"],
                    i["simpleitk_parity"],
                    i["files_per_s"],
                    i["simpleitk_files_per_s"],
                    i["speedup_vs_simpleitk"],
                ]
            ],
        )
    if not args.no_write:
        import json

        old = Path(__file__).parent / "results" / "medical_ct.json"
        prev = json.loads(old.read_text()) if old.exists() else {}
        keep = [] if "ingest" in sections else ["ingest"]  # sections not run this time
        if args.model is not None:  # and the training run this model came from
            keep += ["train", "own"]
            result["model_reused"] = str(args.model)
        result = {**{k: prev[k] for k in keep if k in prev}, **result}
        print(write_result("medical_ct", result))


if __name__ == "__main__":
    main()
