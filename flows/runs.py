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

from typing import Any, TypeVar

from prefect import Flow
from prefect.context import FlowRunContext

from sentiflow.storage.settings import Settings

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
    ``data_root``, ``workers``; ``None``: not given) over them. Call it once, at flow start."""
    ctx = FlowRunContext.get()
    given: Settings | None = getattr(ctx.flow, _ATTR, None) if ctx is not None else None
    return given.updated(**overrides) if given is not None else Settings.load(**overrides)


def confine_deployment_paths(settings: Settings, **paths: str | None) -> None:
    """In a run a deployment created (through the Prefect API, a schedule, a worker), every path
    parameter must lie in the data root or ``settings.path_roots`` (``Settings.confine``): a
    parameter form is no way to read or write any file the worker can. Runs started here (the
    CLI, a test) are not confined: whoever starts them has these files already."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return
    for what, path in paths.items():
        settings.confine(path, what)

