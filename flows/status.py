"""``sentiflow status``: which data stages are stored for the current source and settings, without
running anything (like ``dvc status``). No Prefect server, no spaCy, no torch, no MLflow.

Each stage's key is planned from its inputs by walking the data DAG (``sentiflow.tasks.data.dag``)
as the flow does, with the tasks' own planners (their cache keys); a stage whose input is not
stored cannot be planned further and is reported as waiting for it. A stored folder is checked
by its manifest (its key, and every file present with the recorded size), not by checksum: this
is a quick look; ``prepare`` checksums every file before it trusts one.

``stored_result`` is ``prepare``'s no-op path: when every stage of the plan is stored and every
file passes its checksum, it returns what the data flow would (all Cached) without starting
Prefect's server or running a flow. ``stored_stages`` is the ``stages`` table: every stored folder,
a part's shards counted with those it shares with an earlier folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiflow.flows.data_config import DataConfig, PreparedData
from sentiflow.storage.store import StageRef, Store, file_sha256
from sentiflow.tasks.data import dag
from sentiflow.tasks.data.dag import Step


@dataclass
class StageStatus:
    task: str  # as the data flow names its task runs: ingest, tokenize-train, ...
    state: str  # "cached", "missing", "damaged: <why>", or "waits for <task>"
    key: str = ""
    shards: str = ""  # per-shard stages: "<stored>/<all> shards stored"


def _state(store: Store, ref: StageRef) -> str:
    problem = store.problem(ref, checksums=False)
    return "cached" if problem is None else ("missing" if problem == "missing" else f"damaged: {problem}")


def data_status(config: DataConfig, root: Path | str) -> list[StageStatus]:
    """The data stages of ``config`` (its source resolved) in ``root``, in stage order."""
    return _plan(config, root)[0]


@dataclass
class _Planned:
    refs: dict[str, StageRef]  # task run name → its (gathered) stage folder
    shards: dict[str, list[StageRef]]  # per-part run name → its shard folders


def stored_result(config: DataConfig, root: Path | str) -> PreparedData | None:
    """The data flow's result when every stage is stored and intact (checksums included), else
    None (something is to be run)."""
    rows, planned = _plan(config, root)
    if any(r.state != "cached" for r in rows):
        return None
    store, digest = Store(root), _digest_once()
    every = [*planned.refs.values(), *(r for refs in planned.shards.values() for r in refs)]
    if any(store.problem(ref, digest=digest) is not None for ref in every):
        return None  # a damaged file: the flow rebuilds it
    return PreparedData.from_refs(planned.refs, {name: "Cached" for name in planned.refs},
                                  {name: {"Cached": len(refs)} for name, refs in planned.shards.items()})


def _digest_once() -> Callable[[Path], str]:
    """``file_sha256`` that reads each file once: a gathered folder's files are hard links to its
    shards' (the same inode), so checking both would hash every byte twice."""
    seen: dict[tuple[int, int, int, int], str] = {}

    def digest(path: Path) -> str:
        st = path.stat()
        inode = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if inode not in seen:
            seen[inode] = file_sha256(path)
        return seen[inode]

    return digest


def _plan(config: DataConfig, root: Path | str) -> tuple[list[StageStatus], _Planned]:
    """The data DAG walked as the flow walks it, planning each run's folder with its task's
    planner instead of running it, and looking at what is stored."""
    store = Store(root)
    out: list[StageStatus] = []
    planned = _Planned({}, {})
    outputs: dict[str, Any] = dag.seeds(config.source)  # run → its planned folder; and the seeds
    stored = set(outputs)  # the runs whose folder is stored (and the seeds)
    for step in dag.DAG:
        for run, part in step.runs.items():
            waits_for = _waits_for(step, part, stored, planned.shards)
            if waits_for:
                out.append(StageStatus(run, f"waits for {waits_for}"))
                continue
            ref, shards = _plan_run(step, part, config, root, outputs, planned.shards)
            state = _state(store, ref)
            counted = _shards(store, shards) if step.per_shard else ""
            out.append(StageStatus(run, state, ref.key, counted))
            planned.refs[run] = outputs[run] = ref
            if step.per_shard:
                planned.shards[run] = shards
            if state == "cached":
                stored.add(run)
    return out, planned


def _waits_for(step: Step, part: str, stored: set[str],
               planned_shards: dict[str, list[StageRef]]) -> str:
    """The first run that ``step``'s run for ``part`` cannot be planned without, or "": an input
    not stored, or the run its shards come from, not stored (its files are read) or, when they
    are another stage's shard outputs, not planned."""
    for run in step.inputs.values():
        if run not in stored:
            return run
    if step.per_shard:
        run, mapped = step.shard_source(part)
        if run not in (planned_shards if mapped else stored):
            return run
    return ""


def _plan_run(step: Step, part: str, config: DataConfig, root: Path | str, outputs: dict[str, Any],
              planned_shards: dict[str, list[StageRef]]) -> tuple[StageRef, list[StageRef]]:
    """The folder of ``step``'s run for ``part`` and, for a per-shard step, its shards' folders."""
    args = {**step.arguments(config, outputs), "root": root}
    if not step.per_shard:
        return step.plan(args), []
    shards, source, source_part = step.part_shards(part, outputs, planned_shards)
    refs = [step.plan({**args, step.shard_arg: shard, "part": part, "index": i})
            for i, shard in enumerate(shards)]
    gather = step.gather_arguments(part, refs, source, source_part)
    return dag.plan_gather({**gather, "root": root}), refs


def _shards(store: Store, refs: list[StageRef]) -> str:
    stored = sum(store.problem(r, checksums=False) is None for r in refs)
    return f"{stored}/{len(refs)} shards stored"


# -- the stages table ----------------------------------------------------------------------------

def stored_stages(root: Path | str) -> list[dict[str, Any]]:
    """The ``stages`` table of ``root``: every stored stage folder, oldest first, with ``stage``,
    ``key``, ``rows``, ``bytes``, ``created`` ("" when unknown) and ``shards``: for a per-shard
    stage's part, "<n>: <m> reused" (m of its n shards were already in an earlier folder of that
    stage). Then one row a shard stage (``tokenize-shard``, ...): its folders counted as the key,
    "(<n> folders)", their rows and bytes summed."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, set[str]] = {}  # a per-shard stage → the shards of its earlier folders
    per_shard: dict[str, dict[str, int]] = {}  # a shard stage → its folders, rows, bytes
    for r in Store(root).list():  # oldest first
        if r["stage"] in dag.SHARD_STAGES.values():
            totals = per_shard.setdefault(r["stage"], {"folders": 0, "rows": 0, "bytes": 0})
            for name, n in (("folders", 1), ("rows", r["rows"]), ("bytes", r["bytes"])):
                totals[name] += n
            continue
        shards = ""
        if r["stage"] in dag.SHARD_STAGES:
            earlier = seen.setdefault(r["stage"], set())
            mine = [i for i in r["inputs"] if i.startswith(f"{dag.SHARD_STAGES[r['stage']]}/")]
            shards = f"{len(mine)}: {sum(i in earlier for i in mine)} reused"
            earlier.update(mine)
        rows.append({"stage": r["stage"], "key": r["key"], "rows": r["rows"], "bytes": r["bytes"],
                     "created": r["created"] or "", "shards": shards})
    for stage, totals in per_shard.items():
        rows.append({"stage": stage, "key": f"({totals['folders']:,} folders)",
                     "rows": totals["rows"], "bytes": totals["bytes"], "created": "", "shards": ""})
    return rows
