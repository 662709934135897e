"""Prefect flows, one module per domain, plus shared tasks and schedules.

Importing ``flows`` sets four Prefect defaults for everything the project starts, each only
where the variable is not set already (set it to override):

* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300``: Prefect's embedded server gets 20 s
  to start by default, which a busy 2-core machine misses (``make demo`` failed with "Timed
  out while attempting to connect to ephemeral Prefect API server" under load);
* ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: the machines this runs on are often offline,
  and the telemetry attempt logged "Failed to send telemetry" every few minutes;
* ``PREFECT_LOGGING_EXTRA_LOGGERS=core,pipelines``: the training, evaluation and compression
  progress lines the library logs (step/total, loss, ETA) appear in the flow-run log; those
  loggers are set to INFO when nothing set their level;
* ``PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore``: those loggers also serve code outside
  any flow run in the same process (a CLI, a customer's script, the tests), whose lines then
  go to the console only instead of raising a UserWarning each.

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
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
for _key, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
for _name in os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(","):
    _logger = logging.getLogger(_name.strip())
    if _name.strip() and _logger.level == logging.NOTSET:
        _logger.setLevel(logging.INFO)
