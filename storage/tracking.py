"""MLflow wiring: the tracking URI and experiment from the settings, and registry helpers."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from sentiflow.storage.settings import Settings, get_settings

REGISTERED_MODEL = "sentiflow"
CHAMPION, CHALLENGER = "champion", "challenger"


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns its id.

    With a SQLite store (the embedded default: ``<data root>/mlflow.db``) artifacts go to
    ``mlartifacts/`` beside it; with a tracking server, to the server's artifact store."""
    settings = settings or get_settings()
    uri = settings.resolved_tracking_uri
    location = None  # a tracking server chooses (its artifact store)
    if uri.startswith("sqlite:///"):  # artifacts beside the database file
        folder = Path(uri.removeprefix("sqlite:///")).parent
        folder.mkdir(parents=True, exist_ok=True)
        location = (folder / "mlartifacts").resolve().as_uri()
    # MLflow also writes the URI into os.environ (for its subprocesses); Settings reads that
    # variable, so a later Settings() in this process would silently inherit this store
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    client = MlflowClient()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return client.create_experiment(settings.experiment, artifact_location=location)
    return exp.experiment_id


def alias_version(name: str, alias: str):
    """The version holding ``alias``, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
