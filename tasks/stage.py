"""Run-or-reuse for stages, and the Prefect cache key that mirrors it.

A stage is described by its name, its parameters, the keys of its inputs and its code version.
``run_stage`` returns the stored folder at once when it is valid, otherwise builds it atomically.
``cache_key_fn`` gives Prefect the same key, or ``None`` (run, store no record) when the folder is
missing or damaged, so a stored Prefect record never points at a folder that is not there.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from storage.store import StageRef, Store, stable_hash, stage_key

log = logging.getLogger("sentiflow.stage")


def code_version(module_name: str, *extra: str) -> str:
    """A hash of a stage module's source (plus any library versions that change its output)."""
    source = inspect.getsource(sys.modules[module_name])
    return hashlib.sha256("\n".join([source, *extra]).encode()).hexdigest()[:16]


def input_token(ref: StageRef, part: str = "") -> str:
    """How an input enters a key: the producing stage, its key, and which part of it is read."""
    return f"{ref.stage}/{ref.key}" + (f":{part}" if part else "")


def plan(
    root: Path | str, stage: str, params: BaseModel | None, inputs: list[str], code: str
) -> StageRef:
    params_json = params.model_dump(mode="json") if params is not None else {}
    return Store(root).ref(stage, stage_key(stage, params_json, inputs, code))


def run_stage(
    root: Path | str,
    ref: StageRef,
    params: BaseModel | None,
    inputs: list[str],
    build: Callable[[Path], None],
    force: bool = False,
) -> StageRef:
    """Return ``ref`` when its folder is valid, else call ``build(tmp_dir)`` and publish it."""
    store = Store(root)
    if not force:
        problem = store.problem(ref)
        if problem is None:
            log.info("%s %s: valid, reused", ref.stage, ref.key)
            return ref
        if problem != "missing":
            log.warning("%s %s: %s; recomputing", ref.stage, ref.key, problem)
    params_json = params.model_dump(mode="json") if params is not None else {}
    with store.build(ref, params_json, inputs) as tmp:
        build(tmp)
    log.info("%s %s: written to %s", ref.stage, ref.key, ref.path)
    return ref


def cache_key_fn(planner: Callable[[dict[str, Any]], StageRef]):
    """A Prefect ``cache_key_fn`` from a function mapping the task's parameters to its ref.

    Valid folder: the key (a stored record is served: state "Cached"). Missing or damaged folder
    with no record yet: the key too, so the run that builds it stores the record and the next run
    is Cached. Missing or damaged folder with a record: ``None``, so the stale record is not
    served and the stage is rebuilt in place (the record then points at a valid folder again).
    """

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        if parameters.get("force"):
            return None
        ref = planner(parameters)
        # the folder's location is part of the key: two data roots never share a record
        k = f"sentiflow-{ref.stage}-{ref.key}-{stable_hash(str(ref.path))[:12]}"
        if Store(ref.path.parent.parent).is_valid(ref):
            return k
        from prefect.results import get_result_store

        return None if get_result_store().exists(k) else k

    return key
