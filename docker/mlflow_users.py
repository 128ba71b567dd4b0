"""The MLflow login of the Prefect workers (docker-compose.yml's ``mlflow-users`` one-shot).

The tracking server runs ``--app-name basic-auth`` with ``default_permission = NO_PERMISSIONS``.
Logged in as the admin, this makes sure that

* the worker user exists, is not an admin, and has the password from .env (a changed
  ``MLFLOW_WORKER_PASSWORD`` is applied on the next ``docker compose up``);
* the experiment and the registered model the flows write to exist (created by the admin, so
  the worker holds no owner's MANAGE on them);
* the worker has EDIT on both and nothing more: runs, metrics, artifacts, logged models,
  model versions, tags and aliases, but no deleting, no granting, no user administration.

Idempotent: run at every ``docker compose up``; a second run changes nothing. Standard library
only, so it runs in any Python image. MLflow 3.17's auth API: users under /api/2.0/mlflow/users,
per-user grants under /api/3.0/mlflow/users/permissions (the 2.x experiments/permissions/create
routes are gone)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

EXPERIMENT_KIND = {"key": "mlflow.experimentKind", "value": "custom_model_development"}  # as storage/tracking.py
WORKER_PERMISSION = "EDIT"


class SetupError(RuntimeError):
    """A step failed; the message names the step and never holds a password."""


@dataclass(frozen=True)
class Login:
    username: str
    password: str = field(repr=False)

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str):
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def call(uri: str, login: Login, method: str, path: str, body: dict | None = None,
         params: dict | None = None) -> dict:
    """One REST call as ``login``; the answer's JSON. An HTTP error raises ApiError."""
    url = uri.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": login.header(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            message = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            message = text
        raise ApiError(e.code, method, path, message.strip()[:300]) from None


def check_admin(uri: str, admin: Login) -> None:
    """The admin's login works and is an admin's: every later step needs it."""
    try:
        me = call(uri, admin, "GET", "/api/2.0/mlflow/users/current")["user"]
    except ApiError as e:
        if e.status == 401:
            raise SetupError(
                f"MLflow refused the admin login of {admin.username!r}: MLFLOW_ADMIN_PASSWORD must be the "
                "password the admin had at the server's first start (MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD "
                "only then; change it through MLflow's update-password API, then in .env)") from None
        raise SetupError(f"checking the admin login: {e}") from None
    if not me.get("is_admin"):
        raise SetupError(f"{admin.username!r} is not an MLflow admin")


def ensure_user(uri: str, admin: Login, worker: Login) -> list[str]:
    """The worker user exists with ``worker.password`` and is no admin; what was changed."""
    changed = []
    try:
        user = call(uri, admin, "GET", "/api/2.0/mlflow/users/get", params={"username": worker.username})["user"]
    except ApiError as e:
        if e.status != 404:
            raise SetupError(f"looking up user {worker.username!r}: {e}") from None
        call(uri, admin, "POST", "/api/2.0/mlflow/users/create",
             {"username": worker.username, "password": worker.password})
        return [f"created user {worker.username}"]
    if user.get("is_admin"):
        call(uri, admin, "PATCH", "/api/2.0/mlflow/users/update-admin", {"username": worker.username, "is_admin": False})
        changed.append(f"took admin away from {worker.username}")
    try:
        call(uri, worker, "GET", "/api/2.0/mlflow/users/current")
    except ApiError as e:
        if e.status != 401:
            raise SetupError(f"checking the login of {worker.username!r}: {e}") from None
        call(uri, admin, "PATCH", "/api/2.0/mlflow/users/update-password",
             {"username": worker.username, "password": worker.password})
        changed.append(f"set the password of {worker.username}")
    return changed


def ensure_experiment(uri: str, admin: Login, name: str) -> tuple[str, list[str]]:
    """The experiment's id, created by the admin if missing (tagged as sentiflow tags it)."""
    try:
        exp = call(uri, admin, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                   params={"experiment_name": name})["experiment"]
        return exp["experiment_id"], []
    except ApiError as e:
        if e.status != 404:
            raise SetupError(f"looking up experiment {name!r}: {e}") from None
    made = call(uri, admin, "POST", "/api/2.0/mlflow/experiments/create", {"name": name, "tags": [EXPERIMENT_KIND]})
    return made["experiment_id"], [f"created experiment {name}"]


def ensure_model(uri: str, admin: Login, name: str) -> list[str]:
    """The registered model, created by the admin if missing."""
    try:
        call(uri, admin, "GET", "/api/2.0/mlflow/registered-models/get", params={"name": name})
        return []
    except ApiError as e:
        if e.status != 404:
            raise SetupError(f"looking up registered model {name!r}: {e}") from None
    call(uri, admin, "POST", "/api/2.0/mlflow/registered-models/create", {"name": name})
    return [f"created registered model {name}"]


def ensure_grant(uri: str, admin: Login, username: str, resource_type: str, resource_id: str,
                 permission: str = WORKER_PERMISSION) -> list[str]:
    """``username`` holds exactly ``permission`` on the resource: a missing grant is added, another
    level (e.g. the MANAGE of a creator) replaced."""
    query = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    path = "/api/3.0/mlflow/users/permissions"
    held = call(uri, admin, "GET", f"{path}/get", params=query).get("permission")
    if held == permission:
        return []
    try:
        call(uri, admin, "POST", f"{path}/revoke", query)
    except ApiError as e:
        if e.status != 404:  # 404: no grant of its own (held came from the default)
            raise SetupError(f"revoking {username}'s {held} on {resource_type} {resource_id}: {e}") from None
    call(uri, admin, "POST", f"{path}/grant", {**query, "permission": permission})
    return [f"granted {username} {permission} on {resource_type} {resource_id} (was {held})"]


def setup_worker(uri: str, admin: Login, worker: Login, experiment: str = "sentiflow",
                 model: str = "sentiflow") -> list[str]:
    """Everything above, in order; the list of changes (empty when all was in place)."""
    if worker.username == admin.username:
        raise SetupError(f"MLFLOW_WORKER_USER is the admin ({admin.username!r}): the workers need a login of their own")
    if not worker.username or not worker.password:
        raise SetupError("MLFLOW_WORKER_USER and MLFLOW_WORKER_PASSWORD must be set")
    check_admin(uri, admin)
    try:
        changed = ensure_user(uri, admin, worker)
        experiment_id, made = ensure_experiment(uri, admin, experiment)
        changed += made + ensure_model(uri, admin, model)
        changed += ensure_grant(uri, admin, worker.username, "experiment", experiment_id)
        changed += ensure_grant(uri, admin, worker.username, "registered_model", model)
    except ApiError as e:
        raise SetupError(str(e)) from None
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sentiflow")
    parser.add_argument("--model", default="sentiflow")
    args = parser.parse_args(argv)
    env = os.environ
    try:
        uri = env["MLFLOW_TRACKING_URI"]
        admin = Login(env["MLFLOW_ADMIN_USER"], env["MLFLOW_ADMIN_PASSWORD"])
        worker = Login(env["MLFLOW_WORKER_USER"], env["MLFLOW_WORKER_PASSWORD"])
    except KeyError as e:
        print(f"mlflow-users: {e.args[0]} is not set", file=sys.stderr)
        return 2
    try:
        changed = setup_worker(uri, admin, worker, args.experiment, args.model)
    except (SetupError, OSError) as e:
        print(f"mlflow-users: {e}", file=sys.stderr)
        return 1
    for line in changed or [f"{worker.username} already set up"]:
        print(f"mlflow-users: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
