"""Run-or-reuse for stages, and the Prefect cache key that mirrors it.

A stage is described by a ``StageSpec``: its name, its parameters, the keys of its inputs and its
code version. The spec gives both the folder (``spec.ref(root)``) and what its manifest records,
so the key and the manifest cannot drift apart. ``run_stage`` returns the stored folder at once
when it is valid, otherwise builds it atomically, holding the key's lock so that two runs on one
data root build it once. ``cache_key_fn`` gives Prefect the same key, or ``None`` (run, store no
record) when the folder is missing or damaged, so a stored Prefect record never points at a
folder that is not there. The records themselves are read and written by
``sentiflow.tasks.stage_records`` alone: plain JSON, whatever a record claims about itself.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel

from sentiflow.storage.redact import scrubbed
from sentiflow.storage.store import StageRef, Store, stage_key

log = logging.getLogger("sentiflow.stage")


# The model's own code: every module of this package, shipped with the registered model
# (``sentiflow.tasks.scoring.serving``) and part of the training and score keys. One list, read
# from the package itself, so a module added there is shipped and keyed without another edit.
MODEL_PACKAGE = "sentiflow.tasks.core"
TEXT_CODE = f"{MODEL_PACKAGE}.text"  # text to token ids: what the data stages' keys name


def model_code() -> list[str]:
    """The modules of ``MODEL_PACKAGE``, by name, sorted."""
    package = importlib.import_module(MODEL_PACKAGE)
    return sorted(f"{MODEL_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


def code_version(modules: str | Sequence[str], *extra: str) -> str:
    """A hash of the source of a stage's module(s) (plus any library versions that change its
    output). One name gives the same hash as before several were accepted."""
    names = [modules] if isinstance(modules, str) else list(modules)
    sources = [inspect.getsource(importlib.import_module(name)) for name in names]
    return hashlib.sha256("\n".join([*sources, *extra]).encode()).hexdigest()[:16]


def input_token(ref: StageRef, part: str = "") -> str:
    """How an input enters a key: the producing stage, its key, and which part of it is read."""
    return f"{ref.stage}/{ref.key}" + (f":{part}" if part else "")


def read_input_token(token: str) -> tuple[str, str, str]:
    """``input_token``'s parts back: (stage, key, part); part "" when none is named."""
    stage, _, rest = token.partition("/")
    key, _, part = rest.partition(":")
    return stage, key, part


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage's key depends on; also what its manifest records."""

    stage: str
    params: BaseModel | None
    inputs: tuple[str, ...]
    code: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def params_json(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json") if self.params is not None else {}

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.params_json, list(self.inputs), self.code)

    def ref(self, root: Path | str) -> StageRef:
        return Store(root).ref(self.stage, self.key)


def run_stage(
    root: Path | str,
    spec: StageSpec,
    build: Callable[[Path], None],
    force: bool = False,
) -> StageRef:
    """Return the spec's folder when it is valid, else call ``build(tmp_dir)`` and publish it.

    Check and build happen under the key's lock: a second run of the same key waits, then
    finds the folder valid and reuses it (unless ``force``).
    """
    store = Store(root)
    ref = spec.ref(root)
    with store.lock(ref):
        if not force:
            problem = store.problem(ref)
            if problem is None:
                log.info("%s %s: valid, reused", ref.stage, ref.key)
                return ref
            if problem != "missing":
                log.warning("%s %s: %s; recomputing", ref.stage, ref.key, problem)
        with store.build(ref, spec.params_json, list(spec.inputs)) as tmp:
            build(tmp)
    log.info("%s %s: written to %s", ref.stage, ref.key, ref.path)
    return ref


def cache_key_fn(planner: Callable[[dict[str, Any]], StageRef]):
    """A Prefect ``cache_key_fn`` from a function mapping the task's parameters to its ref.

    Valid folder: the key (a stored record is served: state "Cached"). Missing or damaged folder
    with no record yet: the key too, so the run that builds it stores the record and the next run
    is Cached. Missing or damaged folder with a record: ``None``, so the stale record is not
    served and the stage is rebuilt in place (the record then points at a valid folder again).
    A record that is not a good one (``stage_records.read_record``) counts as none.
    """

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        from sentiflow.tasks import stage_records

        if parameters.get("force"):
            return None
        ref = planner(parameters)
        k = stage_records.record_key(ref)
        if Store(ref.path.parent.parent).is_valid(ref):
            return k
        return None if stage_records.read_record(k) is not None else k

    return key


class StageTask:
    """A stage's Prefect task, made on first use: planning a stage (``sentiflow status``) needs
    its ``planner``, not Prefect, whose import takes seconds. Calls, ``submit``, ``with_options``
    and every other attribute go to the task (``.task``)."""

    def __init__(self, fn: Callable[..., StageRef], planner: Callable[[dict[str, Any]], StageRef],
                 options: dict[str, Any]):
        self.fn, self.planner, self._options = fn, planner, options
        self.name = options["name"]
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def task(self) -> Any:
        from prefect import task

        from sentiflow.tasks import stage_records

        options = {**stage_records.task_options(cache_key_fn(self.planner)), **self._options}
        made = task(**options)(scrubbed(self.fn))  # a failure's message stored without a password
        made.planner = self.planner
        return made

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("task", "_options", "fn", "planner"):
            raise AttributeError(name)
        return getattr(self.task, name)


def stage_task(name: str, planner: Callable[[dict[str, Any]], StageRef], per_shard: bool = False,
               **options: Any) -> Callable[[Callable[..., StageRef]], StageTask]:
    """The ``@task`` of a stage: cached by its stage key (``cache_key_fn`` of ``planner``: the
    task's arguments → its folder), its result (a ``StageRef``) stored as plain JSON and read back
    by sentiflow's own reader (``stage_records``): a cache record on a shared volume is never
    unpickled, and nothing it names is imported or called. The task keeps ``planner`` as
    ``.planner``: what ``sentiflow status`` plans without running anything (and without importing
    Prefect: the task is made on first use, ``StageTask``). ``per_shard``: one task run a shard, named
    ``<stage>-<part>-<index>`` from its ``part`` and ``index`` arguments."""
    if per_shard:
        options.setdefault("task_run_name", name + "-{part}-{index}")

    def decorate(fn: Callable[..., StageRef]) -> StageTask:
        return StageTask(fn, planner, {"name": name, **options})

    return decorate
