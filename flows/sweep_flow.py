"""The sweep flow: an Optuna study over the training's options, one parent MLflow run, the best
trial through the ordinary gate.

``sentiflow sweep`` (and the ``sweep/search`` deployment) runs it. Its form, ``SweepConfig``,
holds a training form (``training``: what every trial shares; the fields it sets, a preset
among them, are fixed and left out of the search), the search space's file, and the study's
size. The flow:

1. prepares the data stages once (the training form's data), shared by every trial;
2. opens the study (``sentiflow.tasks.training.sweep``) under the sweep's lock, requeues a trial
   a killed sweep left running, and opens (or reopens) the parent MLflow run;
3. runs the trials (``run_trials``, a subflow on the task runner the settings choose: threads in
   this process, ``parallel`` at a time, or one trial per Dask worker): each is drawn (TPE), its
   configuration made as the train flow makes one (``trial_config``), and trained by the ``trial``
   task, an ordinary training that reports each epoch's ``val_acc`` to the pruner; after each
   trial the parent run's best-so-far metric and trial table are updated;
4. selects the best trial by ``val_acc`` (pruned trials never win) and hands its run to selection,
   as a training's: the best epoch on validation, test scored once, the gate against the champion
   on the same rows, the champion alias moved only when the gate says so.

The trial task carries the Prefect tag ``sentiflow-trial``: a task concurrency limit of that name
(``prefect concurrency-limit create sentiflow-trial 1``; 1 per GPU) bounds the trials running at
once across every sweep on a server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from sentiflow.flows.data_config import PreparedData
from sentiflow.flows.data_flow import data_flow_for, task_runner_for
from sentiflow.flows.events import emit_champion
from sentiflow.flows.presets import PRESETS, _merge, nested
from sentiflow.flows.recorded import recorded
from sentiflow.flows.runs import confine_deployment_paths, run_settings, with_settings
from sentiflow.flows.train_flow import TrainFlowConfig, lineage, run_config, training_outcome
from sentiflow.storage.names import name_key
from sentiflow.storage.redact import redact, scrubbed
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef, Store, stable_hash
from sentiflow.storage.tracking import configure
from sentiflow.tasks.config import Config, field_paths
from sentiflow.tasks.release.select import SelectResult, select_task
from sentiflow.tasks.training import sweep
from sentiflow.tasks.training.train import TrainConfig, TrainResult, train

TRIAL_TAG = "sentiflow-trial"  # the trial task's Prefect tag: a concurrency limit of this name bounds trials
SWEEP_TAG, TRIAL_NUMBER_TAG = "sentiflow.sweep", "sentiflow.trial"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
PARENT_ATTR = "mlflow_parent_run"  # the study's user attribute naming its parent run


class SweepConfig(Config):
    """A sweep (a form in the Prefect UI): the training every trial shares, where to search, how
    long."""

    training: TrainFlowConfig = Field(TrainFlowConfig(), description="What every trial shares: the data, "
                                      "the gate, the model name; each field set here (a preset too) is "
                                      "fixed for every trial and left out of the search")
    space: str | None = Field(None, description="The search space, a YAML file (unset: the one shipped, "
                                                "tasks/training/sweep_space.yaml)")
    trials: int = Field(12, ge=1, le=10_000, description="Trials to finish (complete or pruned), "
                                                         "counting those of an earlier run of the sweep")
    timeout: float | None = Field(None, gt=0, description="Start no trial after this many minutes (None: no limit)")
    parallel: int = Field(1, ge=1, le=64, description="Trials at once (CPU threads are shared: 1 on a laptop)")
    name: str | None = Field(None, description="The study's name (unset: from the space, the fixed values "
                                               "and the data); rerun a sweep under its name to continue it")
    seed: int = Field(0, description="The sampler's seed")


class TrialResult(BaseModel):
    number: int
    run_id: str
    value: float  # the best epoch's val_acc
    epochs: int  # epochs the run holds
    max_epochs: int
    pruned_at: int | None = None
    resumed_from: int = 0


class SweepOutcome(BaseModel):
    name: str
    parent_run_id: str
    trials: list[TrialResult]
    best: TrialResult
    selected: SelectResult
    requeued: list[int] = []
    epochs_saved: int  # epochs the pruned trials did not train


# -- the configuration of a trial -----------------------------------------------------------------

SEARCHABLE = tuple(p for p in field_paths(TrainConfig) if "." in p)  # model.* and train.* fields


def fixed_paths(training: TrainFlowConfig) -> set[str]:
    """The fields the caller set (at any depth), as dotted paths: fixed for every trial."""
    def walk(node: Any, prefix: str) -> set[str]:
        if not isinstance(node, dict):
            return {prefix}
        return set().union(*(walk(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items())) if node else set()

    return walk(training.model_dump(exclude_unset=True), "")


def check_space(space: sweep.Space) -> sweep.Space:
    """Each entry must be a model or training field, or ``preset``, and each value valid for it."""
    for path, dim in space.dimensions.items():
        if path != "preset" and path not in SEARCHABLE:
            raise sweep.SweepError(f"search space {space.origin}: {path}: not a field a sweep searches "
                                   f"(preset, model.*, train.*; the data is prepared once for every trial)")
        for value in dim.choice or (dim.float_ or dim.int_):
            try:
                trial_config(TrainFlowConfig(), {path: value})
            except ValueError as e:
                raise sweep.SweepError(f"search space {space.origin}: {path}: {value!r} is not valid: "
                                       f"{str(e).splitlines()[-1].strip()}") from e
    return space


def trial_config(training: TrainFlowConfig, values: dict[str, Any]) -> TrainFlowConfig:
    """A trial's training form: the defaults, under the preset (the trial's, else the caller's),
    under the trial's values, under the fields the caller set; validated."""
    given = training.model_dump(exclude_unset=True)
    preset = values.get("preset") or given.pop("preset", None)
    given.pop("preset", None)
    merged = nested(PRESETS[preset]) if preset in PRESETS else {}  # an unknown one: refused below
    _merge(merged, nested({k: v for k, v in values.items() if k != "preset"}))
    _merge(merged, given)
    return TrainFlowConfig.model_validate({**merged, "preset": preset})


