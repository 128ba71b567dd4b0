"""The data flow: ingest → split → tokenize (train, val, test) → vocab → encode (train, val, test).

The flow only wires tasks; each task returns a ``StageRef`` and is served from Prefect's cache
(state "Cached") when its stage folder is present and valid. The source's fingerprint (ingest's
key) is a plain call, not a task: a task would run, and show as Completed, on every run.

Where tasks run: ``data_flow_for(settings)`` is the flow to call. With ``task_runner = "local"``
(the default, ``SENTIFLOW_TASK_RUNNER``) it is ``prepare_data`` itself: every task runs in this
process, one after the other, and tokenize forks its own pool of ``workers`` processes. With
``"dask"`` it is ``prepare_data`` with a ``prefect_dask.DaskTaskRunner``: ingest, split and vocab
(small, sequential) still run in the flow's process, while the three tokenize and the three
encode tasks are submitted to the Dask cluster and run concurrently, each as soon as its inputs
exist (tokenize-test right after ingest, encode-val/test as soon as their tokens and the vocab
are there). On Dask the parallelism is Dask's: each tokenize task runs single-process inside its
Dask worker (``workers=1``), because a Dask worker process is daemonic and may not start a pool
of its own. Run Dask workers single-threaded, one per core (``dask worker --nworkers N
--nthreads 1``): tokenization holds the GIL.

Shards are the same bytes either way (each shard is tokenized and written on its own), so the
stage keys, folders and Prefect cache records are shared between the two modes: a folder built on
Dask is Cached for an in-process run and vice versa.

A cluster beyond this machine (``SENTIFLOW_DASK_ADDRESS``) needs the data root at the same
absolute path on the flow's machine and on every Dask worker (a shared filesystem: NFS, EFS, a
mounted bucket): tasks exchange folder paths, never data. For "Cached" to show on such a cluster,
Prefect's result storage (where cache records live, ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` or a
storage block) must be shared too; without it a task whose folder is valid runs, finds the folder
valid, and returns at once (shown Completed). The workers need this project and its dependencies
installed (the same versions: a different spaCy is a different tokenize key) and must reach the
Prefect API the flow uses: a Prefect server (``PREFECT_API_URL``). Without one (Prefect's
ephemeral mode) the workers are given the URL of the temporary server the flow's process started
on loopback, which serves a LocalCluster only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import Flow, flow
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner
from pydantic import BaseModel, Field

from sentiflow.storage.settings import Settings, get_settings
from sentiflow.storage.store import StageRef
from sentiflow.tasks.encode import encode_task
from sentiflow.tasks.ingest import ingest_task
from sentiflow.tasks.sources import fingerprint
from sentiflow.tasks.split import SplitParams, split_task
from sentiflow.tasks.tokenize import TokenizeParams, tokenize_task
from sentiflow.tasks.vocab import VocabParams, vocab_task

Stage = Literal["ingest", "split", "tokenize", "vocab", "encode"]
STAGES: tuple[str, ...] = ("ingest", "split", "tokenize", "vocab", "encode")
PARTS = ("train", "val", "test")


class DataConfig(BaseModel):
    """Everything the data stages depend on (shown as a form in the Prefect UI)."""

    source: str = Field(default_factory=lambda: get_settings().source,
                        description="Hugging Face dataset id, or a local Parquet/CSV/aclImdb path")
    split: SplitParams = SplitParams()
    tokenize: TokenizeParams = TokenizeParams()
    vocab: VocabParams = VocabParams()


class PreparedData(BaseModel):
    ingest: StageRef
    split: StageRef
    tokens: dict[str, StageRef]
    vocab: StageRef
    encoded: dict[str, StageRef]
    states: dict[str, str] = Field(description="task run name → final state name (Cached, Completed)")

    def refs(self) -> dict[str, StageRef]:
        """Each task run's stage folder, by the task run names used in ``states``."""
        return {"ingest": self.ingest, "split": self.split, "vocab": self.vocab,
                **{f"tokenize-{k}": v for k, v in self.tokens.items()},
                **{f"encode-{k}": v for k, v in self.encoded.items()}}


@flow(name="prepare-data", log_prints=True)
def prepare_data(
    config: DataConfig = DataConfig(),
    data_root: str | None = None,
    force: list[Stage] = [],  # noqa: B006 - Prefect shows it as a list form
    workers: int = 0,
) -> PreparedData:
    settings = get_settings()
    root = str(data_root or settings.data_root)
    if _on_dask():
        return _prepare_on_dask(config, root, force)
    workers = workers or settings.resolved_workers
    states: dict[str, str] = {}

    def call(name: str, task_fn, **kwargs) -> StageRef:
        state = task_fn(**kwargs, root=root, force=name.split("-")[0] in force, return_state=True)
        states[name] = state.name
        return state.result()

    fp = fingerprint(config.source)
    ingested = call("ingest", ingest_task, source=config.source, source_fingerprint=fp)
    split = call("split", split_task, params=config.split, ingested=ingested)
    sources = {"train": split, "val": split, "test": ingested}
    tokens = {
        part: call(f"tokenize-{part}", tokenize_task, params=config.tokenize,
                   source=sources[part], part=part, workers=workers)
        for part in PARTS
    }
    vocab = call("vocab", vocab_task, params=config.vocab, tokens=tokens["train"])
    encoded = {
        part: call(f"encode-{part}", encode_task, tokens=tokens[part], vocab=vocab, part=part)
        for part in PARTS
    }
    return PreparedData(ingest=ingested, split=split, tokens=tokens, vocab=vocab,
                        encoded=encoded, states=states)


