"""How a flow run gets its settings: built once where the run starts, then passed down.

Two kinds of entry point start a flow run. A caller that has built its settings (a CLI command,
from its options and the environment) runs ``with_settings(flow, settings)``: a copy of the flow
that carries them. A run that nobody gave settings to (a deployment's run on a worker, ``sentiflow
serve``, a test calling the flow) builds them from the environment when it starts. Either way the
flow body calls ``run_settings`` once, first, and passes the result on as an argument: to its
subflows (``with_settings`` again) and to its tasks.

Settings are never a flow parameter: they hold the MLflow tracking URI, which may carry
credentials, and the Prefect API stores a flow run's parameters and shows them in its UI. A flow's
``data_root`` and ``workers`` parameters, where given, override the settings for that run, as the
CLI's options do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from prefect import Flow
from prefect.context import FlowRunContext

from sentiflow.storage.settings import PathNotAllowed, Settings

F = TypeVar("F", bound=Flow)
_ATTR = "sentiflow_settings"  # where a flow object carries its caller's settings


def with_settings(flow: F, settings: Settings, **options: Any) -> F:
    """A copy of ``flow`` (``flow.with_options(**options)``) whose runs use ``settings``. Give
    options here: ``with_options`` on the result makes a copy that does not carry them."""
    bound = flow.with_options(**options)
    setattr(bound, _ATTR, settings)
    return bound


def run_settings(**overrides: Any) -> Settings:
    """The settings of the flow run in progress: those its flow object carries
    (``with_settings``), else the environment's, read now; ``overrides`` (the run's
    ``data_root``, ``workers``; ``None``: not given) over them. Call it once, at flow start.

    In a deployment's run the folders it may use are the worker's (``deployment_roots``): a
    ``data_root`` parameter must lie inside them, and they stay the run's ``path_roots``, so a
    parameter can narrow the run's folders, never widen them."""
    ctx = FlowRunContext.get()
    given: Settings | None = getattr(ctx.flow, _ATTR, None) if ctx is not None else None
    if not in_deployment_run():
        return given.updated(**overrides) if given is not None else Settings.load(**overrides)
    worker = given if given is not None else Settings.load()
    worker.confine(overrides.get("data_root"), "data_root")
    settings = worker.updated(**overrides) if given is not None else Settings.load(**overrides)
    return settings.updated(path_roots=deployment_roots(worker))


def in_deployment_run() -> bool:
    """Whether the flow run in progress was created by a deployment (through the Prefect API, a
    schedule, a worker): its parameters come from whoever can reach the API."""
    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id is not None


def deployment_roots(worker: Settings) -> list[Path]:
    """The folders a deployment's run may read and write: the worker's data root and
    ``path_roots`` (``SENTIFLOW_PATH_ROOTS``), from its own settings alone."""
    return [worker.data_root, *worker.path_roots]


def confine_deployment_paths(settings: Settings, datasets: dict[str, str | None] | None = None,
                             files: dict[str, str | None] | None = None) -> None:
    """In a deployment's run (``in_deployment_run``), every path parameter must lie in the data
    root or ``settings.path_roots`` (``Settings.confine``): a parameter form is no way to read or
    write any file the worker can. ``datasets``, by parameter name: a path or a Hugging Face
    dataset id; ``files``: paths only. Runs started here (the CLI, a test) are not confined:
    whoever starts them has these files already."""
    if in_deployment_run():
        for what, path in (datasets or {}).items():
            settings.confine(path, what, dataset=True)
        for what, path in (files or {}).items():
            settings.confine(path, what)


def confine_model_uri(uri: str | None) -> None:
    """In a deployment's run a model is one of the configured tracking server's: ``models:/…`` or
    ``runs:/…``, never a folder, a file or another store's URI (``file:``, ``s3:``, ``http:``),
    which would load, and run, code from wherever the caller points."""
    if uri and in_deployment_run() and not uri.startswith(("models:/", "runs:/")):
        raise PathNotAllowed(f"model {uri!r}: a deployment's run scores a model of the configured "
                             "registry only (models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH)")

