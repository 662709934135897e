"""The medical_ct flow: the gate's logic through .fn(), and a real flow run under the Prefect
test server (tiny phantoms and a short training: this checks the wiring, not the accuracy)."""

from __future__ import annotations

import json

import pytest

from core.registry import ModelRegistry
from core.train import TrainerConfig
from flows.medical_ct import medical_ct_flow, parity_gate
from flows.tasks import ParityGateError
from pipelines.medical_ct.config import SynthConfig
from pipelines.medical_ct.deploy import DeployConfig
from pipelines.medical_ct.model import ModelConfig
from pipelines.medical_ct.train import TrainConfig


def test_parity_gate_passes_a_passed_report_and_names_the_failed_checks():
    assert parity_gate.fn({"passed": True, "reasons": [], "dice_drop": 0.002}) == 0.002
    with pytest.raises(ParityGateError, match=r"INT8 Dice drop 0\.0300 > 0\.01"):
        parity_gate.fn(
            {"passed": False, "reasons": ["INT8 Dice drop 0.0300 > 0.01"], "dice_drop": 0.03}
        )


@pytest.mark.slow
def test_medical_ct_flow_end_to_end(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    synth = SynthConfig(
        n_cases=2,
        shape=(64, 64),
        fov_mm=(300.0, 320.0),
        thickness_mm=(2.5,),
        z_extent_mm=40.0,
        nodules=(2, 2),
        diameter_mm=(8.0, 14.0),
    )
    summary = medical_ct_flow(
        data_dir=str(tmp_path / "train"),
        synth=synth,
        test_cases=1,
        train_cfg=TrainConfig(
            model=ModelConfig(filters=(8, 16, 32), roi=(16, 32, 32), spacing_mm=(2.5, 2.5, 2.5)),
            trainer=TrainerConfig(max_steps=6, batch_size=2, progress="off", eval_every_n_epochs=0),
            patches_per_epoch=4,
        ),
        deploy_cfg=DeployConfig(calibration_patches=4, max_dice_drop=1.0, min_agreement=0.0),
        run_dir=str(tmp_path / "run"),
        model_name="ct-e2e",
    )
    assert summary["train"]["cases"] == 2 and summary["test"]["cases"] == 1
    assert summary["train"]["nodules"] == 4 and summary["train_steps"] == 6
    assert (tmp_path / "train_test" / "case_000" / "mask.nii.gz").is_file()  # the test set
    assert summary["version"] == "1" and summary["alias"] == "production"
    assert set(summary["parity"]) == {"fp32_torch", "fp32_onnx", "int8_onnx"}
    assert summary["parity_cpm"]["fp32_torch"] == pytest.approx(
        summary["parity_cpm"]["fp32_onnx"], abs=1e-6
    )
    mv = ModelRegistry().get("ct-e2e", alias="production")
    assert (mv.path / "model.onnx").is_file()
    assert json.loads((mv.path / "config.json").read_text())["task"] == "medical_ct"
    parity = json.loads((tmp_path / "run" / "deploy" / "parity.json").read_text())
    assert parity["cases"] == 1
    assert (tmp_path / "run" / "eval" / "froc.png").is_file()
