"""Runs whose process died are marked so, in Prefect and in MLflow, by the next command.

A flow run killed with SIGKILL (or lost with its machine) writes nothing more: Prefect still shows
it Running, its MLflow runs RUNNING, its journal record ``running``. On a Prefect server, a worker
that sees its flow process die marks the run Crashed, and the zombie automation of ``sentiflow
alerts`` marks a run whose heartbeats stopped; in the embedded (ephemeral) mode nobody is left to
look. So every command first looks at the run journal (``sentiflow.storage.journal``): a record
still ``running`` whose process on this host is gone is a dead run, and ``reap`` marks it

* Crashed in Prefect (unless Prefect already holds a final state for it), with a message naming
  the process,
* KILLED in MLflow: every run tagged with its flow run's id that is still RUNNING (its training
  run, its evaluation run); a killed training is resumed from its checkpoint all the same,
* ``crashed`` in the journal,

and the command says so in one line per run. Looking costs a directory listing and a read of a
few small files; Prefect and MLflow are opened only when there is a dead run. Records written
against another Prefect API or tracking store are left to a command that uses those.
"""

from __future__ import annotations

import logging

from sentiflow.storage.journal import Journal
from sentiflow.storage.redact import redact, redact_all
from sentiflow.storage.settings import Settings

log = logging.getLogger(__name__)


def reap(settings: Settings) -> list[str]:
    """Mark this data root's dead runs (journal records still ``running`` whose process on this
    host is gone) Crashed / KILLED; one line each, saying what was done. Nothing dead: a listing
    and a few small reads, nothing imported."""
    journal = Journal(settings.data_root)
    dead = journal.dead()
    if not dead:
        return []
    from sentiflow.flows.lifecycle import start_guarded_server

    try:  # Prefect imported and its embedded server started in turn with the command's early start
        start_guarded_server()
    except Exception:  # noqa: BLE001 - marking the flow run then says why it could not
        pass
    from sentiflow.flows.recorded import prefect_api

    api, tracking = prefect_api(), redact(settings.resolved_tracking_uri)
    lines = []
    for record in dead:
        if record.api != api or record.tracking != tracking:
            continue  # another store's run: a command that uses it marks it
        why = (f"its process (pid {record.process.pid} on {record.process.host}) ended without a word "
               "(killed, or its machine stopped)")
        prefect_note = _crash_flow_run(record.id, why)
        killed = _kill_mlflow_runs(settings, record.id)
        journal.end(record, "crashed", why)
        lines.append(f"{record.flow} run {record.name} died earlier: marked Crashed in Prefect{prefect_note}"
                     + (f", MLflow run{'s' if len(killed) > 1 else ''} {', '.join(killed)} KILLED" if killed else ""))
    return lines


def _crash_flow_run(flow_run_id: str, why: str) -> str:
    """Set the flow run Crashed unless its state is final already; a note for the line."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return f" (Prefect had it {run.state.name} already)"
            client.set_flow_run_state(flow_run_id, Crashed(message=f"Crashed: {why}"), force=True)
            return ""
    except Exception as e:  # noqa: BLE001 - unreachable server, a run pruned: MLflow still gets marked
        log.warning("could not mark flow run %s Crashed: %s", flow_run_id, redact_all(str(e)))
        return f" (not reachable: {redact_all(str(e)).splitlines()[0][:120]})"


def _kill_mlflow_runs(settings: Settings, flow_run_id: str) -> list[str]:
    """End every RUNNING MLflow run tagged with ``flow_run_id`` as KILLED; their ids."""
    from mlflow.tracking import MlflowClient

    from sentiflow.flows.recorded import FLOW_RUN_TAG

    client = MlflowClient(settings.resolved_tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    query = f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}' and attributes.status = 'RUNNING'"
    killed = []
    for run in client.search_runs(experiments, query):
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_name or run.info.run_id)
    return killed
