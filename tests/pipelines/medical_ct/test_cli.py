"""The medical-ct CLI: synth, ingest (--list, --out), anonymize; one-line errors, exit 2."""

from __future__ import annotations

import json

import pydicom
from typer.testing import CliRunner

from pipelines.medical_ct.cli import app
from pipelines.medical_ct.data import read_nifti

runner = CliRunner()


def test_synth_ingest_list_out_and_anonymize(tmp_path):
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--cases", "1", "--size", "64"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "s" / "case_000" / "dicom"
    r = runner.invoke(app, ["ingest", str(folder), "--list"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith(("chosen", "skipped"))]
    assert len(lines) == 2 and lines[0].startswith("skipped") and "scout/localizer" in lines[0]
    assert lines[1].startswith("chosen")
    r = runner.invoke(app, ["ingest", str(folder), "--out", str(tmp_path / "v.nii.gz")])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[: r.output.rindex("}") + 1])
    assert summary["shape"] == list(read_nifti(tmp_path / "v.nii.gz").shape)
    assert "Phantom" not in r.output and "PID-" not in r.output
    r = runner.invoke(app, ["anonymize", str(folder), str(tmp_path / "anon"), "--key", "k"])
    assert r.exit_code == 0, r.output
    assert "2 series" in r.output
    ds = pydicom.dcmread(next((tmp_path / "anon").rglob("*.dcm")))
    assert "Phantom" not in str(ds.PatientName)


def test_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "a.txt").write_text("no dicom here")
    r = runner.invoke(app, ["ingest", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: no DICOM image found (1 not DICOM)")
    assert len(r.output.strip().splitlines()) == 1


def test_train_evaluate_predict(tmp_path):
    """The whole CLI path on a tiny model (few steps: the figures are not the point here)."""
    tiny = {
        "model": {"filters": [4, 8, 16], "roi": [16, 32, 32], "spacing_mm": [2.5, 2.5, 2.5]},
        "trainer": {"progress": "off"},
    }
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--cases", "2", "--size", "64"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "m"),
            "--steps",
            "3",
            "--config",
            str(tmp_path / "tiny.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 steps" in r.output
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert (
        ev["n_cases"] == 2
        and len(ev["dice_per_case"]) == 2
        and (tmp_path / "e" / "froc.png").exists()
    )
    study = tmp_path / "s" / "case_000" / "dicom"
    r = runner.invoke(
        app, ["predict", str(tmp_path / "m"), str(study), "--out", str(tmp_path / "r")]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r" / "dicom" / "report.json").read_text())
    assert rep["shape"] == list(read_nifti(tmp_path / "r" / "dicom" / "mask.nii.gz").shape)
    # compress: INT8 at every conv of 8+ channels (the tiny model has none of 16); the gate
    # exits 1 when it fails and says why, and the INT8 directory then predicts like any other
    common = ["compress", str(tmp_path / "m"), "--data", str(tmp_path / "s"), "--test",
              str(tmp_path / "s"), "--out", str(tmp_path / "d")]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps({"int8_min_channels": 8, "calibration_patches": 4}))
    r = runner.invoke(app, [*common, "--config", str(tmp_path / "d.json")])
    assert r.exit_code in (0, 1), r.output
    assert "int8_onnx" in r.output and "size ratio" in r.output
    parity = json.loads((tmp_path / "d" / "parity.json").read_text())
    assert r.exit_code == (0 if parity["passed"] else 1)
    strict = {"int8_min_channels": 8, "calibration_patches": 4, "min_agreement": 1.01}
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    r = runner.invoke(app, [*common, "--config", str(tmp_path / "strict.json")])
    assert r.exit_code == 1 and "FAILED: INT8 mask agreement" in r.output, r.output
    r = runner.invoke(
        app, ["predict", str(tmp_path / "d" / "int8"), str(study), "--out", str(tmp_path / "r8")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r8" / "dicom" / "report.json").is_file()
