"""The score flow: resolve a registered model, score any reviews with it, evaluate where labels
exist (an MLflow evaluation run linked to the model version), copy the predictions out.

Where the scoring runs: with ``task_runner = "local"`` (the default, ``SENTIFLOW_TASK_RUNNER``)
the score task runs in this process with its own pool of tokenizer processes. With ``"dask"``
(``SENTIFLOW_DASK_ADDRESS`` for an existing cluster, else a temporary LocalCluster of ``workers``
single-threaded processes, as the data flow: ``sentiflow.flows.data_flow.task_runner_for``) the
input is cut into parts (``plan-score-parts``: contiguous row-group ranges of a Parquet file, one
CSV/TSV file, or the data stages' encoded shards when they are reused), a subflow
``score-parts`` on the Dask task runner scores one part per task, each into its own file in a
work folder under the data root, and the score task then concatenates them, in input order, into
the stage's predictions (a row group at a time). The stage key is the same either way: a stage
folder made on Dask is Cached for an in-process run and vice versa, and a valid folder is served
without cutting or scoring anything. Dask workers must see the data root and a local source at
the same absolute path (a shared filesystem); they load the model from the work folder, never
from MLflow.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from sentiflow.flows.data_flow import _api_for_workers, task_runner_for
from sentiflow.flows.events import emit_drift
from sentiflow.flows.recorded import name_from_source, recorded, source_label
from sentiflow.flows.runs import confine_deployment_paths, confine_model_uri, run_settings
from sentiflow.storage.redact import redact, redact_all, scrubbed
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef, Store
from sentiflow.storage.tracking import configure, log_stage_datasets
from sentiflow.tasks.core.rows import OUT_OF_DOMAIN
from sentiflow.tasks.data.reviews import fingerprint
from sentiflow.tasks.scoring.score import ScoreStats, plan, read_stats, score_task
from sentiflow.tasks.scoring.score_config import PART_ROWS, ScoreConfig, ScoreParams
from sentiflow.tasks.scoring.score_dask import (
    ScorePart,
    ScoreWork,
    assemble_task,
    plan_work,
    score_part,
)
from sentiflow.tasks.scoring.serving import ModelRef, resolve_model

KEY_TAG = "sentiflow.score_key"


class ScoreOutcome(BaseModel):
    model: ModelRef
    stage: StageRef
    state: str  # the score task's final state: Completed, or Cached
    predictions: str
    stats: ScoreStats
    evaluation_run_id: str | None
    tracking_uri: str


def prewarm(settings: Settings) -> None:
    """What the flow's first tasks do before their real work, done ahead, e.g. while Prefect's
    ephemeral server starts (``sentiflow score``): MLflow's store opened (a SQLite store checks
    its schema, ~1-2 s) and spaCy's tokenizer built (~1 s). Nothing is written that a run would
    not write; a failure is left for the flow to meet and report."""
    try:
        configure(settings)
        from sentiflow.tasks.core.text import _tokenizer

        _tokenizer()
    except Exception:  # noqa: BLE001 - the flow reports it where it is seen
        pass


@task(name="resolve-model", cache_policy=NO_CACHE)
@scrubbed
def resolve_model_task(uri: str, settings: Settings) -> ModelRef:
    configure(settings)
    return resolve_model(uri)


@task(name="plan-score-parts", cache_policy=NO_CACHE)
def plan_work_task(model: ModelRef, source: str, source_fingerprint: str, params: ScoreParams,
                   root: str, part_rows: int = PART_ROWS) -> ScoreWork:
    return plan_work(model, source, source_fingerprint, params, root, part_rows)


@task(name="score-part", task_run_name="score-part-{part.index}", cache_policy=NO_CACHE)
def score_part_task(part: ScorePart, params: ScoreParams) -> ScoreStats:
    return score_part(part, params)


@flow(name="score-parts")
def score_parts(work: ScoreWork, params: ScoreParams) -> list[ScoreStats]:
    """One task per part, on this flow's task runner (``score_flow`` gives it the Dask one); the
    first failed part's error is raised."""
    with _api_for_workers():
        futures = [score_part_task.submit(part, params) for part in work.parts]
        return [f.result() for f in futures]


