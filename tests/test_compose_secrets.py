"""docker-compose.yml's two setup scripts, run natively (issue 19): docker/check_secrets.sh
refuses placeholder secrets before anything starts, and docker/mlflow_users.py gives the Prefect
workers their own MLflow login with EDIT on the experiment and model "sentiflow" and nothing
more, checked against a real ``mlflow server --app-name basic-auth`` on loopback."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.servers import base_env, free_port, process

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "docker" / "check_secrets.sh"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
GOOD = "q7Vx2-Lm9_pR4tZ8"  # 16 characters from the allowed set


def _load_users_module():
    spec = importlib.util.spec_from_file_location("mlflow_users", ROOT / "docker" / "mlflow_users.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mlflow_users = _load_users_module()


def check(env: dict[str, str], *names: str, example: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    """docker/check_secrets.sh under /bin/sh (dash on Debian: POSIX only) with only ``env``."""
    args = ["-e", str(example)] if example else []
    return subprocess.run(["/bin/sh", str(CHECK), *args, *names], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30, check=False)


# -- the secrets check ----------------------------------------------------------------------------

def test_check_accepts_good_secrets():
    done = check({"A_PASSWORD": GOOD, "B_SECRET": "0123456789abcdef0123"}, "A_PASSWORD", "B_SECRET")
    assert done.returncode == 0, done.stderr
    assert "2 secrets set" in done.stdout


@pytest.mark.parametrize(("value", "why"), [
    ("change-me", "placeholder"),
    ("CHANGE-ME-but-long-enough", "placeholder"),
    ("my-ChangeMe-password-123", "placeholder"),
    ("Sh0rt-pass1", "fewer than 12"),  # 11 characters
    ("", "is not set"),
    ("long-enough but spaced", "characters other than"),
    ("long-enough@host/path", "characters other than"),
    ('long-enough"quote"', "characters other than"),
])
def test_check_refuses_a_bad_secret(value: str, why: str):
    done = check({"X_PASSWORD": value}, "X_PASSWORD")
    assert done.returncode == 1, done.stdout
    assert "X_PASSWORD" in done.stderr and why in done.stderr, done.stderr
    if value:
        assert value not in done.stderr + done.stdout  # the value is never printed


def test_check_refuses_an_unset_secret_and_reports_every_refusal():
    done = check({"SET_PASSWORD": "change-me-too"}, "UNSET_PASSWORD", "SET_PASSWORD")
    assert done.returncode == 1
    assert "UNSET_PASSWORD is not set" in done.stderr and "SET_PASSWORD is still the placeholder" in done.stderr


def test_check_refuses_any_value_from_the_example_file(tmp_path: Path):
    example = tmp_path / "env.example"
    example.write_text("# a comment=not-a-value-xyz\nOTHER_KEY=an-example-value-123\nEMPTY=\n")
    assert check({"P_SECRET": "an-example-value-123"}, "P_SECRET", example=example).returncode == 1
    assert check({"P_SECRET": "not-a-value-xyz"}, "P_SECRET", example=example).returncode == 0  # comments skipped
    assert check({"P_SECRET": GOOD}, "P_SECRET", example=example).returncode == 0


def test_check_refuses_every_secret_as_env_example_gives_it():
    """A plain ``cp .env.example .env`` must not start: each secret variable (named as the
    compose file's ${...:?} references name them) is refused with the example's value."""
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    secrets = [k for k in example if "PASSWORD" in k or "SECRET" in k]
    assert len(secrets) >= 5, secrets
    done = check(example, *secrets)
    assert done.returncode == 1
    for name in secrets:
        assert f"secrets-check: {name} " in done.stderr, (name, done.stderr)


def test_check_refuses_a_bad_variable_name():
    assert check({}, "A;rm -rf x").returncode == 2


# -- the workers' MLflow user ---------------------------------------------------------------------

ADMIN = mlflow_users.Login("sentiflow-admin", "admin-pw-9f3a7c1e")
WORKER = mlflow_users.Login("sentiflow-worker", "worker-pw-5d2b8e0a")


def rest(uri: str, login, method: str, path: str, body: dict | None = None) -> int:
    """The HTTP status of one call as ``login``."""
    token = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
    request = urllib.request.Request(uri + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers={"Authorization": f"Basic {token}",
                                                             "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server --app-name basic-auth`` as the compose image configures it
    (default_permission NO_PERMISSIONS, admin from the environment, artifacts proxied). One for
    the module: each test uses its own worker, experiment and model names."""
    tmp_path = tmp_path_factory.mktemp("mlflow-auth")
    ini = tmp_path / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {**base_env(), "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN.username,
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN.password, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key-123",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--serve-artifacts"]
    with process(cmd, env, tmp_path / "mlflow.log", f"{uri}/health", timeout=180):
        yield uri


@pytest.fixture
def as_worker(monkeypatch: pytest.MonkeyPatch):
    """MLflow's client logs in as the worker (its standard variables, as compose sets them)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", WORKER.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WORKER.password)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _work_as_the_flows_do(uri: str, tmp_path: Path) -> str:
    """What a training and a scoring do in MLflow, as the worker: sentiflow's own experiment
    setup, a run with params, metrics, an artifact, a logged model, a registered version with
    tags, descriptions and an alias, and reading it back. Returns the run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from sentiflow.storage.settings import Settings
    from sentiflow.storage.tracking import configure

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[int]:
            return [1] * len(model_input)

    experiment_id = configure(Settings(tracking_uri=uri, data_root=tmp_path / "data"))
    client = MlflowClient()
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with mlflow.start_run(experiment_id=experiment_id, run_name="worker-run") as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_metric("val_acc", 0.75, step=1)
        mlflow.set_tag("sentiflow.key", "abc")
        mlflow.log_artifact(str(note))
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
    version = str(mlflow.register_model(info.model_uri, "sentiflow").version)
    client.update_model_version("sentiflow", version, description="a version")
    client.update_registered_model("sentiflow", description="sentiment model")
    client.set_model_version_tag("sentiflow", version, "val_acc", "0.75")
    client.set_registered_model_alias("sentiflow", "champion", version)
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == version
    assert client.search_model_versions("name = 'sentiflow'")
    assert client.get_metric_history(run.info.run_id, "val_acc")[0].value == 0.75
    assert (Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/note.txt")).read_text() == "hello")
    assert mlflow.models.get_model_info("models:/sentiflow@champion").run_id == run.info.run_id  # as scoring reads it
    # the reaper's calls: the experiments it may see, its runs, ending one
    assert experiment_id in [e.experiment_id for e in client.search_experiments()]
    with mlflow.start_run(experiment_id=experiment_id, run_name="dies") as dying:
        pass
    client.set_terminated(dying.info.run_id, "KILLED")
    return run.info.run_id


@pytest.mark.server
@pytest.mark.slow
def test_worker_user_can_train_and_register_but_not_administer(auth_server: str, tmp_path: Path, as_worker):
    uri = auth_server
    # before the setup the worker has no login at all
    assert rest(uri, WORKER, "GET", "/api/2.0/mlflow/users/current") == 401
    changed = mlflow_users.setup_worker(uri, ADMIN, WORKER)
    assert "created user sentiflow-worker" in changed and "created experiment sentiflow" in changed
    assert any(c.startswith("granted sentiflow-worker EDIT on registered_model sentiflow") for c in changed), changed
    assert mlflow_users.setup_worker(uri, ADMIN, WORKER) == []  # idempotent: nothing left to do

    # an experiment of someone else's: invisible to the worker (default NO_PERMISSIONS)
    other_id = mlflow_users.call(uri, ADMIN, "POST", "/api/2.0/mlflow/experiments/create",
                                 {"name": "someone-else"})["experiment_id"]
    sentiflow_id, _ = mlflow_users.ensure_experiment(uri, ADMIN, "sentiflow")

    run_id = _work_as_the_flows_do(uri, tmp_path)

    forbidden = {
        "create a user": ("POST", "/api/2.0/mlflow/users/create", {"username": "x", "password": "y" * 12}),
        "make itself admin": ("PATCH", "/api/2.0/mlflow/users/update-admin",
                              {"username": WORKER.username, "is_admin": True}),
        "delete the admin": ("DELETE", "/api/2.0/mlflow/users/delete", {"username": ADMIN.username}),
        "grant itself MANAGE": ("POST", "/api/3.0/mlflow/users/permissions/grant",
                                {"username": WORKER.username, "resource_type": "experiment",
                                 "resource_id": sentiflow_id, "permission": "MANAGE"}),
        "delete the experiment": ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": sentiflow_id}),
        "delete a run": ("POST", "/api/2.0/mlflow/runs/delete", {"run_id": run_id}),
        "delete the model": ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": "sentiflow"}),
        "delete a version": ("DELETE", "/api/2.0/mlflow/model-versions/delete", {"name": "sentiflow", "version": "1"}),
        "read another experiment": ("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={other_id}", None),
    }
    refused = {what: rest(uri, WORKER, *call) for what, call in forbidden.items()}
    assert all(code == 403 for code in refused.values()), refused
    assert rest(uri, ADMIN, "GET", f"/api/2.0/mlflow/experiments/get?experiment_id={sentiflow_id}") == 200


@pytest.mark.server
@pytest.mark.slow
def test_setup_repairs_the_worker_and_refuses_bad_logins(auth_server: str):
    uri = auth_server
    worker, names = mlflow_users.Login("repair-worker", "repair-pw-3c9e1f"), {"experiment": "rx", "model": "rm"}
    with pytest.raises(mlflow_users.SetupError, match="is the admin"):
        mlflow_users.setup_worker(uri, ADMIN, mlflow_users.Login(ADMIN.username, "another-pw-123456"), **names)
    wrong = mlflow_users.Login(ADMIN.username, "not-the-admin-pw-1")
    with pytest.raises(mlflow_users.SetupError, match="refused the admin login") as e:
        mlflow_users.setup_worker(uri, wrong, worker, **names)
    assert wrong.password not in str(e.value)
    mlflow_users.setup_worker(uri, ADMIN, worker, **names)

    # someone made the worker an admin, or owner (MANAGE) of the model: the next start undoes it
    assert rest(uri, ADMIN, "PATCH", "/api/2.0/mlflow/users/update-admin",
                {"username": worker.username, "is_admin": True}) == 200
    grant = {"username": worker.username, "resource_type": "registered_model", "resource_id": "rm"}
    assert rest(uri, ADMIN, "POST", "/api/3.0/mlflow/users/permissions/revoke", grant) == 200
    assert rest(uri, ADMIN, "POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "MANAGE"}) == 200
    rotated = mlflow_users.Login(worker.username, "rotated-worker-pw-77")
    changed = mlflow_users.setup_worker(uri, ADMIN, rotated, **names)
    assert changed == ["took admin away from repair-worker", "set the password of repair-worker",
                       "granted repair-worker EDIT on registered_model rm (was MANAGE)"], changed
    assert rest(uri, worker, "GET", "/api/2.0/mlflow/users/current") == 401  # the old password
    assert rest(uri, rotated, "DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": "rm"}) == 403

    # the command line, as the one-shot runs it: exit 0 and one line per change, no password
    env = {**base_env(), "MLFLOW_TRACKING_URI": uri, "MLFLOW_ADMIN_USER": ADMIN.username,
           "MLFLOW_ADMIN_PASSWORD": ADMIN.password, "MLFLOW_WORKER_USER": worker.username,
           "MLFLOW_WORKER_PASSWORD": worker.password}
    script = [sys.executable, str(ROOT / "docker" / "mlflow_users.py"), "--experiment", "rx", "--model", "rm"]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "mlflow-users: set the password of repair-worker\n"
    bad = subprocess.run(script, env={**env, "MLFLOW_ADMIN_PASSWORD": "wrong-password-123"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "refused the admin login" in bad.stderr
    assert "wrong-password-123" not in bad.stderr + bad.stdout
