"""The Prefect defaults every project entry point gets by importing ``flows``: an embedded
server that may take its time on a busy machine, no telemetry, and the library's progress
lines in the flow-run log."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

SETTINGS = (
    "import json, flows\n"
    "from prefect.settings import get_current_settings as g\n"
    "s = g()\n"
    "print(json.dumps([s.server.ephemeral.startup_timeout_seconds,"
    " s.server.analytics_enabled, sorted(s.logging.extra_loggers or []),"
    " s.logging.to_api.when_missing_flow]))\n"
)


def _clean_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return env


def test_importing_flows_sets_the_prefect_defaults_unless_overridden(tmp_path):
    env = _clean_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", SETTINGS], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [300, False, ["core", "pipelines"], "ignore"]
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "45"
    out = subprocess.run(
        [sys.executable, "-c", SETTINGS], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout)[0] == 45  # an explicit setting wins


def test_training_progress_reaches_the_flow_run_log(prefect_harness):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogHandler

    from core.train import Trainer, TrainerConfig

    @flow(name="progress-probe")
    def probe() -> str:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(
            torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
        )
        cfg = TrainerConfig(max_steps=4, batch_size=8, progress="plain", log_every_n_steps=2)
        Trainer(nn.Linear(4, 2), cfg).fit(data)
        return str(get_run_context().flow_run.id)

    run_id = probe()
    APILogHandler().flush()  # ship the batched log lines now

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
            return [entry.message for entry in logs]

    messages: list[str] = []
    for _ in range(20):  # the API handler ships logs in batches
        messages = asyncio.run(read())
        if any("step 4/4" in m for m in messages):
            break
        time.sleep(0.5)
    step_lines = [m for m in messages if m.startswith("step ")]
    assert [m.split()[1] for m in step_lines] == ["2/4", "4/4"], messages
    assert all("loss" in m and "ETA" in m for m in step_lines)


FLOW = (
    "import flows\n"
    "from prefect import flow\n"
    "@flow\n"
    "def hello():\n"
    "    return 42\n"
    "print('RESULT', hello())\n"
)


def _hog(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_flow_starts_its_embedded_server_on_a_machine_under_load(tmp_path):
    stop_at = time.time() + 240
    hogs = [mp.get_context("spawn").Process(target=_hog, args=(stop_at,)) for _ in range(4)]
    for h in hogs:
        h.start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", FLOW],
            env=_clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 42" in out.stdout
    assert "Timed out while attempting to connect" not in out.stderr
    assert "telemetry" not in out.stderr.lower()
