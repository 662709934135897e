"""The deploy step: a newly promoted version reaches a running server without a restart."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from core.compress.workflow import export_model_dir
from core.reference.digits import DigitsConfig, evaluate_model_dir, load_digits_splits, train_digits
from core.registry import ModelRegistry, RegistryWatcher
from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer
from core.train import TrainerConfig
from flows.tasks import reload_server_task

pytestmark = pytest.mark.slow


def onnx_model(root, seed):
    cfg = DigitsConfig(
        out_dir=str(root / f"t{seed}"),
        seed=seed,
        width=8,
        trainer=TrainerConfig(max_epochs=1, progress="off", optimizer={"lr": 3e-3}),
    )
    train_digits(cfg)
    export_model_dir(root / f"t{seed}", root / f"m{seed}")
    return root / f"m{seed}"


def test_promoted_version_is_served_after_the_reload_task(tmp_path, monkeypatch):
    monkeypatch.setenv("DV_DATA_ROOT", str(tmp_path / "data"))
    reg = ModelRegistry()
    v1 = reg.register("digits-live", onnx_model(tmp_path, 0))
    assert reg.promote_if_better("digits-live", v1.version, evaluate_model_dir).promoted
    watcher = RegistryWatcher(reg, "digits-live")
    app = create_app(watcher.current(), ServeConfig(alias="production"), watcher=watcher)
    x = load_digits_splits(8, 0)["test"][:1][0].numpy().tolist()
    with BackgroundServer(app) as srv:
        for _ in range(300):
            if httpx.get(f"{srv.url}/v1/health/ready").status_code == 200:
                break
            time.sleep(0.05)

        def served_version() -> str:
            r = httpx.post(
                f"{srv.url}/v1/models/digits-live/predict", content=json.dumps({"inputs": x})
            )
            return r.json()["version"]

        assert served_version() == "1"
        assert reload_server_task.fn(srv.url) == {
            "reloaded": False,
            "version": "1",
        }  # nothing moved yet
        v2 = reg.register("digits-live", onnx_model(tmp_path, 1))
        assert reg.promote_if_better(
            "digits-live", v2.version, evaluate_model_dir, margin=-1.0
        ).promoted
        assert reload_server_task.fn(srv.url) == {"reloaded": True, "version": "2"}
        assert served_version() == "2"
        assert httpx.get(f"{srv.url}/v1/models").json() == [
            {"name": "digits-live", "version": "2", "alias": "production", "last_load_error": None}
        ]
    assert reload_server_task.fn(None) == {"reloaded": False, "reason": "no server to reload"}