def _score_stage(model: ModelRef, config: ScoreConfig, fp: str, settings: Settings, force: bool):
    """The score task's final state: scored in this process, or in parts on Dask (then assembled
    by the score task). A valid stage folder is Cached either way, with nothing cut or scored."""
    root = str(Path(settings.data_root).resolve())  # absolute: a Dask worker may have another cwd
    on_dask = settings.task_runner == "dask"
    if not on_dask or (not force and Store(root).is_valid(plan(root, config.params, model, fp))):
        return score_task(model, config.source, fp, config.params, root, settings.resolved_workers,
                          force=force, return_state=True)
    work = plan_work_task(model, config.source, fp, config.params, root, config.part_rows)
    try:
        score_parts.with_options(task_runner=task_runner_for(settings))(work=work, params=config.params)
        return assemble_task(model, config.source, fp, config.params, root, work, force=force,
                             return_state=True)
    finally:
        work.discard()


def run_metrics(stats: ScoreStats) -> dict[str, float]:
    """What the evaluation run logs: the classification figures where labels exist, the counts,
    and the drift metrics where the model carries its training split's statistics."""
    return {**(stats.metrics() or {}), "rows": stats.rows, "rows_scored": stats.statuses["ok"],
            "rows_labeled": stats.labeled_rows, "rows_out_of_domain": stats.statuses[OUT_OF_DOMAIN],
            "rows_cut": stats.cut, "reviews_per_second": stats.reviews_per_second, **(stats.drift.metrics if stats.drift else {}),
            **({"drift_warning": float(stats.drift.drifted)} if stats.drift else {})}


def needs_run(stats: ScoreStats) -> bool:
    """An evaluation run where there is something to evaluate: labeled rows, or drift measured."""
    return bool(stats.labeled_rows or (stats.drift is not None and stats.drift.rows))


@task(name="log-evaluation", cache_policy=NO_CACHE)
@scrubbed
def log_evaluation_task(model: ModelRef, stage: StageRef, stats: ScoreStats, config: ScoreConfig,
                        settings: Settings, run_tags: dict[str, str] | None = None) -> str:
    """One evaluation run per (model, source, parameters): a rerun finds it by the stage key."""
    experiment_id = configure(settings)
    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{stage.key}' and attributes.status = 'FINISHED'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    metrics = run_metrics(stats)
    label = model_label(model)
    tags = {**(run_tags or {}), KEY_TAG: stage.key, "sentiflow.kind": "evaluation", "sentiflow.model_uri": model.uri,
            "sentiflow.drift": "warning" if stats.drift and stats.drift.drifted else
            ("none" if stats.drift else "not measured"),
            "sentiflow.model_requested": model.requested, "sentiflow.model_name": model.name or "",
            "sentiflow.model_version": model.version or "", "sentiflow.model_run_id": model.run_id or ""}
    name = f"evaluate-{model.name or 'model'}-{label}-{source_label(config.source)}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params({"model_uri": model.uri, "source": config.source, **config.params.model_dump()})
        log_stage_datasets({"evaluation": stage}, config.source)  # the scored rows: the Dataset column
        # model_id links the figures to the logged model: they show on its page and its version's
        mlflow.log_metrics(metrics, model_id=model.model_id)
        if stats.drift is not None:
            mlflow.log_dict(drift_report(stats), "drift.json")
        if stats.labeled_rows:
            _log_confusion(stats, f"{model.name or 'model'} {label}")
    return run.info.run_id


def drift_report(stats: ScoreStats) -> dict:
    """``drift.json`` of an evaluation run: the metrics, warnings and thresholds, and the run's
    quantiles of review length and OOV share (from its grid counts)."""
    from sentiflow.tasks.scoring import drift

    p = stats.profile
    return {"metrics": stats.drift.metrics, "warnings": stats.drift.warnings,
            "thresholds": {"psi_warn": drift.PSI_WARN, "min_rows": drift.MIN_ROWS},
            "run": {f: {"mean": p.mean(f), "quantiles": {str(q): p.quantile(f, q) for q in drift.QUANTILES}}
                    for f in drift.FEATURES} if p.rows else {}}


