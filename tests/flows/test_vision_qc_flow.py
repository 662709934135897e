"""The vision_qc flow: the gate's logic through .fn(), and a real flow run under the Prefect
test server (tiny data and a short training: this checks the wiring, not the accuracy)."""

from __future__ import annotations

import json

import pytest

from core.registry import ModelRegistry
from core.train import TrainerConfig
from flows.tasks import ParityGateError
from flows.vision_qc import parity_gate, vision_qc_flow
from pipelines.vision_qc.config import DataConfig, SynthConfig
from pipelines.vision_qc.deploy import DeployConfig
from pipelines.vision_qc.train import TrainConfig


def test_parity_gate_passes_a_passed_report_and_names_the_failed_checks():
    assert parity_gate.fn({"passed": True, "reasons": [], "map50_drop": 0.004}) == 0.004
    with pytest.raises(ParityGateError, match=r"INT8 mAP@\.5 drop 0\.0300 > 0\.01"):
        parity_gate.fn(
            {"passed": False, "reasons": ["INT8 mAP@.5 drop 0.0300 > 0.01"], "map50_drop": 0.03}
        )


@pytest.mark.slow
def test_vision_qc_flow_end_to_end(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    classes = ("hole", "stain")
    summary = vision_qc_flow(
        data_dir=str(tmp_path / "set"),
        synth=SynthConfig(
            surfaces=("brushed_metal",),
            defects=classes,
            n_train_good=8,
            n_test_good=4,
            n_test_per_defect=4,
        ),
        train_cfg=TrainConfig(
            data=DataConfig(classes=classes),
            trainer=TrainerConfig(
                max_epochs=4, batch_size=4, progress="off", eval_every_n_epochs=0
            ),
        ),
        deploy_cfg=DeployConfig(calibration_images=8, max_map50_drop=1.0, min_box_agreement=0.0),
        run_dir=str(tmp_path / "run"),
        model_name="vqc-e2e",
    )
    assert summary["split"] == {"train": 8, "val": 6, "test": 6}
    assert summary["images"] == 20 and summary["train_steps"] == 8
    assert summary["version"] == "1" and summary["alias"] == "production"
    assert set(summary["parity"]) == {"fp32_torch", "fp32_onnx", "int8_onnx"}
    assert summary["parity"]["fp32_torch"] == pytest.approx(
        summary["parity"]["fp32_onnx"], abs=1e-3
    )
    mv = ModelRegistry().get("vqc-e2e", alias="production")
    assert (mv.path / "model.onnx").is_file()
    parity = json.loads((tmp_path / "run" / "deploy" / "parity.json").read_text())
    assert parity["images"] == 6
    assert (tmp_path / "run" / "eval" / "pr_curves.png").is_file()
