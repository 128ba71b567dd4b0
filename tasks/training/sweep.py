"""Sweeps: an Optuna study over the training's options, each trial an ordinary training.

A search space (``Space``, read from a small YAML file: ``sweep_space.yaml`` is the default)
names fields of the training form by dotted path and how each is drawn. A study (``open_study``)
lives in storage that outlives the process (``Settings.resolved_sweep_storage``: a SQLite file
under the data root, or PostgreSQL), so a sweep rerun under the same name continues it.

Sampling and pruning. Trials are drawn by TPE (``TPESampler``, seeded) and pruned by successive
halving (``SuccessiveHalvingPruner``, reduction factor 3, from epoch 1) fed by the training's own
per-epoch ``val_acc`` (``train(..., report=...)``): after epochs 1, 3 and 9 a trial goes on only
when its accuracy is among the best third of the trials that reached that epoch (the first trials,
while fewer than three did, only when they are the best so far). Hyperband was the other choice:
it splits the trials among brackets of different aggressiveness, and with the 6 to 20 trials a
sweep on two cores affords, each bracket holds too few trials to prune in; successive halving is
Hyperband's most aggressive bracket alone, which is what a small budget needs.

A trial is an ordinary training (``run_trial``): the same key rules, so a repeated configuration
reuses its run and an interrupted one resumes from its checkpoint; a pruned one ends KILLED with
the epoch it reached (``sentiflow.pruned_at_epoch``). Its value is its best epoch's ``val_acc``:
trials are compared on validation only. ``requeue_stale`` makes a killed sweep's interrupted trial
a new trial with the same values, which resumes the same MLflow run, and never counts the dead one.

Plain functions over Optuna; the flow (``sentiflow.flows.sweep_flow``) wires them.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sentiflow.tasks.training.train import Report

log = logging.getLogger("sentiflow.sweep")
DEFAULT_SPACE = Path(__file__).with_name("sweep_space.yaml")
REDUCTION_FACTOR = 3  # successive halving: a third of the trials go on at each rung
RESUMES_ATTR = "resumes_trial"  # a trial enqueued in place of a killed one: that one's number
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class SweepError(ValueError):
    """A sweep that cannot run as asked, in one line: a search space that cannot be used (naming
    the file and the entry), a bad name, a sweep with no trial to select."""


class Dimension(BaseModel):
    """How one field is drawn: ``float`` or ``int`` between two ends (``log``: log-uniform), or
    one of ``choice``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    float_: tuple[float, float] | None = Field(None, alias="float")
    int_: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in (self.float_, self.int_, self.choice) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [low, high], int: [low, high], choice: [...]")
        ends = self.float_ or self.int_
        if ends is not None and not ends[0] < ends[1]:
            raise ValueError(f"low must be below high, got {list(ends)}")
        if self.log and (ends is None or ends[0] <= 0):
            raise ValueError("log: true needs a float or int range above 0")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: give at least one value")
        return self

    @property
    def kind(self) -> Literal["float", "int", "choice"]:
        return "float" if self.float_ is not None else "int" if self.int_ is not None else "choice"

    def describe(self) -> str:
        if self.choice is not None:
            return "one of " + ", ".join(map(str, self.choice))
        low, high = self.float_ or self.int_
        return f"{self.kind} {low} to {high}" + (" (log)" if self.log else "")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.float_ is not None:
            return trial.suggest_float(name, *self.float_, log=self.log)
        if self.int_ is not None:
            return trial.suggest_int(name, *self.int_, log=self.log)
        return trial.suggest_categorical(name, self.choice)


class Space(BaseModel):
    """A search space: field path → ``Dimension``, in the file's order; ``origin``: the file."""

    dimensions: dict[str, Dimension]
    origin: str = str(DEFAULT_SPACE)

    def without(self, fixed: set[str]) -> Space:
        """The space less the fields given a value of their own (``fixed``)."""
        return self.model_copy(update={"dimensions": {k: v for k, v in self.dimensions.items() if k not in fixed}})

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per field, drawn by the study's sampler (or fixed by an enqueued trial)."""
        return {path: dim.suggest(trial, path) for path, dim in self.dimensions.items()}

    def describe(self) -> dict[str, str]:
        return {path: dim.describe() for path, dim in self.dimensions.items()}


def load_space(path: Path | str | None = None) -> Space:
    """The space in the YAML file at ``path`` (None: the default one), each entry checked; an
    error names the file and the entry. Which fields exist is the caller's check."""
    file = Path(path) if path else DEFAULT_SPACE
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"search space {file}: cannot be read: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise SweepError(f"search space {file}: expected a mapping of field paths to ranges, got {raw!r}")
    dims = {}
    for key, spec in raw.items():
        try:
            dims[str(key)] = Dimension.model_validate(spec)
        except ValueError as e:
            first = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise SweepError(f"search space {file}: {key}: {first.removeprefix('Value error, ')}") from e
    return Space(dimensions=dims, origin=str(file))


def check_study_name(name: str) -> str:
    """A sweep's name: letters, digits, ``.``, ``_``, ``-``, at most 100 (it names a study, an
    MLflow run and, hashed, a lock)."""
    if not STUDY_NAME.fullmatch(name):
        raise SweepError(f"sweep name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


# -- the study ------------------------------------------------------------------------------------

def open_study(name: str, storage: str, seed: int = 0) -> optuna.Study:
    """The study ``name`` in ``storage``, created when new: maximise ``val_acc``, TPE, successive
    halving (see the module docstring). The sampler's seed is ``seed`` plus the trials the study
    holds: the same history draws the same next trial, and a continued sweep draws new values."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sentiflow logs each trial itself
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner())
    if study.trials:  # a sweep continued: seeded anew, or it would draw its first trials' values again
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``--trials``: complete or pruned."""
    return study.get_trials(deepcopy=False, states=COUNTED)


def requeue_stale(study: optuna.Study) -> list[int]:
    """Trials left running by a sweep that died (the caller holds the sweep's lock, so none is
    alive): each is marked failed, so it never counts, and its values are queued again, so the
    next trial drawn is the same configuration, whose training resumes the same MLflow run from
    its checkpoint. Returns the numbers of the trials requeued."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={RESUMES_ATTR: t.number})
        log.info("trial %d was interrupted: queued again, its training resumes", t.number)
    return [t.number for t in stale]


def reporter(study: optuna.Study, trial_id: int) -> Report:
    """The ``report`` a trial's training calls after each epoch: records ``val_acc`` as the
    trial's intermediate value at that epoch and answers whether the pruner stops it. Works in
    any process that reaches the study's storage (a Dask worker's)."""
    trial = optuna.trial.Trial(study, trial_id)

    def report(epoch: int, val_acc: float) -> bool:
        trial.report(val_acc, epoch)
        return trial.should_prune()

    return report


def best_value(history: list[tuple[int, float]]) -> float:
    """A trial's value: its best epoch's ``val_acc`` (the epoch selection would pick)."""
    values = [v for _, v in history if not math.isnan(v)]
    return max(values) if values else float("nan")