def _log_confusion(stats: ScoreStats, title: str) -> None:
    mlflow.log_dict({"labels": ["neg", "pos"], "matrix": stats.confusion,
                     "statuses": stats.statuses}, "confusion_matrix.json")
    mlflow.log_image(confusion_image(stats.confusion, title), "confusion_matrix.png")


def confusion_image(cm: list[list[int]], title: str):
    """The 2 × 2 confusion matrix as a small PNG drawn with Pillow (~0.1 s), not matplotlib
    (importing pyplot alone took ~1-3 s of every scoring command): cells shaded by count."""
    from PIL import Image, ImageDraw, ImageFont

    font, small = ImageFont.load_default(size=20), ImageFont.load_default(size=16)
    img = Image.new("RGB", (400, 400), "white")
    draw = ImageDraw.Draw(img)
    top = max(max(row) for row in cm) or 1
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        shade = cm[i][j] / top  # white to a dark blue, as the training's matplotlib "Blues"
        fill = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
        x, y = 110 + 130 * j, 70 + 130 * i
        draw.rectangle((x, y, x + 128, y + 128), fill=fill, outline="grey")
        draw.text((x + 64, y + 64), f"{cm[i][j]:,}", anchor="mm", font=font,
                  fill="white" if shade > 0.5 else "black")
    for k, name in enumerate(("neg", "pos")):
        draw.text((174 + 130 * k, 210 + 130 + 20), name, anchor="mm", font=small, fill="black")
        draw.text((80, 134 + 130 * k), name, anchor="mm", font=small, fill="black")
    draw.text((240, 385), "predicted", anchor="mm", font=small, fill="black")
    draw.text((30, 200), "true", anchor="mm", font=small, fill="black")
    draw.text((200, 30), title, anchor="mm", font=small, fill="black")
    return img


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


@flow(name="score", flow_run_name=name_from_source("score"))
def score_flow(config: ScoreConfig = ScoreConfig(), data_root: str | None = None, workers: int = 0,
               force: bool = False) -> ScoreOutcome:
    """Score ``config.source`` with ``config.model``. ``data_root`` and ``workers`` override the
    run's settings (``sentiflow.flows.runs``); ``force`` scores again even when cached."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    with recorded(settings, "score") as rec:
        # as given, not the settings' (the operator's own)
        confine_deployment_paths(settings, datasets={"source": config.source}, files={"out": config.out})
        confine_model_uri(config.model)
        config = settings.fill(config)
        model = resolve_model_task(config.model, settings)
        rec.rename(f"score-{model_label(model)}-{source_label(config.source)}")
        fp = fingerprint(config.source)  # a plain call, as in the data flow
        state = _score_stage(model, config, fp, settings, force)
        stage: StageRef = state.result()
        stats = read_stats(stage)
        run_id = (log_evaluation_task(model, stage, stats, config, settings, rec.mlflow_tags)
                  if needs_run(stats) else None)
        if stats.drift is not None and stats.drift.drifted:
            emit_drift(config.source, model.uri, list(stats.drift.warnings), stats.drift.metrics)
        predictions = publish(stage.file("predictions.parquet"), config.out) if config.out \
            else str(stage.file("predictions.parquet"))
        create_markdown_artifact(redact_all(summary(model, stats, predictions, run_id, state.name, settings)),
                                 key="scoring-summary", description="sentiflow scoring: rows, statuses, metrics")
        rec.outcome.update(scoring_outcome(model, stats, run_id))
    return ScoreOutcome(model=model, stage=stage, state=state.name, predictions=predictions, stats=stats,
                        evaluation_run_id=run_id, tracking_uri=redact(settings.resolved_tracking_uri))


def model_label(model: ModelRef) -> str:
    """``v3`` for a registered version, else the training run's id start."""
    return f"v{model.version}" if model.version else (model.run_id or "model")[:8]


