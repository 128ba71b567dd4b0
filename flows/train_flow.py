"""The train flow: the data stages (cached), training, selection and registration.

Its form, ``TrainFlowConfig``, is what a caller gives: the CLI's options, a deployment run's
parameters, a Python call. When the flow starts it makes the configuration it runs, once, in
``run_config``: the preset's values under the ones given (``sentiflow.flows.presets``), then the
settings' sources where the form names none (``Settings.fill``)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from sentiflow.flows.data_config import DataConfig, PreparedData, Stage
from sentiflow.flows.data_flow import data_flow_for
from sentiflow.flows.events import champion_payload, emit_champion
from sentiflow.flows.presets import PRESETS, Preset, apply_preset, describe
from sentiflow.flows.recorded import config_parameter, recorded
from sentiflow.flows.runs import confine_deployment_paths, run_settings
from sentiflow.storage.names import ModelName
from sentiflow.storage.redact import redact, redact_all
from sentiflow.storage.settings import Settings
from sentiflow.storage.tracking import REGISTERED_MODEL
from sentiflow.tasks.config import Config
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.release.gate import GateParams
from sentiflow.tasks.release.select import SelectResult, select_task
from sentiflow.tasks.training.embeddings import PACKAGE_NAME
from sentiflow.tasks.training.train import (
    TrainConfig,
    TrainParams,
    TrainResult,
    input_tokens,
    train_key,
    train_task,
)


class TrainFlowConfig(Config):
    """Everything a training depends on (a form in the Prefect UI). Its defaults are the models'
    own, the pipeline's: the CLI (``sentiflow train``), the deployments and a bare
    ``train_flow()`` all train ``TrainConfig()``'s model unless told otherwise. ``preset`` names a
    set of values that the flow puts under the ones given (``sentiflow.flows.presets``)."""

    preset: Preset | None = Field(None, description="Values set by name, under the ones given here: "
                                                    + "; ".join(f"{n}: {describe(n)}" for n in PRESETS))
    data: DataConfig = DataConfig()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    model_name: ModelName = Field(REGISTERED_MODEL, description="Registered model name (MLflow's rules: no '/' or ':')")
    gate: GateParams = GateParams()


PRESET_TAG = "sentiflow.preset"


class TrainOutcome(BaseModel):
    data: PreparedData
    train: TrainResult
    selected: SelectResult
    tracking_uri: str


def lineage(data: PreparedData, config: DataConfig) -> dict[str, str]:
    """The data side of the run's params: the resolved data configuration and stage keys, as the
    data DAG's steps say (``PreparedData.lineage``: ``split.seed``, ``key.encode_train``, ...)."""
    return data.lineage(config)


def initial_run_name() -> str:
    """A training flow run's name until its key is known: ``train-<preset>``."""
    return f"train-{config_parameter('preset') or 'default'}"


def run_name(config: TrainFlowConfig, key: str) -> str:
    """``train-<preset>-<key[:6]>``: the preset asked for, ``default`` for the pipeline's own
    configuration, ``custom`` for another; then the training key's start."""
    train_config = TrainConfig(model=config.model, train=config.train)
    label = config.preset or ("default" if train_config == TrainConfig() else "custom")
    return f"train-{label}-{key[:6]}"


@flow(name="train", flow_run_name=initial_run_name)
def train_flow(config: TrainFlowConfig = TrainFlowConfig(), data_root: str | None = None,
               force: list[Stage] = [], workers: int = 0) -> TrainOutcome:  # noqa: B006
    """The data stages (cached), training, selection and registration. ``data_root`` and
    ``workers`` override the run's settings (``sentiflow.flows.runs``); ``force`` recomputes the
    named data stages even when cached."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    with recorded(settings, "train") as rec:
        config = run_config(config, settings)
        data = data_flow_for(settings)(config=config.data, force=force)
        train_config = TrainConfig(model=config.model, train=config.train)
        refs = (data.encoded["train"], data.encoded["val"], data.vocab)
        name = run_name(config, train_key(train_config, input_tokens(*refs)))
        rec.rename(name)
        result = train_task(train_config, *refs, lineage(data, config.data), settings, name, rec.mlflow_tags)
        if config.preset is not None:
            tag_preset(settings, result.run_id, config.preset)
        selected = select_task(result, train_config, config.data.tokenize, data.vocab, data.encoded["val"],
                               data.encoded["test"], config.model_name, settings, config.gate)
        rec.outcome.update(training_outcome(selected))
        if not selected.reused:  # a rerun of a finished training reports its old decision: no news
            emit_champion(selected)
        create_markdown_artifact(redact_all(summary(result, selected, settings)), key="training-summary",
                                 description="sentiflow training: epochs, best epoch, registered version")
    return TrainOutcome(data=data, train=result, selected=selected,
                        tracking_uri=redact(settings.resolved_tracking_uri))


def training_outcome(selected: SelectResult) -> dict[str, object]:
    """What the run journal keeps of a training (``sentiflow status`` shows it): the champion
    decision as its event carries it (``champion_payload``: version, alias, both accuracies on the
    gate's rows, reason, test accuracy, MLflow run), and whether it was an earlier run's."""
    return {**champion_payload(selected), "reused": selected.reused}


def run_config(config: TrainFlowConfig, settings: Settings) -> TrainFlowConfig:
    """The configuration a run trains, made once where the flow starts: the preset applied
    (``apply_preset``), the path parameters confined in a deployment's run (as given: the
    settings' own sources are the operator's), then the settings' sources where it names none."""
    config = apply_preset(config)
    confine_deployment_paths(settings, datasets={"source": config.data.source, "gate_source": config.gate.source},
                             files={"pretrained": None if config.train.pretrained == PACKAGE_NAME
                                    else config.train.pretrained})
    return settings.fill(config)


def tag_preset(settings: Settings, run_id: str, preset: str) -> None:
    """Tag the training run ``sentiflow.preset`` with the preset it was asked for."""
    MlflowClient(settings.resolved_tracking_uri).set_tag(run_id, PRESET_TAG, preset)


def summary(result: TrainResult, selected: SelectResult, settings: Settings) -> str:
    client = MlflowClient(settings.resolved_tracking_uri)
    metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds")
    table: dict[int, dict[str, float]] = {}
    for name in metrics:
        for m in client.get_metric_history(result.run_id, name):
            table.setdefault(m.step, {})[name] = m.value
    uri = settings.resolved_tracking_uri
    link = (f"[{result.run_id}]({uri.rstrip('/')}/#/experiments/{result.experiment_id}/runs/{result.run_id})"
            if uri.startswith("http") else f"`{result.run_id}` (open with `sentiflow ui`; store `{uri}`)")
    lines = [
        "# sentiflow training", "",
        f"MLflow run: {link}", "",
        f"Best epoch **{selected.best_epoch}**: val_acc **{selected.val_acc:.4f}**, "
        f"test_acc **{selected.test_acc if selected.test_acc is None else f'{selected.test_acc:.4f}'}**", "",
        f"Registered `{selected.model_name}` version **{selected.version}** with alias "
        f"`{selected.alias}`.", "",
        f"Champion gate: **{'promoted' if selected.gate and selected.gate.promote else 'not promoted'}**"
        f" — {selected.gate.reason if selected.gate else 'not judged'}.", "",
        "| epoch | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|",
    ]
    for epoch in sorted(table):
        mark = " **best**" if epoch == selected.best_epoch else ""
        lines.append(f"| {epoch}{mark} | " + " | ".join(f"{table[epoch].get(m, float('nan')):.4f}"
                                                         for m in metrics) + " |")
    return "\n".join(lines)
