"""MLflow wiring: the tracking URI and experiment from the settings, and registry helpers."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef

REGISTERED_MODEL = "sentiflow"
CHAMPION, CHALLENGER = "champion", "challenger"
# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, "evaluation runs")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# the variables MLflow writes when its URIs are set (for its own subprocesses)
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def restore_environ(before: dict[str, str | None]) -> None:
    """Set each variable back to its value in ``before`` (None: unset)."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns its id.

    With a SQLite store (the embedded default: ``<data root>/mlflow.db``) artifacts go to
    ``mlartifacts/`` beside it; with a tracking server, to the server's artifact store."""
    uri = settings.resolved_tracking_uri
    location = None  # a tracking server chooses (its artifact store)
    if uri.startswith("sqlite:///"):  # artifacts beside the database file
        folder = Path(uri.removeprefix("sqlite:///")).parent
        folder.mkdir(parents=True, exist_ok=True)
        location = (folder / "mlartifacts").resolve().as_uri()
    # MLflow also writes the URI into os.environ (for its subprocesses); Settings reads that
    # variable, so a later Settings() in this process would silently inherit this store
    before = {k: os.environ.get(k) for k in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    restore_environ(before)
    client = MlflowClient()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return client.create_experiment(settings.experiment, artifact_location=location,
                                        tags=dict([EXPERIMENT_KIND]))
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made by an older sentiflow
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def alias_version(name: str, alias: str):
    """The version holding ``alias``, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None



def stage_dataset(ref: StageRef, name: str, source: str | None = None):
    """A stage folder as an MLflow dataset (metadata only): the stage key as digest, the review
    source it came from as source (the folder itself when unknown)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    if source and not Path(source).expanduser().exists():  # a Hugging Face dataset id
        origin = HuggingFaceDatasetSource(path=source)
    else:  # a local artifact source (a class MLflow registers at run time, found by URI)
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": local, both
            warnings.simplefilter("ignore", UserWarning)
            origin = resolve_dataset_source(Path(source or ref.path).expanduser().resolve().as_uri())
    return MetaDataset(origin, name=name, digest=ref.key)


def log_stage_datasets(refs: dict[str, StageRef], source: str | None = None) -> None:
    """Log stages (context → ref; contexts such as training, validation, test) as inputs of the
    active run, named ``<stage>-<context>``: the runs list's Dataset column and the evaluation
    runs then show which data a run used."""
    for context, ref in refs.items():
        mlflow.log_input(stage_dataset(ref, f"{ref.stage}-{context}", source), context=context)


def ui_address(host: str, port: int, uri: str, experiment: str) -> str:
    """The experiment's runs in MLflow 3's model-training view: its UI opens in the GenAI view
    unless the address asks for the other (the experiment's ``mlflow.experimentKind`` tag alone
    does not decide it in 3.17)."""
    base = f"http://{host}:{port}"
    try:
        exp = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - the address without the experiment still works
        exp = None
    page = f"experiments/{exp.experiment_id}/runs" if exp is not None else "experiments"
    return f"{base}/#/{page}?workflowType=machine_learning"