def scoring_outcome(model: ModelRef, stats: ScoreStats, run_id: str | None) -> dict[str, object]:
    """What the run journal keeps of a scoring run (``sentiflow status`` shows it)."""
    m = stats.metrics()
    return {"model_uri": model.uri, "version": model.version, "rows": stats.rows, "evaluation_run_id": run_id,
            "accuracy": m.get("accuracy") if m else None,
            "drift": bool(stats.drift is not None and stats.drift.drifted)}


def summary(model: ModelRef, stats: ScoreStats, predictions: str, run_id: str | None, state: str,
            settings: Settings) -> str:
    lines = ["# sentiflow scoring", "",
             f"Model `{model.requested}` → `{model.uri}` (training run `{model.run_id}`)", "",
             f"Predictions: `{predictions}` ({state.lower()})", "",
             f"**{stats.rows:,}** rows in {stats.seconds:.1f} s ({stats.reviews_per_second:,.0f} reviews/s)"
             + (f", scored from the cached encode stage `{stats.reused}`" if stats.reused else ""), "",
             "| status | rows |", "|---|---|",
             *(f"| {k} | {v:,} |" for k, v in stats.statuses.items())]
    if stats.cut:
        lines += ["", f"{stats.cut:,} reviews longer than {stats.max_chars:,} characters (the model's "
                  f"character budget) were scored on their first {stats.max_chars:,}."]
    m = stats.metrics()
    if m:
        lines += ["", f"Evaluation on {stats.labeled_rows:,} labeled rows, MLflow run {_run_link(run_id, settings)}:",
                  "", "| accuracy | precision | recall | F1 |", "|---|---|---|---|",
                  f"| {m['accuracy']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |", "",
                  "| true \\ predicted | neg | pos |", "|---|---|---|",
                  f"| neg | {m['tn']:,} | {m['fp']:,} |", f"| pos | {m['fn']:,} | {m['tp']:,} |"]
    elif run_id:
        lines += ["", f"MLflow run {_run_link(run_id, settings)} (drift metrics; no labels to evaluate)"]
    return "\n".join(lines + ["", *drift_lines(stats)])


def _run_link(run_id: str | None, settings: Settings) -> str:
    uri = settings.resolved_tracking_uri
    if uri.startswith("http"):
        exp = MlflowClient(uri).get_run(run_id).info.experiment_id
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"
    return f"`{run_id}` (open with `sentiflow ui`)"


def drift_lines(stats: ScoreStats) -> list[str]:
    """The summary's drift section: warnings first, then the figures against the training split."""
    from sentiflow.tasks.scoring import drift

    lines = ["## Distance from the training data", ""]
    d, p = stats.drift, stats.profile
    if d is None:
        return lines + [f"Not measured: {stats.drift_note or 'no statistics'}."]
    if d.warnings:
        lines += [f"**WARNING**: {w}." for w in d.warnings] + [""]
    elif p.rows < drift.MIN_ROWS:
        lines += [f"Too few reviews ({p.rows:,} < {drift.MIN_ROWS}) to judge drift; figures below.", ""]
    else:
        lines += [f"No drift past the thresholds (PSI ≥ {drift.PSI_WARN} on review length or OOV share).", ""]
    mt = d.metrics
    lines += ["| feature | median, training split | median, these reviews | PSI | KS |", "|---|---|---|---|---|"]
    for f, name in (("length", "length (tokens)"), ("oov", "OOV share")):
        if f"drift_{f}_psi" in mt and p.rows:
            t = mt[f"drift_{f}_median_diff"]
            lines.append(f"| {name} | {p.quantile(f, 0.5) - t:.4g} | {p.quantile(f, 0.5):.4g} | "
                         f"{mt[f'drift_{f}_psi']:.3f} | {mt[f'drift_{f}_ks']:.3f} |")
    if "oov_token_share" in mt:
        lines += ["", f"Tokens outside the vocabulary: {100 * mt['oov_token_share']:.2f} % "
                      f"(training split: {100 * mt.get('train_oov_token_share', float('nan')):.2f} %); "
                      f"rows out of domain (`--max-oov`): {stats.statuses[OUT_OF_DOMAIN]:,}."]
    return lines
