"""The deployments: weekly retraining, on-demand scoring, and sweeps run by hand.

``sentiflow serve`` serves these from one process (no worker, no work pool); ``prefect.yaml``
declares the same three for a work pool and its workers (``prefect deploy --all``). A test checks
that both agree: names, entrypoints, schedules.

A deployment's run builds its settings from the worker's environment when it starts
(``SENTIFLOW_*``, ``MLFLOW_TRACKING_URI``; ``sentiflow.flows.runs``): settings are never deployment
parameters, and the forms' defaults are the flows' models' (``TrainFlowConfig``, ``ScoreConfig``).
A training run takes a preset as the command line does (``prefect deployment run train/weekly -p
'config={"preset": "best"}'``): the flow applies it (``sentiflow.flows.presets``).

The forms refuse unknown keys (``sentiflow.tasks.config``), and so does their parameter schema
(``additionalProperties: false``). The server checks a run's parameters against it when the run is
created (``enforce_parameter_schema``, on here as in ``prefect deploy``): ``-p 'config={"max_epoch":
3}'`` is refused at once, in Prefect's words ("Additional properties are not allowed ('max_epoch'
was unexpected)"), and nothing runs. A run that reaches the flow unchecked fails as it starts,
with the form's line naming the key and the nearest valid one.

Retraining is safe to schedule: on unchanged data every data stage is Cached, a finished training
with the same key is reused (no new version), and the ``champion`` alias moves only when the
champion gate (tasks/release/gate.py) finds the new version more accurate than the champion on the
same rows, so a scheduled run never makes scoring worse.
"""

from __future__ import annotations

from typing import Any

RETRAIN = "weekly"  # deployment train/weekly
SCORE = "on-demand"  # deployment score/on-demand
SWEEP = "search"  # deployment sweep/search: an Optuna study (sentiflow.flows.sweep_flow), run by hand
RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
TAGS = ["sentiflow"]


def runner_deployments(cron: str | None = RETRAIN_CRON, timezone: str = "UTC") -> list[Any]:
    """``RunnerDeployment``s of the train flow (on ``cron``), the score flow and the sweep flow
    (both run by hand)."""
    from prefect.schedules import Cron

    from sentiflow.flows.score_flow import score_flow
    from sentiflow.flows.sweep_flow import sweep_flow
    from sentiflow.flows.train_flow import train_flow

    return [
        train_flow.to_deployment(
            name=RETRAIN, schedules=[Cron(cron, timezone=timezone)] if cron else None, tags=TAGS,
            concurrency_limit=1,  # two trainings of one key would share one MLflow run
            enforce_parameter_schema=True,
            description="Retrain on the configured source: data stages (cached), training, selection; "
                        "champion moves only to a better model."),
        score_flow.to_deployment(
            name=SCORE, tags=TAGS, enforce_parameter_schema=True,
            description="Score reviews with a registered model (default models:/sentiflow@champion)."),
        sweep_flow.to_deployment(
            name=SWEEP, tags=TAGS, enforce_parameter_schema=True,
            concurrency_limit=1,  # trials share the machine's cores: one sweep at a time
            description="Search the training's options with Optuna (trials pruned on val_acc, children of "
                        "one MLflow run); the best trial goes through the gate."),
    ]
