"""The data flow: ingest → split → tokenize (train, val, test) → vocab → encode (train, val, test).

The flow only wires tasks, once, whichever task runner runs them: ``prepare`` walks the data DAG
(``sentiflow.tasks.data.dag.DAG``, where the order and the wiring are written), every stage is
submitted, each task gets its upstream tasks' futures as inputs, and the flow then resolves the
futures in stage order. Tokenize and encode are one task per shard (``tokenize-train-3``), each
keyed by its shard's content, then one task per part gathers them (``tokenize-train``;
``sentiflow.tasks.data.shards``).
Each task returns a ``StageRef`` and is served from Prefect's cache (state "Cached") when its
stage folder is present and valid: after reviews are appended to a source, the shards that did
not change are Cached and only the new ones are tokenized (``PreparedData.shards`` counts them).
The source's fingerprint (ingest's key) is a plain call, not a task: a task would run, and show as
Completed, on every run.

Where tasks run: ``data_flow_for(settings)`` is the flow to call, with the task runner the settings
choose. With ``task_runner = "local"`` (the default, ``SENTIFLOW_TASK_RUNNER``) it is a pool of
``workers`` threads in this process, taking tasks in the order they were submitted, and a process
pool of ``workers`` tokenizers (``tokenize.worker_pool``, forked at the first shard that needs
tokenizing, so a run whose shards are all stored never imports spaCy) does the shards' tokenizing. With ``"dask"`` it is a ``prefect_dask.DaskTaskRunner``: one Dask task per
shard, run as soon as its inputs exist, each single-process inside its Dask worker (a Dask worker
process is daemonic and may not start a pool of its own). Run Dask workers single-threaded, one per
core (``dask worker --nworkers N --nthreads 1``): tokenization holds the GIL.

Shards are the same bytes either way (each shard is tokenized and written on its own), so the
stage keys, folders and Prefect cache records are shared between the two modes: a folder built on
Dask is Cached for an in-process run and vice versa.

A cluster beyond this machine (``SENTIFLOW_DASK_ADDRESS``) needs the data root, and a local source,
at the same absolute path on the flow's machine and on every Dask worker (a shared filesystem: NFS,
EFS, a mounted bucket): tasks exchange folder paths, never data. For "Cached" to show on such a
cluster, Prefect's result storage (where cache records live, ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``
or a storage block) must be shared too; without it a task whose folder is valid runs, finds the
folder valid, and returns at once (shown Completed). The workers need this project and its
dependencies installed (the same versions: a different spaCy is a different tokenize key) and must
reach the Prefect API the flow uses: a Prefect server (``PREFECT_API_URL``). Without one (Prefect's
ephemeral mode) the workers are given the URL of the temporary server the flow's process started
on loopback, which serves a LocalCluster only.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import Flow, flow
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sentiflow.flows.data_config import DataConfig, PreparedData, Stage  # noqa: F401 - Stage for callers
from sentiflow.flows.recorded import name_from_source, recorded, source_label
from sentiflow.flows.runs import run_settings, with_settings
from sentiflow.storage.settings import Settings, record_source
from sentiflow.storage.store import StageRef
from sentiflow.tasks.data import dag, tokenize
from sentiflow.tasks.data.dag import PARTS, RUNS, STAGES, Step  # noqa: F401 - for callers


# Locally the flow's runner is a pool of threads (``workers`` of them through ``task_runner_for``, one a
# core when the flow is called as it is), which runs the submitted tasks in the order they were
# submitted (stage order); a shard's tokenize task hands its shard to the run's process pool
# (``tokenize.worker_pool``).
@flow(name="prepare-data", flow_run_name=name_from_source("prepare"), log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def prepare_data(
    config: DataConfig = DataConfig(),
    data_root: str | None = None,
    force: list[Stage] = [],  # noqa: B006 - Prefect shows it as a list form
    workers: int = 0,
) -> PreparedData:
    """The data stages, each cached by its key. ``data_root`` and ``workers`` (tokenizer processes)
    override the run's settings; ``force`` recomputes the named stages even when cached."""
    settings = run_settings(data_root=data_root, workers=workers or None)
    with recorded(settings, "prepare-data") as rec:
        config = settings.fill(config)
        rec.rename(f"prepare-{source_label(config.source)}")
        prepared = prepare(config, settings, force)
        record_source(settings.data_root, config.source)
    return prepared


