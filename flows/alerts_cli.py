"""``sentiflow alerts``: Prefect automations that notify people, on the Prefect server in use.

``create`` saves the notification blocks and the automations (``flows/alerts.py``), ``list`` shows
sentiflow's automations, ``remove`` removes them and the blocks. All three need a Prefect server
(``PREFECT_API_URL``): without one they say so and exit with 2. docs/alerts.md has the events,
the automations and the worker setting that makes runs heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Alerts through Prefect automations on the server in use (PREFECT_API_URL).",
                  no_args_is_help=True)


@contextmanager
def _errors() -> Iterator[None]:
    """No server: exit 2 (a usage error: alerts need one); a bad option: exit 2; a server that does
    not answer: exit 1. Each as one line."""
    from sentiflow.flows.alerts import NoServer
    from sentiflow.flows.views import err_console

    def fail(message: str, code: int) -> None:
        err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(code)

    try:
        yield
    except NoServer as e:
        fail(str(e), 2)
    except ValueError as e:
        fail(str(e), 2)
    except ConnectionError as e:
        fail(str(e), 1)


def _report(done: dict[str, str], say: Callable[[str], None]) -> None:
    for name, what in done.items():
        say(f"{what}: {name}")


@app.command()
def create(
    webhook: Annotated[Optional[str], typer.Option(help="Generic webhook: a JSON POST {subject, body, name} per "
                                                        "notification.")] = None,
    slack: Annotated[Optional[str], typer.Option(help="Slack incoming webhook URL.")] = None,
    email: Annotated[Optional[list[str]], typer.Option(help="E-mail recipient (repeat for more), through "
                                                            "SendGrid.")] = None,
    email_from: Annotated[Optional[str], typer.Option(help="Sender address of the e-mails.")] = None,
    sendgrid_key: Annotated[Optional[str], typer.Option(envvar="SENDGRID_API_KEY", show_envvar=True,
                                                        help="SendGrid API key (for --email).")] = None,
    silent_after: Annotated[int, typer.Option(help="Mark a sentiflow flow run Crashed when this many seconds pass "
                                                   "after a heartbeat without another or an end state (more "
                                                   "than 30, Prefect's shortest heartbeat, and than the workers' "
                                                   "PREFECT_FLOWS_HEARTBEAT_FREQUENCY).")] = 90,
    ui_url: Annotated[Optional[str], typer.Option(help="Base of the flow-run links in notifications (default: "
                                                       "PREFECT_UI_URL, else PREFECT_API_URL without /api).")]
        = None,
) -> None:
    """Create or update sentiflow's notification blocks and automations (rerunning replaces them).

    Notifies on: a train or score run Failed, Crashed or TimedOut; a champion promoted; a champion
    kept; a scoring drift warning. Also marks silent runs (no heartbeat for --silent-after s) Crashed."""
    from sentiflow.flows.alerts import Targets
    from sentiflow.flows.alerts import create as create_alerts
    from sentiflow.flows.views import say

    with _errors():
        targets = Targets(webhook=webhook, slack=slack, emails=tuple(email or ()), email_from=email_from,
                          sendgrid_key=sendgrid_key)
        done = create_alerts(targets, silent_after=silent_after, ui=ui_url)
    _report(done, say)
    if not (webhook or slack or email):
        say("no --webhook, --slack or --email: only the automation that marks silent runs Crashed was made")
    say("flow runs heartbeat only with PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 in the workers' environment "
        "(docs/alerts.md)")


@app.command(name="list")
def list_alerts() -> None:
    """List sentiflow's automations on the server: name, trigger, enabled, actions."""
    from rich.table import Table

    from sentiflow.flows.alerts import listing
    from sentiflow.flows.views import console, say

    with _errors():
        rows = listing()
    if not rows:
        say("no sentiflow automations on this server (sentiflow alerts create makes them)")
        return
    table = Table(title="sentiflow automations")
    for col in ("name", "trigger", "enabled", "actions"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.trigger, "yes" if r.enabled else "no", r.actions)
    console.print(table)


@app.command()
def remove() -> None:
    """Remove sentiflow's automations and notification blocks from the server (nothing else)."""
    from sentiflow.flows.alerts import remove as remove_alerts
    from sentiflow.flows.views import say

    with _errors():
        done = remove_alerts()
    _report(done, say)
    if not done:
        say("nothing to remove: no sentiflow automations or blocks on this server")
