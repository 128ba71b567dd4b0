"""sentiflow's own Prefect events: the champion decision of a training and a scoring run's drift.

Prefect already emits an event for every state change of a flow run (``prefect.flow-run.Failed``,
...). These add what only sentiflow knows, so that automations (``sentiflow alerts``, or any a user
builds in the UI) can react to it:

* ``sentiflow.champion.promoted`` / ``sentiflow.champion.kept``: a training's new version took the
  ``champion`` alias, or the champion gate kept the current champion (the new version is
  ``challenger``);
* ``sentiflow.scoring.drift``: a scoring run's reviews are far from the training split's (a drift
  warning fired, ``sentiflow.tasks.scoring.drift``).

The primary resource is the registered model, ``sentiflow.model.<name>``, so one automation can
follow one model. Emitted inside the flow run, each event gets Prefect's related resources from the
run context (``prefect.events.worker.EventsWorker.attach_related_resources_from_context``): the
flow run (role ``flow-run``), its flow, deployment, work queue and pool, and tags. An automation's
templates can therefore use ``flow_run``, ``flow`` and ``deployment`` as for Prefect's own events.
docs/alerts.md lists every payload field.

Emitting never fails a run: the event is a notification, not part of the result; an error is
logged as a warning and the run goes on.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sentiflow.storage.redact import redact_all
from sentiflow.storage.tracking import CHAMPION
from sentiflow.tasks.release.select import SelectResult

log = logging.getLogger("sentiflow.events")

CHAMPION_PROMOTED = "sentiflow.champion.promoted"
CHAMPION_KEPT = "sentiflow.champion.kept"
SCORING_DRIFT = "sentiflow.scoring.drift"
EVENTS = (CHAMPION_PROMOTED, CHAMPION_KEPT, SCORING_DRIFT)
RESOURCE_PREFIX = "sentiflow.model."  # + the registered model's name (or a model URI without one)


def model_resource(name: str, **labels: str | None) -> dict[str, str]:
    """The registered model as an event's primary resource; ``labels`` with a value are added
    (resource labels are strings)."""
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{name}", "prefect.resource.name": name,
            **{f"sentiflow.{k}": str(v) for k, v in labels.items() if v is not None}}


def _number(x: Any) -> float | None:
    """A JSON number, or None for a missing or non-finite one (NaN is not JSON)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def champion_payload(selected: SelectResult) -> dict[str, Any]:
    """What the champion decision was and why: both accuracies on the gate's rows, the versions,
    the gate's reason, and the new version's own figures."""
    gate = selected.gate
    return {
        "model": selected.model_name,
        "version": selected.version,
        "alias": selected.alias,
        "promoted": selected.alias == CHAMPION,
        "challenger_acc": _number(gate.challenger_acc) if gate else None,
        "champion_acc": _number(gate.champion_acc) if gate else None,
        "champion_version": gate.champion_version if gate else None,
        "gate_rows": gate.main.on if gate else None,
        "gate_row_count": gate.main.rows if gate else None,
        "reason": gate.reason if gate else "no gate verdict recorded",
        "val_acc": _number(selected.val_acc),
        "test_acc": _number(selected.test_acc),
        "best_epoch": selected.best_epoch,
        "run_id": selected.run_id,
    }


def champion_event(selected: SelectResult) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The event name, resource and payload of a training's champion decision."""
    payload = champion_payload(selected)
    name = CHAMPION_PROMOTED if payload["promoted"] else CHAMPION_KEPT
    return name, model_resource(selected.model_name, version=selected.version, alias=selected.alias), payload


def drift_event(source: str, model: str, warnings: list[str],
                metrics: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The event name, resource and payload of a scoring run whose drift warning fired. ``model``
    is the resolved model URI (``models:/NAME/VERSION``, or a runs:/ URI or folder)."""
    from sentiflow.tasks.scoring.serving import MODEL_URI

    m = MODEL_URI.match(model)
    name = m["name"] if m else model
    payload = {"source": redact_all(source), "model": model, "model_name": m["name"] if m else None,
               "version": m["version"] if m else None, "warnings": [redact_all(w) for w in warnings],
               "metrics": {k: _number(v) for k, v in metrics.items()}}
    return SCORING_DRIFT, model_resource(name, version=payload["version"]), payload


def _emit(name: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    """Send one event to the Prefect API in use; a failure is logged, never raised."""
    try:
        from prefect.events import emit_event

        emit_event(event=name, resource=resource, payload=payload)
    except Exception as e:  # noqa: BLE001 - an event never fails the run it reports on
        log.warning("could not emit the Prefect event %s: %s", name, e)


def emit_champion(selected: SelectResult) -> None:
    """The champion decision of a training's selection, emitted inside the train flow run."""
    try:
        _emit(*champion_event(selected))
    except Exception as e:  # noqa: BLE001 - building the payload must not fail the run either
        log.warning("could not emit the champion event: %s", e)


def emit_drift(source: str, model: str, warnings: list[str], metrics: dict[str, Any]) -> None:
    """A scoring run whose drift warning fired, emitted inside the score flow run."""
    try:
        _emit(*drift_event(source, model, warnings, metrics))
    except Exception as e:  # noqa: BLE001
        log.warning("could not emit the drift event: %s", e)
