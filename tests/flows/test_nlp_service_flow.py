"""The nlp_service flow: a real flow run trains, evaluates, compresses, registers and promotes
(promote-if-better itself is flows.tasks.release, tested with the other flows); the INT8
gate names what failed."""

from __future__ import annotations

import pytest

from core.registry import ModelRegistry
from flows.nlp_service import gate, nlp_service_flow
from flows.tasks import ParityGateError
from pipelines.nlp_service.config import SynthConfig, TrainConfig


def test_gate_names_what_failed():
    ok = {"served": "int8", "intent_agreement": 0.99, "cosine_mean": 0.995}
    assert gate.fn(ok) is ok
    with pytest.raises(ParityGateError, match=r"cosine 0\.9"):
        gate.fn({"served": "fp32", "why": "INT8 mean cosine 0.9 < 0.99", "intent_agreement": 1.0})
    with pytest.raises(ParityGateError, match=r"agreement 0\.900"):
        gate.fn({**ok, "intent_agreement": 0.9})


@pytest.mark.slow
def test_flow_trains_compresses_registers_and_promotes(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setattr("flows.nlp_service.MIN_COSINE", 0.9)  # 20 steps of training
    monkeypatch.setattr("flows.nlp_service.MIN_AGREEMENT", 0.8)
    cfg = TrainConfig(synth=SynthConfig(per_intent=10, dialogues=20), max_steps=20, lr=1e-4)
    s = nlp_service_flow(train_cfg=cfg, run_dir=str(tmp_path / "run"), model_name="nlp-test")
    assert s["alias"] == "production" and s["version"] == "1"
    assert 0.0 <= s["eval"]["accuracy_independent"] <= 1.0
    assert (tmp_path / "run" / "deployed" / "model.onnx").is_file()
    mv = ModelRegistry().find("nlp-test")
    assert mv is not None and (mv.path / "model.onnx").is_file()
    assert s["promotion_reason"]
