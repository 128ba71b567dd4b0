"""The train flow: the data stages (cached), training, selection and registration."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from sentiflow.flows.data_flow import DataConfig, PreparedData, Stage, data_flow_for
from sentiflow.flows.runs import confine_deployment_paths, run_settings
from sentiflow.storage.settings import Settings
from sentiflow.storage.tracking import REGISTERED_MODEL, redact, redact_all
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.release.gate import GateParams
from sentiflow.tasks.release.select import SelectResult, select_task
from sentiflow.tasks.training.train import TrainConfig, TrainParams, TrainResult, train_task


class TrainFlowConfig(BaseModel):
    """Everything a training depends on (a form in the Prefect UI). Its defaults are the
    pipeline's: the CLI (``sentiflow train``), the deployments and a bare ``train_flow()`` all
    read them from here."""

    data: DataConfig = DataConfig()
    # The pipeline's model (docs/benchmarks.md, "Accuracy on IMDb"): a bidirectional LSTM of 128
    # with a max-pool over time, on GloVe 6B 50-d vectors fine-tuned, a cosine learning rate and
    # averaged weights. ModelParams' own defaults are the seed's (one LSTM layer, its final state:
    # 84.5 % test accuracy here).
    model: ModelParams = Field(ModelParams(embed_dim=50, bidirectional=True, head="max"))
    train: TrainParams = Field(TrainParams(pretrained="glove-6b-50d", lr_schedule="cosine", average=0.998))
    model_name: str = Field(REGISTERED_MODEL, description="Registered model name")
    gate: GateParams = GateParams()

    def resolved_gate(self, settings: Settings) -> GateParams:
        """The gate with its source defaulting to the settings' (``SENTIFLOW_GATE_SOURCE``)."""
        return self.gate if self.gate.source else self.gate.model_copy(update={"source": settings.gate_source})


class TrainOutcome(BaseModel):
    data: PreparedData
    train: TrainResult
    selected: SelectResult
    tracking_uri: str


def lineage(data: PreparedData, config: DataConfig) -> dict[str, str]:
    """The data side of the run's params: the resolved data configuration and stage keys."""
    out = {"data.source": config.source}
    for section in ("split", "tokenize", "vocab"):
        out.update({f"{section}.{k}": v for k, v in getattr(config, section).model_dump(mode="json").items()})
    out.update({"key.ingest": data.ingest.key, "key.split": data.split.key, "key.vocab": data.vocab.key,
                **{f"key.encode_{p}": r.key for p, r in data.encoded.items()}})
    return out


@flow(name="train")
def train_flow(config: TrainFlowConfig = TrainFlowConfig(), data_root: str | None = None,
               force: list[Stage] = [], workers: int = 0) -> TrainOutcome:  # noqa: B006
    """The data stages (cached), training, selection and registration. ``data_root`` and
    ``workers`` override the run's settings (``sentiflow.flows.runs``); ``force`` recomputes the
    named data stages even when cached."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    # the parameters as given; the settings' own source and gate source are the operator's
    confine_deployment_paths(settings, source=config.data.source, gate_source=config.gate.source,
                             pretrained=None if config.train.pretrained == "glove-6b-50d" else config.train.pretrained)
    data_config = config.data.resolved(settings)
    data = data_flow_for(settings)(config=data_config, force=force)
    train_config = TrainConfig(model=config.model, train=config.train)
    result = train_task(train_config, data.encoded["train"], data.encoded["val"], data.vocab,
                        lineage(data, data_config), settings)
    selected = select_task(result, train_config, data_config.tokenize, data.vocab, data.encoded["val"],
                           data.encoded["test"], config.model_name, settings, config.resolved_gate(settings))
    create_markdown_artifact(redact_all(summary(result, selected, settings)), key="training-summary",
                             description="sentiflow training: epochs, best epoch, registered version")
    return TrainOutcome(data=data, train=result, selected=selected,
                        tracking_uri=redact(settings.resolved_tracking_uri))


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
