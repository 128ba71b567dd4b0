"""Prefect flows and the ``sentiflow`` command line.

Importing this package sets the process-wide defaults of the libraries the flows drive, before
Prefect is imported (a flow module imports this package first): stage functions' log lines reach
Prefect's run logs, nothing calls home, and an unreachable tracking server fails in seconds.
"""

import os

# Stage functions log to the standard "sentiflow" logger; inside a Prefect run these lines go to
# the run's logs too. Must be set before Prefect configures logging (at its import).
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sentiflow")
# No calls home from the libraries we drive.
for _name, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(_name, _value)
# MLflow prints "View run ... at: <tracking URI>/#/..." as each run ends: the URI as given, a
# password included, into the terminal and a flow run's logs. sentiflow prints its own, redacted.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that does not answer: a bounded number of retries with backoff (waits of
# about 1, 2, 4, 8 s), then one clear error, instead of MLflow's default of minutes.
for _name, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}.items():
    os.environ.setdefault(_name, _value)
# Against a Prefect server, a flow run started here sends a heartbeat every 30 s (Prefect's least):
# the heartbeat automation of `sentiflow alerts` marks a run whose heartbeats stop Crashed. A
# worker's flow processes import Prefect before this package: the worker's environment sets it.
if os.environ.get("PREFECT_API_URL"):
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
# Prefect's ephemeral server gets 20 s to start by default; on a busy 2-core machine it took longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import logging  # noqa: E402

# stage progress and per-epoch lines are INFO: shown on the terminal and in the Prefect run
logging.getLogger("sentiflow").setLevel(logging.INFO)
