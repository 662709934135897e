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
