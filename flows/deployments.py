"""Scheduled batch retraining: deployments with cron schedules, defined in code.

``make serve-flows`` (or ``python -m flows.deployments``) starts a local Prefect server
(``prefect server start``, 127.0.0.1, SQLite under ``PREFECT_HOME``), waits for it, registers
the deployments below and serves them: scheduled runs and ones triggered from the UI/CLI
(``prefect deployment run 'digits-reference/digits-nightly-retrain'``) execute here. Prefect's
embedded temporary server (used when no API URL is set) does not run schedules, hence a real
server. Each domain adds its deployment to :func:`deployments`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

NIGHTLY = "0 2 * * *"  # 02:00 every day


WEEKLY = "0 3 * * 0"  # 03:00 every Sunday
DAILY = "30 4 * * *"  # 04:30 every day


def deployments(epochs: int = 4) -> list:
    from flows.finance_risk import finance_risk_daily
    from flows.medical_ct import medical_ct_flow
    from flows.nlp_service import nlp_service_flow
    from flows.reference import reference_flow
    from flows.vision_qc import vision_qc_flow

    return [
        reference_flow.to_deployment(
            name="digits-nightly-retrain",
            cron=NIGHTLY,
            parameters={"epochs": epochs},
            tags=["retrain", "digits"],
            description="Nightly retraining of the digits reference model",
        ),
        vision_qc_flow.to_deployment(
            name="vision-qc-weekly-retrain",
            cron=WEEKLY,
            parameters={"synthesize": False},
            tags=["retrain", "vision_qc"],
            description="Weekly retraining of the defect detector on the data under "
            "$DV_DATA_ROOT/vision_qc/synth (or the data_dir parameter); promoted only if it "
            "beats production on the test split",
        ),
        medical_ct_flow.to_deployment(
            name="medical-ct-weekly-retrain",
            cron=WEEKLY,
            parameters={"synthesize": False},
            tags=["retrain", "medical_ct"],
            description="Weekly retraining of the nodule segmenter on the cases under "
            "$DV_DATA_ROOT/medical_ct/synth, tested on .../synth_test (or the data_dir and "
            "test_dir parameters); promoted only if its CPM beats production",
        ),
        nlp_service_flow.to_deployment(
            name="nlp-service-weekly-retrain",
            cron=WEEKLY,
            tags=["retrain", "nlp_service"],
            description="Weekly retraining of the intent and slot model (the data parameter: "
            "a JSONL/CSV of labelled messages; default: generated messages and the seed set); "
            "promoted only if its accuracy on the hand-written set beats production",
        ),
        finance_risk_daily.to_deployment(
            name="finance-risk-daily-check",
            cron=DAILY,
            tags=["retrain", "finance_risk"],
            description="Daily: the production fraud scorer checks the latest transactions "
            "under $DV_DATA_ROOT/finance_risk/transactions.parquet (or the data parameter) for "
            "feature drift (PSI > 0.2) and new fraud labels; retrains, and promotes if better, "
            "only then",
        ),
    ]


def start_server(
    port: int, timeout_s: float = 120, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:port; returns once its health endpoint answers."""
    env = {
        **(env or os.environ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer on port {port} within {timeout_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=4200)
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server = start_server(a.port)
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{a.port}/api"
    from prefect import serve

    try:
        print(
            f"serving deployments against {os.environ['PREFECT_API_URL']} (Ctrl-C to stop)",
            flush=True,
        )
        serve(*deployments(a.epochs))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
