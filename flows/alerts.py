"""Alerts the Prefect way: notification blocks and automations on the Prefect server in use.

``sentiflow alerts create`` (``flows/alerts_cli.py``) saves one notification block per target (a
generic webhook, Slack, e-mail through SendGrid: the blocks Prefect itself ships) and these
automations, every one named ``sentiflow: ...`` and tagged ``sentiflow``:

* **run failed**: a ``train`` or ``score`` flow run enters Failed, Crashed or TimedOut (Prefect's own
  ``prefect.flow-run.<state>`` events);
* **champion promoted** / **champion kept**: sentiflow's events (``flows/events.py``);
* **drift warning**: sentiflow's ``sentiflow.scoring.drift``;
* **silent run crashed**: Prefect's zombie pattern ("detect zombie flows"): a flow run that sent a
  ``prefect.flow-run.heartbeat`` and then neither another heartbeat nor a terminal state within
  ``silent_after`` seconds is set Crashed. Flow runs heartbeat only where
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set (30 s at least) in the environment of the process
  that runs them (a worker's, ``sentiflow serve``'s): docs/alerts.md.

The notification automations send to every block. The server renders the subject and body
(Jinja, with ``event``, ``flow_run``, ``flow``, ``deployment``), so they carry the flow run's name,
its link in the UI, the state's message or the decision's figures.

Idempotent: an automation with the same name is updated in place (duplicates of it removed), a
block is overwritten, and what an earlier ``create`` made that this one does not (a Slack block no
longer given) is removed. ``remove`` removes all of sentiflow's automations and blocks and nothing
else. Everything goes through Prefect's client (``get_client``); automations need a Prefect server
(its trigger and action services), never the ephemeral one a command starts by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sentiflow.flows.events import CHAMPION_KEPT, CHAMPION_PROMOTED, SCORING_DRIFT

if TYPE_CHECKING:
    from prefect.blocks.abstract import NotificationBlock
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import Automation, AutomationCore

PREFIX = "sentiflow: "  # every automation sentiflow makes is named so
TAG = "sentiflow"
BLOCK_PREFIX = "sentiflow-"  # and every block
WEBHOOK_BLOCK, SLACK_BLOCK, EMAIL_BLOCK = "sentiflow-webhook", "sentiflow-slack", "sentiflow-email"
RUN_FLOWS = ("train", "score")  # the flows whose failures notify
SENTIFLOW_FLOWS = ("train", "score", "score-parts", "prepare-data")  # every flow sentiflow runs
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
TERMINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")
HEARTBEAT = "prefect.flow-run.heartbeat"
MIN_HEARTBEAT = 30  # Prefect's minimum PREFECT_FLOWS_HEARTBEAT_FREQUENCY (flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
DEFAULT_SILENT_AFTER = 90  # three heartbeats of 30 s

FAILED = PREFIX + "train or score run failed"
PROMOTED = PREFIX + "champion promoted"
KEPT = PREFIX + "champion kept"
DRIFT = PREFIX + "drift warning"
SILENT = PREFIX + "silent run crashed"


class NoServer(Exception):
    """No Prefect server configured: automations need one (its trigger and action services)."""


def api_url() -> str:
    """The Prefect API in use; ``NoServer`` in ephemeral mode."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise NoServer("alerts need a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to the "
                       "server your runs report to; the ephemeral server a command starts by itself has no "
                       "automations")
    return url


def ui_url(given: str | None = None) -> str:
    """The base of the links in notifications: ``given``, else Prefect's UI URL (PREFECT_UI_URL,
    by default the API URL without ``/api``)."""
    from prefect.settings import PREFECT_UI_URL

    return (given or PREFECT_UI_URL.value() or api_url().removesuffix("/api")).rstrip("/")


# -- the notification blocks -----------------------------------------------------------------------