# -- on a Dask cluster ----------------------------------------------------------------------------

def _on_dask() -> bool:
    """Whether this flow run's task runner is a ``DaskTaskRunner`` (see ``data_flow_for``)."""
    runners = sys.modules.get("prefect_dask.task_runners")  # never imported: not Dask
    ctx = FlowRunContext.get()
    return runners is not None and ctx is not None and isinstance(ctx.task_runner,
                                                                  runners.DaskTaskRunner)


def _prepare_on_dask(config: DataConfig, root: str, force: list[str]) -> PreparedData:
    """The same stages, with tokenize and encode submitted to the flow's Dask task runner.

    Ingest, split and vocab run here, in the flow's process. Tokenize runs single-process in its
    Dask worker (``workers=1``): the worker is a daemonic process, which may not have children.
    Encode tasks get their tokenize task's future, so each starts as soon as its tokens exist.
    The data root is made absolute: a Dask worker may have another working directory.
    """
    with _api_for_workers():
        return _wire_on_dask(config, str(Path(root).resolve()), force)


@contextmanager
def _api_for_workers() -> Iterator[None]:
    """Dask workers report their task runs to the flow's Prefect API. With ``PREFECT_API_URL``
    unset (Prefect's ephemeral mode) that is the temporary server this process started: its URL
    is handed to the workers with the task (in the settings Prefect serializes for them), else
    each worker process would start a temporary server of its own on the same database. A loopback
    URL, so workers on other machines need a Prefect server (``PREFECT_API_URL``)."""
    ctx = FlowRunContext.get()
    if PREFECT_API_URL.value() or ctx is None or ctx.client is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(ctx.client.api_url).rstrip("/")}):
        yield


def _wire_on_dask(config: DataConfig, root: str, force: list[str]) -> PreparedData:
    states: dict[str, str] = {}

    def forced(name: str) -> bool:
        return name.split("-")[0] in force

    def call(name: str, task_fn, **kwargs) -> StageRef:
        state = task_fn(**kwargs, root=root, force=forced(name), return_state=True)
        states[name] = state.name
        return state.result()

    def submit(name: str, task_fn, **kwargs) -> Any:
        return task_fn.submit(**kwargs, root=root, force=forced(name))

    def result(name: str, future: Any) -> StageRef:
        ref = future.result()  # raises the task's exception when it failed
        states[name] = future.state.name
        return ref

    fp = fingerprint(config.source)
    ingested = call("ingest", ingest_task, source=config.source, source_fingerprint=fp)
    pending = {"tokenize-test": submit("tokenize-test", tokenize_task, params=config.tokenize,
                                       source=ingested, part="test", workers=1)}
    split = call("split", split_task, params=config.split, ingested=ingested)
    for part in ("train", "val"):
        pending[f"tokenize-{part}"] = submit(f"tokenize-{part}", tokenize_task,
                                             params=config.tokenize, source=split, part=part,
                                             workers=1)
    tokens_train = result("tokenize-train", pending["tokenize-train"])
    vocab = call("vocab", vocab_task, params=config.vocab, tokens=tokens_train)
    for part in PARTS:
        pending[f"encode-{part}"] = submit(f"encode-{part}", encode_task,
                                           tokens=pending[f"tokenize-{part}"], vocab=vocab,
                                           part=part)
    refs = {name: result(name, future) for name, future in pending.items()
            if name != "tokenize-train"}
    refs["tokenize-train"] = tokens_train
    order = ["ingest", "split", *(f"tokenize-{p}" for p in PARTS), "vocab",
             *(f"encode-{p}" for p in PARTS)]  # as the in-process run lists them
    return PreparedData(ingest=ingested, split=split,
                        tokens={p: refs[f"tokenize-{p}"] for p in PARTS}, vocab=vocab,
                        encoded={p: refs[f"encode-{p}"] for p in PARTS},
                        states={name: states[name] for name in order})


def task_runner_for(settings: Settings | None = None, workers: int = 0,
                    cluster_kwargs: dict[str, Any] | None = None) -> TaskRunner | None:
    """The task runner the settings choose: ``None`` for "local" (the flow's own), else a
    ``DaskTaskRunner`` on ``settings.dask_address``, or on a temporary ``LocalCluster`` of
    ``workers`` (default: ``settings.resolved_workers``) single-threaded worker processes, no
    dashboard; ``cluster_kwargs`` override the LocalCluster's arguments."""
    settings = settings or get_settings()
    if settings.task_runner == "local":
        return None
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        if cluster_kwargs:
            raise ValueError("cluster_kwargs apply to a LocalCluster, not to a dask_address")
        return DaskTaskRunner(address=settings.dask_address)
    kwargs = {"n_workers": workers or settings.resolved_workers, "threads_per_worker": 1,
              "processes": True, "dashboard_address": None, **(cluster_kwargs or {})}
    return DaskTaskRunner(cluster_kwargs=kwargs)


def data_flow_for(settings: Settings | None = None, workers: int = 0,
                  cluster_kwargs: dict[str, Any] | None = None) -> Flow:
    """The data flow to call, with the task runner the settings choose (``SENTIFLOW_TASK_RUNNER``,
    ``SENTIFLOW_DASK_ADDRESS``): ``prepare_data`` itself for "local", else a copy of it on Dask.
    A flow's task runner is fixed when it is decorated; this picks it when the flow is called.
    Call the result as ``prepare_data`` (also as a subflow); ``workers`` sizes a LocalCluster."""
    runner = task_runner_for(settings, workers, cluster_kwargs)
    return prepare_data if runner is None else prepare_data.with_options(task_runner=runner)