def default_name(space: sweep.Space, training: TrainFlowConfig, data: PreparedData) -> str:
    """``sweep-<hash>`` of the space, the fixed values and the data's stage keys: the same command
    on the same data continues the same sweep."""
    return "sweep-" + stable_hash({"space": space.describe(), "fixed": training.model_dump(mode="json", exclude_unset=True),
                                   "data": [data.encoded["train"].key, data.encoded["val"].key]})[:8]


# -- a trial --------------------------------------------------------------------------------------

@task(name="trial", cache_policy=NO_CACHE, tags=[TRIAL_TAG], task_run_name="trial-{number}")
@scrubbed
def trial_task(number: int, trial_id: int, study_name: str, config: TrainConfig, refs: tuple[StageRef, ...],
               data_lineage: dict[str, Any], settings: Settings, run_name: str, tags: dict[str, str]) -> TrialResult:
    """One trial: an ordinary training whose epochs are reported to the study's pruner."""
    study = optuna.load_study(study_name=study_name, storage=settings.resolved_sweep_storage, pruner=sweep.pruner())
    report = sweep.reporter(study, trial_id)
    result = train(config, *refs, data_lineage, settings, run_name, tags, report=report)
    history = sorted((m.step, m.value) for m in MlflowClient().get_metric_history(result.run_id, "val_acc"))
    reported = study._storage.get_trial(trial_id).intermediate_values
    for epoch, value in history:  # a finished run reused reports none: its epochs still inform the pruner
        if epoch not in reported and (result.pruned_at is None or epoch <= result.pruned_at):
            optuna.trial.Trial(study, trial_id).report(value, epoch)
    return TrialResult(number=number, run_id=result.run_id, value=sweep.best_value(history), epochs=len(history),
                       max_epochs=config.train.max_epochs, pruned_at=result.pruned_at,
                       resumed_from=result.resumed_from)


@flow(name="sweep-trials")
def run_trials(study_name: str, space: sweep.Space, training: TrainFlowConfig, data: PreparedData,
               parent_run_id: str, trials: int, parallel: int, deadline: float | None, seed: int = 0) -> list[TrialResult]:
    """Draw and run trials until ``trials`` count (complete or pruned) or ``deadline``
    (``time.time()``) passes, at most ``parallel`` at once; each told to the study as it ends."""
    settings = run_settings()
    study = sweep.open_study(study_name, settings.resolved_sweep_storage, seed)
    refs = (data.encoded["train"], data.encoded["val"], data.vocab)
    pending: dict[Any, optuna.Trial] = {}
    results: list[TrialResult] = []

    def room() -> bool:
        return (len(sweep.counted(study)) + len(pending) < trials
                and (deadline is None or time.time() < deadline) and len(pending) < parallel)

    while True:
        while room():
            trial = study.ask()
            values = space.suggest(trial)
            config = trial_config(training, values)
            train_config = TrainConfig(model=config.model, train=config.train)
            trial.set_user_attr("config", train_config.model_dump(mode="json"))
            name = f"{study_name}-trial-{trial.number}"
            tags = {PARENT_TAG: parent_run_id, SWEEP_TAG: study_name, TRIAL_NUMBER_TAG: str(trial.number)}
            future = trial_task.submit(trial.number, trial._trial_id, study_name, train_config, refs,
                                       lineage(data, config.data), settings, name, tags)
            pending[future] = trial
        if not pending:
            return results
        done = next(as_completed(list(pending)))
        trial = pending.pop(done)
        try:
            result = done.result()
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("run_id", result.run_id)
        if result.pruned_at is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, result.value)
        results.append(result)
        update_parent(settings, study, parent_run_id, trials)