@dataclass
class Targets:
    """Where notifications go: any of a generic webhook, a Slack webhook, e-mail via SendGrid."""

    webhook: str | None = None
    slack: str | None = None
    emails: tuple[str, ...] = ()
    email_from: str | None = None
    sendgrid_key: str | None = None

    def blocks(self) -> dict[str, NotificationBlock]:
        """The notification blocks, by the name each is saved under."""
        from prefect.blocks.notifications import (
            CustomWebhookNotificationBlock,
            SendgridEmail,
            SlackWebhook,
        )

        out: dict[str, NotificationBlock] = {}
        if self.webhook:
            # a JSON POST: {"subject": ..., "body": ..., "name": "sentiflow"} (the block substitutes these)
            out[WEBHOOK_BLOCK] = CustomWebhookNotificationBlock(
                name="sentiflow", url=self.webhook, method="POST",
                json_data={"subject": "{{subject}}", "body": "{{body}}", "name": "{{name}}"})
        if self.slack:
            out[SLACK_BLOCK] = SlackWebhook(url=self.slack)
        if self.emails:
            if not (self.sendgrid_key and self.email_from):
                raise ValueError("e-mail goes through SendGrid (Prefect's e-mail block): give --sendgrid-key "
                                 "(or SENDGRID_API_KEY) and --email-from with --email")
            out[EMAIL_BLOCK] = SendgridEmail(api_key=self.sendgrid_key, sender_email=self.email_from,
                                             to_emails=list(self.emails))
        return out


def save_blocks(blocks: dict[str, NotificationBlock]) -> list[UUID]:
    """Save (overwrite) each block under its name; their document ids."""
    return [block.save(name, overwrite=True) for name, block in blocks.items()]


def sentiflow_blocks(client: SyncPrefectClient) -> list[Any]:
    """The block documents sentiflow saved (named ``sentiflow-...``)."""
    return [d for d in client.read_block_documents(include_secrets=False)
            if d.name and d.name.startswith(BLOCK_PREFIX)]


# -- the templates ----------------------------------------------------------------------------------

def _acc(field: str) -> str:
    """A Jinja expression: ``field`` as an accuracy with four decimals, or ``none``."""
    return f'{{{{ "%.4f"|format({field}) if {field} is number else "none" }}}}'


def run_line(ui: str) -> str:
    """The flow run's name and its page in the UI."""
    return "Flow run: {{ flow_run.name }} " + ui + "/runs/flow-run/{{ flow_run.id }}"


def failed_templates(ui: str) -> tuple[str, str]:
    subject = "sentiflow: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
    body = ("The {{ flow.name }} flow run {{ flow_run.name }} ended {{ flow_run.state.name }}"
            "{% if deployment.name %} (deployment {{ flow.name }}/{{ deployment.name }}){% endif %}.\n"
            "Reason: {{ flow_run.state.message }}\n" + run_line(ui))
    return subject, body


def champion_templates(ui: str, promoted: bool) -> tuple[str, str]:
    p = "event.payload"
    figures = (f"Challenger accuracy {_acc(p + '.challenger_acc')}, champion accuracy {_acc(p + '.champion_acc')} "
               f"on {{{{ {p}.gate_rows }}}} ({{{{ {p}.gate_row_count }}}} rows).\n"
               f"Reason: {{{{ {p}.reason }}}}\n"
               f"Version {{{{ {p}.version }}}}: validation accuracy {_acc(p + '.val_acc')}, "
               f"test accuracy {_acc(p + '.test_acc')}.\n")
    if promoted:
        subject = f"sentiflow: {{{{ {p}.model }}}} version {{{{ {p}.version }}}} promoted to champion"
        head = (f"{{{{ {p}.model }}}} version {{{{ {p}.version }}}} is the new champion"
                f"{{% if {p}.champion_version %}} (it replaces version {{{{ {p}.champion_version }}}})"
                "{% endif %}.\n")
    else:
        subject = f"sentiflow: {{{{ {p}.model }}}} champion version {{{{ {p}.champion_version }}}} kept"
        head = (f"{{{{ {p}.model }}}} champion version {{{{ {p}.champion_version }}}} kept; the new version "
                f"{{{{ {p}.version }}}} is {{{{ {p}.alias }}}}.\n")
    return subject, head + figures + run_line(ui)


