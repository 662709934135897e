"""One small trained + compressed nlp_service model for the whole session (tests that use it
share an xdist group, so it is trained once per worker that runs them)."""

from __future__ import annotations

import pytest

from pipelines.nlp_service.config import SynthConfig, TrainConfig


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    out = tmp_path_factory.mktemp("nlp") / "model"
    return TrainConfig(
        out_dir=str(out),
        synth=SynthConfig(per_intent=12, dialogues=40),
        epochs=1,
        max_steps=30,
        batch_size=32,
        lr=1e-4,
    )


@pytest.fixture(scope="session")
def trained(tiny_cfg):
    """The model directory, trained, then compressed in place (fp32 + INT8 ONNX)."""
    from pipelines.nlp_service.deploy import compress
    from pipelines.nlp_service.train import train

    path = train(tiny_cfg)
    report = compress(path, min_cosine=0.9)
    return {"model": path, "parity": report}
