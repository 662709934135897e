"""Scheduled retraining against a real local Prefect server: schedules registered, a run completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from core.train.distributed import free_port

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_served_deployment_has_its_cron_schedule_and_a_triggered_run_completes(tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import DAILY, NIGHTLY, WEEKLY, start_server

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "DV_DATA_ROOT": str(tmp_path / "data"),
        "PREFECT_API_URL": url,
    }
    server = start_server(port, env=env)
    runner = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments", "--epochs", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # settings, not os.environ: a session prefect_test_harness in this worker must not win
        with temporary_settings(updates={PREFECT_API_URL: url}):

            async def deployment(name):
                # the runner registers deployments one after another: wait for each
                async with get_client() as client:
                    for _ in range(240):
                        try:
                            return await client.read_deployment_by_name(name)
                        except Exception:
                            await asyncio.sleep(0.5)
                    raise AssertionError(f"deployment {name} never registered")

            dep = asyncio.run(deployment("digits-reference/digits-nightly-retrain"))
            assert [s.schedule.cron for s in dep.schedules] == [NIGHTLY] and dep.schedules[0].active
            vqc = asyncio.run(deployment("vision-qc/vision-qc-weekly-retrain"))
            assert [s.schedule.cron for s in vqc.schedules] == [WEEKLY]
            assert vqc.parameters == {"synthesize": False}
            ct = asyncio.run(deployment("medical-ct/medical-ct-weekly-retrain"))
            assert [s.schedule.cron for s in ct.schedules] == [WEEKLY]
            assert ct.parameters == {"synthesize": False}
            nlp = asyncio.run(deployment("nlp-service/nlp-service-weekly-retrain"))
            assert [s.schedule.cron for s in nlp.schedules] == [WEEKLY]
            fr = asyncio.run(deployment("finance-risk-daily/finance-risk-daily-check"))
            assert [s.schedule.cron for s in fr.schedules] == [DAILY]
            run = run_deployment(
                "digits-reference/digits-nightly-retrain",
                timeout=600,
                parameters={"epochs": 1, "run_dir": str(tmp_path / "run")},
            )
            assert run.state.is_completed(), run.state
        assert (tmp_path / "run" / "int8" / "model.onnx").is_file()
    finally:
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(30)
        except subprocess.TimeoutExpired:
            runner.kill()
        server.terminate()
        server.wait(30)