def drift_templates(ui: str) -> tuple[str, str]:
    p = "event.payload"
    subject = f"sentiflow: drift warning scoring {{{{ {p}.source }}}}"
    body = (f"Scoring {{{{ {p}.source }}}} with {{{{ {p}.model }}}}: the reviews are far from the training split's.\n"
            f"Warnings: {{{{ {p}.warnings|join('; ') }}}}\n"
            f"Length PSI {_acc(p + '.metrics.drift_length_psi')}, OOV PSI {_acc(p + '.metrics.drift_oov_psi')}.\n"
            + run_line(ui))
    return subject, body


# -- the automations --------------------------------------------------------------------------------

def _flows(names: tuple[str, ...]) -> dict[str, Any]:
    """A related-resource match: the event's flow is one of ``names``."""
    return {"prefect.resource.role": "flow", "prefect.resource.name": list(names)}


def _notify(block_ids: list[UUID], templates: tuple[str, str]) -> list[Any]:
    from prefect.events.actions import SendNotification

    subject, body = templates
    return [SendNotification(block_document_id=b, subject=subject, body=body) for b in block_ids]


def notification_automations(block_ids: list[UUID], ui: str) -> list[AutomationCore]:
    """The four automations that notify: run failed, champion promoted, champion kept, drift."""
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    def on(events: set[str], match: str, **related: Any) -> EventTrigger:
        return EventTrigger(expect=events, match={"prefect.resource.id": match}, posture=Posture.Reactive,
                            threshold=1, **related)

    failed = on({f"prefect.flow-run.{s}" for s in FAILED_STATES}, "prefect.flow-run.*",
                match_related=_flows(RUN_FLOWS))
    return [
        AutomationCore(name=FAILED, tags=[TAG], trigger=failed, actions=_notify(block_ids, failed_templates(ui)),
                       description="A train or score flow run ended Failed, Crashed or TimedOut."),
        AutomationCore(name=PROMOTED, tags=[TAG], trigger=on({CHAMPION_PROMOTED}, "sentiflow.model.*"),
                       actions=_notify(block_ids, champion_templates(ui, True)),
                       description="A training's new version took the champion alias."),
        AutomationCore(name=KEPT, tags=[TAG], trigger=on({CHAMPION_KEPT}, "sentiflow.model.*"),
                       actions=_notify(block_ids, champion_templates(ui, False)),
                       description="The champion gate kept the champion; the new version is challenger."),
        AutomationCore(name=DRIFT, tags=[TAG], trigger=on({SCORING_DRIFT}, "sentiflow.model.*"),
                       actions=_notify(block_ids, drift_templates(ui)),
                       description="A scoring run's drift warning fired."),
    ]


def silent_run_automation(silent_after: int) -> AutomationCore:
    """Prefect's zombie pattern for sentiflow's flows: a heartbeat, then neither a heartbeat nor a
    terminal state within ``silent_after`` seconds → Crashed."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    if silent_after <= MIN_HEARTBEAT:
        raise ValueError(f"--silent-after {silent_after}: must exceed the heartbeat interval (Prefect's minimum is "
                         f"{MIN_HEARTBEAT} s; {DEFAULT_SILENT_AFTER} s by default)")
    trigger = EventTrigger(
        after={HEARTBEAT}, expect={HEARTBEAT, *(f"prefect.flow-run.{s}" for s in TERMINAL_STATES)},
        match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_flows(SENTIFLOW_FLOWS),
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1, within=timedelta(seconds=silent_after))
    message = (f"sentiflow: no heartbeat for {silent_after} s; the process running this flow run died "
               "(automation '" + SILENT + "')")
    return AutomationCore(name=SILENT, tags=[TAG], trigger=trigger,
                          actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
                          description=f"A sentiflow flow run silent for {silent_after} s after a heartbeat is "
                                      "marked Crashed (its process died with no one to report it).")


# -- on the server ----------------------------------------------------------------------------------

def sentiflow_automations(client: SyncPrefectClient) -> list[Automation]:
    return [a for a in client.read_automations() if a.name.startswith(PREFIX)]


def apply_automations(client: SyncPrefectClient, wanted: list[AutomationCore]) -> dict[str, str]:
    """Create or update each of ``wanted`` by name; remove duplicates and sentiflow automations not
    wanted. Returns what happened to each name: created, updated or removed."""
    existing: dict[str, list[Automation]] = {}
    for a in sentiflow_automations(client):
        existing.setdefault(a.name, []).append(a)
    done: dict[str, str] = {}
    for automation in wanted:
        same = existing.pop(automation.name, [])
        if same:
            client.update_automation(same[0].id, automation)
            for extra in same[1:]:
                client.delete_automation(extra.id)
            done[automation.name] = "updated"
        else:
            client.create_automation(automation)
            done[automation.name] = "created"
    for name, stale in existing.items():
        for a in stale:
            client.delete_automation(a.id)
        done[name] = "removed"
    return done


def remove_blocks(client: SyncPrefectClient, keep: set[str] = frozenset()) -> list[str]:
    """Delete sentiflow's blocks except those named in ``keep``; the names deleted."""
    gone = []
    for doc in sentiflow_blocks(client):
        if doc.name not in keep:
            client.delete_block_document(doc.id)
            gone.append(doc.name)
    return gone


