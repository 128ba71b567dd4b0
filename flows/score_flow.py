"""The score flow: resolve a registered model, score any reviews with it, evaluate where labels
exist (an MLflow evaluation run linked to the model version), copy the predictions out."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from sentiflow.flows.runs import confine_deployment_paths, run_settings
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef
from sentiflow.storage.tracking import CHAMPION, REGISTERED_MODEL, configure, log_stage_datasets
from sentiflow.tasks.metrics import confusion_figure
from sentiflow.tasks.score import ScoreParams, ScoreStats, read_stats, score_task
from sentiflow.tasks.reviews import fingerprint
from sentiflow.tasks.serving import ModelRef, resolve_model

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
KEY_TAG = "sentiflow.score_key"


class ScoreConfig(BaseModel):
    """What to score with what (a form in the Prefect UI)."""

    model: str = Field(DEFAULT_MODEL_URI, description="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH")
    source: str | None = Field(None, description="Reviews: any training source (its test part by default), "
                                                 "or a .txt file with one review per line; empty: the "
                                                 "settings' source (SENTIFLOW_SOURCE)")
    out: str | None = Field(None, description="Where to write the predictions Parquet (default: the stage folder)")
    params: ScoreParams = ScoreParams()

    def resolved(self, settings: Settings) -> ScoreConfig:
        """This configuration with the settings' source where it names none (done at flow start)."""
        return self if self.source else self.model_copy(update={"source": settings.source})


class ScoreOutcome(BaseModel):
    model: ModelRef
    stage: StageRef
    state: str  # the score task's final state: Completed, or Cached
    predictions: str
    stats: ScoreStats
    evaluation_run_id: str | None
    tracking_uri: str


@task(name="resolve-model")
def resolve_model_task(uri: str, settings: Settings) -> ModelRef:
    configure(settings)
    return resolve_model(uri)


@task(name="log-evaluation")
def log_evaluation_task(model: ModelRef, stage: StageRef, stats: ScoreStats, config: ScoreConfig,
                        settings: Settings) -> str:
    """One evaluation run per (model, source, parameters): a rerun finds it by the stage key."""
    experiment_id = configure(settings)
    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{stage.key}' and attributes.status = 'FINISHED'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    metrics = {**stats.metrics(), "rows": stats.rows, "rows_scored": stats.statuses["ok"],
               "rows_labeled": stats.labeled_rows, "reviews_per_second": stats.reviews_per_second}
    label = f"v{model.version}" if model.version else (model.run_id or "model")[:8]
    tags = {KEY_TAG: stage.key, "sentiflow.kind": "evaluation", "sentiflow.model_uri": model.uri,
            "sentiflow.model_requested": model.requested, "sentiflow.model_name": model.name or "",
            "sentiflow.model_version": model.version or "", "sentiflow.model_run_id": model.run_id or ""}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{model.name or 'model'}-{label}",
                          tags=tags) as run:
        mlflow.log_params({"model_uri": model.uri, "source": config.source, **config.params.model_dump()})
        log_stage_datasets({"evaluation": stage}, config.source)  # the scored rows: the Dataset column
        # model_id links the figures to the logged model: they show on its page and its version's
        mlflow.log_metrics(metrics, model_id=model.model_id)
        mlflow.log_dict({"labels": ["neg", "pos"], "matrix": stats.confusion,
                         "statuses": stats.statuses}, "confusion_matrix.json")
        import matplotlib.pyplot as plt
        import numpy as np

        fig = confusion_figure(np.array(stats.confusion), f"{model.name or 'model'} {label}")
        mlflow.log_figure(fig, "confusion_matrix.png")
        plt.close(fig)
    return run.info.run_id


def publish(src: Path, out: str) -> str:
    """Copy to ``out`` under a temporary name, then rename: never a half-written file there."""
    dst = Path(out).expanduser().resolve()
    if dst.is_dir():  # --out naming a folder: the file goes into it
        dst = dst / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return str(dst)


@flow(name="score")
def score_flow(config: ScoreConfig = ScoreConfig(), data_root: str | None = None, workers: int = 0,
               force: bool = False) -> ScoreOutcome:
    """Score ``config.source`` with ``config.model``. ``data_root`` and ``workers`` override the
    run's settings (``sentiflow.flows.runs``); ``force`` scores again even when cached."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    confine_deployment_paths(settings, source=config.source, out=config.out)  # as given, not the settings'
    config = config.resolved(settings)
    model = resolve_model_task(config.model, settings)
    fp = fingerprint(config.source)  # a plain call, as in the data flow
    state = score_task(model, config.source, fp, config.params, str(settings.data_root),
                       settings.resolved_workers, force=force, return_state=True)
    stage: StageRef = state.result()
    stats = read_stats(stage)
    run_id = log_evaluation_task(model, stage, stats, config, settings) if stats.labeled_rows else None
    predictions = publish(stage.file("predictions.parquet"), config.out) if config.out \
        else str(stage.file("predictions.parquet"))
    create_markdown_artifact(summary(model, stats, predictions, run_id, state.name, settings),
                             key="scoring-summary", description="sentiflow scoring: rows, statuses, metrics")
    return ScoreOutcome(model=model, stage=stage, state=state.name, predictions=predictions, stats=stats,
                        evaluation_run_id=run_id, tracking_uri=settings.resolved_tracking_uri)


def summary(model: ModelRef, stats: ScoreStats, predictions: str, run_id: str | None, state: str,
            settings: Settings) -> str:
    lines = ["# sentiflow scoring", "",
             f"Model `{model.requested}` → `{model.uri}` (training run `{model.run_id}`)", "",
             f"Predictions: `{predictions}` ({state.lower()})", "",
             f"**{stats.rows:,}** rows in {stats.seconds:.1f} s ({stats.reviews_per_second:,.0f} reviews/s)"
             + (f", scored from the cached encode stage `{stats.reused}`" if stats.reused else ""), "",
             "| status | rows |", "|---|---|",
             *(f"| {k} | {v:,} |" for k, v in stats.statuses.items())]
    m = stats.metrics()
    if m:
        uri = settings.resolved_tracking_uri
        if uri.startswith("http"):
            exp = MlflowClient(uri).get_run(run_id).info.experiment_id
            link = f"[{run_id}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"
        else:
            link = f"`{run_id}` (open with `sentiflow ui`)"
        lines += ["", f"Evaluation on {stats.labeled_rows:,} labeled rows, MLflow run {link}:", "",
                  "| accuracy | precision | recall | F1 |", "|---|---|---|---|",
                  f"| {m['accuracy']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |", "",
                  "| true \\ predicted | neg | pos |", "|---|---|---|",
                  f"| neg | {m['tn']:,} | {m['fp']:,} |", f"| pos | {m['fn']:,} | {m['tp']:,} |"]
    return "\n".join(lines)
