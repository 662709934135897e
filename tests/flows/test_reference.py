"""The reference flow: task logic through .fn(), and real flow runs under a Prefect test server."""

from __future__ import annotations

import pytest

from flows.reference import ParityGateError, parity_gate, reference_flow


def test_parity_gate_passes_small_drops_and_stops_large_ones():
    assert parity_gate.fn(0.99, 0.985, 0.01) == pytest.approx(0.005)
    with pytest.raises(
        ParityGateError, match=r"INT8 accuracy 0\.9500 is 0\.0400 below fp32 0\.9900"
    ):
        parity_gate.fn(0.99, 0.95, 0.01)


@pytest.mark.slow
def test_reference_flow_end_to_end_then_a_rerun_stays_candidate(
    prefect_harness, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    first = reference_flow(run_dir=str(tmp_path / "run1"), epochs=2, model_name="digits-e2e")
    assert first["fp32_accuracy"] > 0.9 and first["int8_drop"] <= 0.01
    assert first["version"] == "1" and first["alias"] == "production"
    assert first["benchmark"]["int8"]["size_bytes"] < first["benchmark"]["fp32"]["size_bytes"]
    for d in ("fp32", "fp32-onnx", "int8"):
        assert (tmp_path / "run1" / d / "config.json").is_file()
    second = reference_flow(run_dir=str(tmp_path / "run2"), epochs=2, model_name="digits-e2e")
    assert second["version"] == "2" and second["alias"] == "candidate"
    assert "does not beat production v1" in second["promotion_reason"]
    import asyncio

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            arts = await client.read_artifacts()
            return {a.key for a in arts}

    assert {"digits-reference-summary", "digits-reference-model-card"} <= asyncio.run(
        artifact_keys()
    )