def prepare(config: DataConfig, settings: Settings, force: Sequence[str] = ()) -> PreparedData:
    """The data DAG (``sentiflow.tasks.data.dag``) walked inside a data flow run: each step's tasks
    submitted to the flow's task runner in DAG order, with the futures of the runs they read, then
    resolved in run order (the first failed run's error is raised). A per-shard step is one task a
    shard and one gathering each part; a part's shards are known once the folder they are read
    from is written (ingest's, split's), so the walk waits for that folder first. A task is
    submitted after the tasks it takes futures of, so a runner's threads never all wait on tasks
    queued behind them. The data root is made absolute: a Dask worker may have another working
    directory."""
    root = str(Path(settings.data_root).resolve())
    outputs: dict[str, Any] = {}  # run → its future; and the seeds: the source, its fingerprint
    shard_futures: dict[str, list[PrefectFuture[StageRef]]] = {}  # per-part run → its shards'
    with _api_for_workers(), tokenize.worker_pool(1 if _on_dask() else settings.resolved_workers):
        outputs.update(dag.seeds(config.source))
        for step in dag.DAG:
            _submit(step, config, outputs, shard_futures, root=root, force=step.stage in force)
        refs = {run: outputs[run].result() for run in dag.RUNS}  # raises a failed task's error
    shards = {run: dict(Counter(f.state.name for f in fs)) for run, fs in shard_futures.items()}
    return PreparedData.from_refs(refs, {run: outputs[run].state.name for run in dag.RUNS}, shards)


def _submit(step: Step, config: DataConfig, outputs: dict[str, Any],
            shard_futures: dict[str, list[PrefectFuture[StageRef]]], **common: Any) -> None:
    """One step's tasks submitted (``common``: ``root`` and ``force``), their futures added to
    ``outputs`` by run name (a part's shard tasks' to ``shard_futures``)."""
    args = step.arguments(config, outputs)
    if not step.per_shard:
        outputs[step.stage] = step.task.submit(**args, **common)
        return
    for run, part in step.runs.items():
        shards, source, source_part = step.part_shards(part, outputs, shard_futures,
                                                       folder=lambda future: _in_order(outputs, future))
        shard_futures[run] = [
            step.task.submit(**args, **{step.shard_arg: shard}, part=part, index=i, **common)
            for i, shard in enumerate(shards)]
        outputs[run] = dag.gather_task.submit(
            **step.gather_arguments(part, shard_futures[run], source, source_part), **common)


def _in_order(outputs: dict[str, Any], future: PrefectFuture[StageRef]) -> StageRef:
    """``future``'s folder, the runs before it resolved first, in run order: where one of them
    failed, its error is raised (a run that waited on it would only say it never ran)."""
    for run in dag.RUNS:
        value = outputs[run].result() if run in outputs else None
        if outputs.get(run) is future:
            return value
    return future.result()


# -- on a Dask cluster ----------------------------------------------------------------------------

def _on_dask() -> bool:
    """Whether this flow run's task runner is a ``DaskTaskRunner`` (see ``data_flow_for``)."""
    runners = sys.modules.get("prefect_dask.task_runners")  # never imported: not Dask
    ctx = FlowRunContext.get()
    return runners is not None and ctx is not None and isinstance(ctx.task_runner,
                                                                  runners.DaskTaskRunner)


@contextmanager
def _api_for_workers() -> Iterator[None]:
    """Dask workers report their task runs to the flow's Prefect API. With ``PREFECT_API_URL``
    unset (Prefect's ephemeral mode) that is the temporary server this process started: its URL
    is handed to the workers with the task (in the settings Prefect serializes for them), else
    each worker process would start a temporary server of its own on the same database. A loopback
    URL, so workers on other machines need a Prefect server (``PREFECT_API_URL``). Off Dask: nothing."""
    ctx = FlowRunContext.get()
    if not _on_dask() or PREFECT_API_URL.value() or ctx is None or ctx.client is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(ctx.client.api_url).rstrip("/")}):
        yield


def task_runner_for(settings: Settings, workers: int = 0,
                    cluster_kwargs: dict[str, Any] | None = None) -> TaskRunner | None:
    """The task runner the settings choose: for "local" a pool of ``workers`` threads (default:
    ``settings.resolved_workers``; the shards' work runs in the flow's process pool), else a
    ``DaskTaskRunner`` on ``settings.dask_address``, or on a temporary ``LocalCluster`` of
    ``workers`` (default: ``settings.resolved_workers``) single-threaded worker processes, no
    dashboard; ``cluster_kwargs`` override the LocalCluster's arguments."""
    if settings.task_runner == "local":
        return ThreadPoolTaskRunner(max_workers=max(1, workers or settings.resolved_workers))
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        if cluster_kwargs:
            raise ValueError("cluster_kwargs apply to a LocalCluster, not to a dask_address")
        return DaskTaskRunner(address=settings.dask_address)
    kwargs = {"n_workers": workers or settings.resolved_workers, "threads_per_worker": 1,
              "processes": True, "dashboard_address": None, **(cluster_kwargs or {})}
    return DaskTaskRunner(cluster_kwargs=kwargs)


def data_flow_for(settings: Settings, workers: int = 0,
                  cluster_kwargs: dict[str, Any] | None = None) -> Flow:
    """The data flow to call with these settings: ``prepare_data`` carrying them
    (``sentiflow.flows.runs``), on the task runner they choose (``SENTIFLOW_TASK_RUNNER``,
    ``SENTIFLOW_DASK_ADDRESS``). A flow's task runner is fixed when it is decorated; this picks it
    when the flow is called. Call the result as ``prepare_data`` (also as a subflow); ``workers``
    sizes a LocalCluster (default: the settings')."""
    return with_settings(prepare_data, settings,
                         task_runner=task_runner_for(settings, workers, cluster_kwargs))