@contextmanager
def _checked_client() -> Iterator[SyncPrefectClient]:
    """A client of the configured server, which must answer."""
    from prefect.client.orchestration import get_client

    url = api_url()
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            raise ConnectionError(f"the Prefect server at {url} does not answer: {error}")
        yield client


def create(targets: Targets, silent_after: int = DEFAULT_SILENT_AFTER, ui: str | None = None) -> dict[str, str]:
    """Blocks and automations as ``targets`` and ``silent_after`` say, replacing sentiflow's
    earlier ones. Returns what happened to each automation and block."""
    silent = silent_run_automation(silent_after)  # checks silent_after before anything is written
    blocks = targets.blocks()
    with _checked_client() as client:
        ids = save_blocks(blocks)
        wanted = (notification_automations(ids, ui_url(ui)) if ids else []) + [silent]
        done = apply_automations(client, wanted)
        for name in remove_blocks(client, keep=set(blocks)):
            done[f"block {name}"] = "removed"
    return {**done, **{f"block {name}": "saved" for name in blocks}}


@dataclass
class Row:
    name: str
    trigger: str
    enabled: bool
    actions: str


def describe_trigger(trigger: Any) -> str:
    """One line: which events (Prefect's flow-run events by their state), of which flows, in what window."""
    def events(names: Any) -> str:
        short = sorted(n.removeprefix("prefect.flow-run.") for n in names or ())
        run = any(n.startswith("prefect.flow-run.") for n in names or ())
        return ("flow run " if run else "") + "/".join(short)

    related = getattr(trigger, "match_related", None)
    specs = related if isinstance(related, list) else [related] if related is not None else []
    flows = [f for spec in specs if "prefect.resource.name" in spec for f in spec["prefect.resource.name"]]
    scope = f" ({', '.join(flows)})" if flows else ""
    if getattr(trigger, "posture", None) == "Proactive":
        return (f"{events(trigger.after)}, then no {events(trigger.expect).removeprefix('flow run ')} "
                f"for {int(trigger.within.total_seconds())} s{scope}")
    return f"{events(trigger.expect)}{scope}"


def describe_action(action: Any, block_names: dict[UUID, str]) -> str:
    if getattr(action, "type", "") == "send-notification":
        return f"notify {block_names.get(action.block_document_id, action.block_document_id)}"
    if getattr(action, "type", "") == "change-flow-run-state":
        return f"set {action.state.value}"
    return str(getattr(action, "type", action))


def listing() -> list[Row]:
    """sentiflow's automations on the server: name, trigger, enabled, actions."""
    with _checked_client() as client:
        names = {d.id: d.name for d in sentiflow_blocks(client)}
        return [Row(a.name, describe_trigger(a.trigger), a.enabled,
                    ", ".join(describe_action(x, names) for x in a.actions))
                for a in sorted(sentiflow_automations(client), key=lambda a: a.name)]


def remove() -> dict[str, str]:
    """Remove sentiflow's automations, then its blocks (nothing else)."""
    with _checked_client() as client:
        done = apply_automations(client, [])
        for name in remove_blocks(client):
            done[f"block {name}"] = "removed"
    return done
