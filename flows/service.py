"""How the service stands, for ``sentiflow status``: the champion, the last training and scoring
runs, what runs now, the last failure (from the run journal, ``sentiflow.storage.journal``), and the
next scheduled runs where a Prefect server is configured (its REST API, one request each, 2 s at
most). Nothing is started and neither Prefect nor MLflow is imported: about a second in all.

The champion shown is the version the newest promoting training of this data root registered, as
its selection recorded it (version, test accuracy, when, the gate's accuracies): the registry's
alias is the authority, and only a hand-moved alias would differ.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sentiflow.storage.journal import Journal, RunRecord
from sentiflow.storage.redact import redact, redact_all
from sentiflow.storage.settings import Settings

TIMEOUT = 2.0  # seconds for each request to a Prefect server


@dataclass
class Scheduled:
    deployment: str  # flow/deployment, e.g. train/weekly
    at: str  # its expected start, ISO 8601
    name: str


@dataclass
class ServiceState:
    champion: RunRecord | None = None  # the training that promoted the champion
    last_training: RunRecord | None = None
    last_scoring: RunRecord | None = None
    running: list[RunRecord] = field(default_factory=list)
    last_failure: RunRecord | None = None
    api: str = ""  # the Prefect server's URL (redacted); "" in the embedded mode
    scheduled: list[Scheduled] = field(default_factory=list)
    scheduled_error: str = ""  # why the server could not say

    def as_json(self) -> dict[str, Any]:
        rec = lambda r: None if r is None else r.model_dump(mode="json", exclude={"process"})  # noqa: E731
        return {"champion": rec(self.champion), "last_training": rec(self.last_training),
                "last_scoring": rec(self.last_scoring), "running": [rec(r) for r in self.running],
                "last_failure": rec(self.last_failure), "prefect_api": self.api or None,
                "scheduled": [s.__dict__ for s in self.scheduled], "scheduled_error": self.scheduled_error or None}


def service_state(settings: Settings) -> ServiceState:
    """The service as the data root's run journal and the configured Prefect server tell it."""
    records = Journal(settings.data_root).records()  # newest first
    trainings = [r for r in records if r.flow == "train"]
    promoted = [r for r in trainings if r.outcome.get("promoted") and not r.outcome.get("reused")]
    state = ServiceState(
        champion=promoted[0] if promoted else None,
        last_training=trainings[0] if trainings else None,
        last_scoring=next((r for r in records if r.flow == "score"), None),
        running=[r for r in records if r.running],
        last_failure=next((r for r in records if r.state in ("failed", "crashed")), None),
    )
    api = prefect_api_url()
    if api:
        state.api = redact(api)
        try:
            state.scheduled = scheduled_runs(api)
        except (OSError, ValueError, KeyError) as e:
            state.scheduled_error = redact_all(str(e))
    return state


def prefect_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect would resolve it, without importing Prefect (seconds): the
    environment, else the active profile of ``profiles.toml`` (``prefect config set``)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = _toml(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    value = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return value or None


def _toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the toml package, a dependency of Prefect's
        import toml

        return toml.loads(text)
    return tomllib.loads(text)


def scheduled_runs(api: str, limit: int = 5) -> list[Scheduled]:
    """The next scheduled flow runs on the server, soonest first, with their deployments' names."""
    runs = _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                                            "sort": "EXPECTED_START_TIME_ASC", "limit": limit})
    names: dict[str, str] = {}
    ids = sorted({r["deployment_id"] for r in runs if r.get("deployment_id")})
    if ids:
        deployments = _post(f"{api}/deployments/filter", {"deployments": {"id": {"any_": ids}}})
        flows = {f["id"]: f["name"] for f in _post(f"{api}/flows/filter",
                                                    {"flows": {"id": {"any_": sorted({d["flow_id"] for d in deployments})}}})}
        names = {d["id"]: f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in deployments}
    return [Scheduled(deployment=names.get(r.get("deployment_id"), "(no deployment)"),
                      at=r.get("expected_start_time") or r.get("next_scheduled_start_time") or "", name=r["name"])
            for r in runs]


def _post(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def when(at: datetime | str | None) -> str:
    """A time as status shows it: ``2026-12-07 03:00 UTC``."""
    if not at:
        return ""
    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
