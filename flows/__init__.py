"""Prefect flows, one module per domain, plus shared tasks and schedules.

Importing ``flows`` sets three Prefect defaults for everything the project starts, each only
where the variable is not set already (set it to override):

* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300``: Prefect's embedded server gets 20 s
  to start by default, which a busy 2-core machine misses (``make demo`` failed with "Timed
  out while attempting to connect to ephemeral Prefect API server" under load);
* ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: the machines this runs on are often offline,
  and the telemetry attempt logged "Failed to send telemetry" every few minutes;
* ``PREFECT_LOGGING_EXTRA_LOGGERS=core,pipelines``: the training, evaluation and compression
  progress lines the library logs (step/total, loss, ETA) appear in the flow-run log; those
  loggers are set to INFO when nothing set their level.

Not here: the flows themselves (``flows/<domain>.py``), shared tasks (``flows/tasks.py``),
deployments and schedules (``flows/deployments.py``).
"""

from __future__ import annotations

import logging
import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "core,pipelines",
}
for _key, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
for _name in os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(","):
    _logger = logging.getLogger(_name.strip())
    if _name.strip() and _logger.level == logging.NOTSET:
        _logger.setLevel(logging.INFO)