# -- the parent run -------------------------------------------------------------------------------

def parent_run(settings: Settings, study: optuna.Study, space: sweep.Space, training: TrainFlowConfig,
               trials: int) -> str:
    """The sweep's parent MLflow run: the study's (reopened when a killed sweep reruns), else a
    new one holding the space, the fixed values, the sampler and the pruner."""
    experiment_id = configure(settings)
    client = MlflowClient()
    known = study.user_attrs.get(PARENT_ATTR)
    if known:
        try:
            client.update_run(known, status="RUNNING")
            client.set_tag(known, "sentiflow.trials_planned", str(trials))
            return known
        except Exception:  # noqa: BLE001 - deleted: a new parent run
            pass
    run = client.create_run(experiment_id, run_name=study.study_name, tags={
        SWEEP_TAG: study.study_name, "sentiflow.trials_planned": str(trials),
        "mlflow.note.content": f"sentiflow sweep `{study.study_name}`: each child run is a trial "
                               "(Chart view or Compare: parallel coordinates of the options against val_acc)"})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[
        *(_param(f"space.{k}", v) for k, v in space.describe().items()),
        *(_param(f"fixed.{p}", _value(training, p)) for p in sorted(fixed_paths(training))),
        _param("sweep.sampler", "TPE"), _param("sweep.pruner", f"successive halving, factor {sweep.REDUCTION_FACTOR}, "
                                                                 "from epoch 1, on val_acc"),
        _param("sweep.space_file", space.origin)])
    client.log_text(run_id, Path(space.origin).read_text() if Path(space.origin).is_file() else
                    json.dumps(space.describe(), indent=2), "space.yaml")
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def _value(config: TrainFlowConfig, path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        value = getattr(value, key, None)
    return value


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial that counts, in order: number, state, val_acc, epochs, values, run."""
    rows = []
    for t in sweep.counted(study):
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "val_acc": t.value if t.value is not None else max(t.intermediate_values.values(), default=None),
                     "epochs": last, "run_id": t.user_attrs.get("run_id"), **t.params})
    return rows


def update_parent(settings: Settings, study: optuna.Study, run_id: str, trials: int) -> None:
    """After a trial: the best ``val_acc`` so far, the counts, and the trial table."""
    client = MlflowClient()
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    step = len(rows)
    metrics = {"trials_done": len(rows), "trials_pruned": len(rows) - len(complete)}
    if complete:
        metrics["best_val_acc"] = max(r["val_acc"] for r in complete)
    for k, v in metrics.items():
        client.log_metric(run_id, k, v, step=step)
    client.log_text(run_id, table(rows), "trials.md")
    client.log_dict(run_id, rows, "trials.json")


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trial yet)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|",
                      *("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows)])


# -- the flow -------------------------------------------------------------------------------------

def sweep_run_name() -> str:
    return "sweep"


@flow(name="sweep", flow_run_name=sweep_run_name)
def sweep_flow(config: SweepConfig = SweepConfig(), data_root: str | None = None, workers: int = 0) -> SweepOutcome:
    """Prepare the data once, run the study's trials, select the best through the gate."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    with recorded(settings, "sweep") as rec:
        confine_deployment_paths(settings, files={"space": config.space})
        space = check_space(sweep.load_space(config.space).without(fixed_paths(config.training)))
        training = config.training
        filled = run_config(training, settings)  # the data (and gate) as a training would have them
        data = data_flow_for(settings)(config=filled.data)
        name = config.name or default_name(space, training, data)
        sweep.check_study_name(name)
        rec.rename(name)
        store = Store(settings.data_root)
        with store.lock(store.ref("sweep", name_key(name))):
            study = sweep.open_study(name, settings.resolved_sweep_storage, config.seed)
            requeued = sweep.requeue_stale(study)
            parent = parent_run(settings, study, space, training, config.trials)
            deadline = time.time() + config.timeout * 60 if config.timeout else None
            runner = (ThreadPoolTaskRunner(max_workers=config.parallel) if settings.task_runner == "local"
                      else task_runner_for(settings, workers=config.parallel))
            results = with_settings(run_trials, settings, task_runner=runner)(
                study_name=name, space=space, training=training.model_copy(update={"data": filled.data}),
                data=data, parent_run_id=parent, trials=config.trials, parallel=config.parallel, deadline=deadline,
                seed=config.seed)
            best_trial = best_complete(study, name)
            best_config = TrainConfig.model_validate(best_trial.user_attrs["config"])
            best = TrainResult(run_id=best_trial.user_attrs["run_id"], experiment_id=configure(settings),
                               epochs=best_config.train.max_epochs)
            selected = select_task(best, best_config, filled.data.tokenize, data.vocab, data.encoded["val"],
                                   data.encoded["test"], filled.model_name, settings, filled.gate)
            finish_parent(settings, study, parent, best_trial, selected)
        rec.outcome.update({**training_outcome(selected), "sweep": name, "best_trial": best_trial.number})
        if not selected.reused:
            emit_champion(selected)
        outcome = outcome_of(study, name, parent, results, requeued, selected)
        create_markdown_artifact(summary(outcome, study), key="sweep-summary",
                                 description="sentiflow sweep: trials, the best, the gate's verdict")
    return outcome


def best_complete(study: optuna.Study, name: str) -> optuna.trial.FrozenTrial:
    """The complete trial with the best ``val_acc`` (a pruned one never wins); none: an error."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise sweep.SweepError(f"sweep {name}: no trial completed ({len(sweep.counted(study))} pruned): "
                               "nothing to select; give it more trials or time (--trials, --timeout)")
    return study.best_trial


def outcome_of(study: optuna.Study, name: str, parent: str, results: list[TrialResult], requeued: list[int],
               selected: SelectResult) -> SweepOutcome:
    """Every counted trial (those of earlier runs of the sweep too), the best, the epochs saved."""
    by_number = {r.number: r for r in results}
    trials = []
    for t in sweep.counted(study):
        if t.number in by_number:
            trials.append(by_number[t.number])
            continue
        config = TrainConfig.model_validate(t.user_attrs["config"])
        trials.append(TrialResult(number=t.number, run_id=t.user_attrs.get("run_id", ""),
                                  value=t.value if t.value is not None else max(t.intermediate_values.values(), default=0.0),
                                  epochs=max(t.intermediate_values, default=0), max_epochs=config.train.max_epochs,
                                  pruned_at=max(t.intermediate_values, default=0)
                                  if t.state == optuna.trial.TrialState.PRUNED else None))
    best = next(t for t in trials if t.number == study.best_trial.number)
    saved = sum(t.max_epochs - t.pruned_at for t in trials if t.pruned_at is not None)
    return SweepOutcome(name=name, parent_run_id=parent, trials=trials, best=best, selected=selected,
                        requeued=requeued, epochs_saved=saved)


def finish_parent(settings: Settings, study: optuna.Study, run_id: str, best: optuna.trial.FrozenTrial,
                  selected: SelectResult) -> None:
    client = MlflowClient()
    client.set_tag(run_id, "sentiflow.best_trial", str(best.number))
    client.set_tag(run_id, "sentiflow.best_run", best.user_attrs["run_id"])
    client.set_tag(run_id, "sentiflow.registered", f"{selected.model_name} v{selected.version} ({selected.alias})")
    client.log_metric(run_id, "best_test_acc", selected.test_acc if selected.test_acc is not None else float("nan"))
    client.set_terminated(run_id, "FINISHED")


def summary(outcome: SweepOutcome, study: optuna.Study) -> str:
    s = outcome.selected
    pruned = sum(t.pruned_at is not None for t in outcome.trials)
    lines = [f"# sentiflow sweep `{outcome.name}`", "",
             f"{len(outcome.trials)} trials ({pruned} pruned; {outcome.epochs_saved} epochs saved by pruning), "
             f"parent MLflow run `{outcome.parent_run_id}`", "",
             f"Best: trial {outcome.best.number}, val_acc **{outcome.best.value:.4f}** (run `{outcome.best.run_id}`); "
             f"registered `{s.model_name}` version {s.version} as `{s.alias}`, test_acc "
             f"{'n/a' if s.test_acc is None else f'{s.test_acc:.4f}'} (scored once, after the choice)", "",
             f"Gate: {s.gate.reason if s.gate else 'not judged'}", "", table(trial_rows(study))]
    return redact("\n".join(lines))


def sweep_flow_for(settings: Settings):
    """The sweep flow carrying these settings (as ``data_flow_for``)."""
    return with_settings(sweep_flow, settings)
