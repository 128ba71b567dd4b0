"""A flow run's record in the run journal (``sentiflow.storage.journal``), and its readable name.

``recorded(settings, flow)`` wraps a flow body: the record is written ``running`` as the body
starts and ended as it ends (``completed`` with the outcome, ``failed`` with the error's line,
``crashed`` when the process is being stopped: Ctrl-C, SIGTERM). A SIGKILL ends nothing: the
record stays ``running`` with a process that is gone, which the next command finds
(``sentiflow.flows.reaper``). Writing the journal never fails a run: a full disk is a warning.

``Recorded.rename`` gives the flow run the name it is known by in both UIs once the run knows it
(``train-best-5f3a91``: flow, preset, the training key's first six characters), in Prefect and
in the record; the MLflow run takes the same name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.context import FlowRunContext

from sentiflow.storage.journal import Journal, Process, RunRecord, now
from sentiflow.storage.redact import redact, redact_all, redact_logs, scrub
from sentiflow.storage.settings import Settings

log = logging.getLogger(__name__)
FLOW_RUN_TAG = "sentiflow.flow_run_id"  # on MLflow runs: the Prefect flow run that made them


def source_label(source: str | None) -> str:
    """A source as a run's name shows it: a file's or folder's name without suffix
    (``new-reviews``), a hub id's last part (``imdb``)."""
    if not source:
        return "source"
    from pathlib import Path

    return Path(source.rstrip("/")).stem or "source"


def name_from_source(prefix: str) -> Callable[[], str]:
    """A flow's ``flow_run_name``: ``<prefix>-<source>`` from the run's ``config.source``, else the
    settings' source; the flow renames the run where it learns more (``score-v3-<source>``)."""

    def name() -> str:
        return f"{prefix}-{source_label(config_parameter('source') or Settings.load().source)}"

    return name


def config_parameter(field: str) -> Any:
    """A field of the starting flow run's ``config`` parameter (a dict from the API, a model from
    a Python call), for its ``flow_run_name``; None where not given."""
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    return config.get(field) if isinstance(config, dict) else getattr(config, field, None)


def prefect_api() -> str:
    """The Prefect API this process talks to: a server's URL, or ``ephemeral (<PREFECT_HOME>)``
    (the embedded mode's database lives there)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    return redact(PREFECT_API_URL.value() or "") or f"ephemeral ({PREFECT_HOME.value()})"


@dataclass
class Recorded:
    journal: Journal | None
    record: RunRecord | None
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        return self.record.id if self.record else None

    @property
    def mlflow_tags(self) -> dict[str, str]:
        """The tags an MLflow run made by this flow run carries: the reaper finds it by them."""
        return {FLOW_RUN_TAG: self.record.id} if self.record else {}

    def rename(self, name: str) -> None:
        """Name the flow run ``name`` in Prefect and in the journal."""
        if self.record is None or name == self.record.name:
            return
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.update_flow_run(self.record.id, name=name)
        except Exception as e:  # noqa: BLE001 - a name is not worth a failed run
            log.warning("could not rename flow run %s to %s: %s", self.record.id, name, redact_all(str(e)))
        self.record = self.record.model_copy(update={"name": name})
        _write(self.journal, self.record)


@contextmanager
def recorded(settings: Settings, flow: str) -> Iterator[Recorded]:
    """The run journal's record of the flow run in progress, around its body. Every log handler
    redacts URIs from here on (``redact_logs``), and an error leaving the body is scrubbed of
    them (``scrub``) before Prefect stores the failed state's message."""
    redact_logs()
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        try:
            yield Recorded(None, None)
        except BaseException as e:
            raise scrub(e)
        return
    if ctx.flow_run.parent_task_run_id is None:  # a top-level run (a worker's, a served one) looks first
        _reap(settings)
    journal = Journal(settings.data_root)
    rec = Recorded(journal, RunRecord(id=str(ctx.flow_run.id), flow=flow, name=ctx.flow_run.name, started=now(),
                                      api=prefect_api(), tracking=redact(settings.resolved_tracking_uri),
                                      process=Process.this()))
    _write(journal, rec.record)
    try:
        yield rec
    except Exception as e:
        scrub(e)
        _end(rec, "failed", f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__)
        raise
    except BaseException as e:  # KeyboardInterrupt, SystemExit, Prefect's TerminationSignal
        _end(rec, "crashed", f"stopped: {type(e).__name__}")
        raise
    _end(rec, "completed")


def _reap(settings: Settings) -> None:
    from sentiflow.flows.reaper import reap

    try:
        for line in reap(settings):
            log.warning("%s", line)
    except Exception as e:  # noqa: BLE001 - another run's leftovers never fail this one
        log.warning("could not mark dead runs: %s", redact_all(str(e)))


def _end(rec: Recorded, state: str, message: str = "") -> None:
    try:
        rec.record = rec.journal.end(rec.record, state, message, **rec.outcome)
    except OSError as e:
        log.warning("could not write the run journal under %s: %s", rec.journal.folder, e)


def _write(journal: Journal | None, record: RunRecord | None) -> None:
    if journal is None or record is None:
        return
    try:
        journal.write(record)
    except OSError as e:
        log.warning("could not write the run journal under %s: %s", journal.folder, e)
