"""The tracking server with authentication, as docker-compose.yml runs it (issues 10, 19): a real
``mlflow server --app-name basic-auth`` on loopback and a real ``prefect server``.

Without credentials ``sentiflow train`` ends with one clear error. With the password inside the
tracking URI (``http://user:secret@host``, not only MLflow's variables) a training, a scoring and a
scoring whose tracking server cannot be reached (a failed task, MLflow's error naming the URL) run,
and the password is then found nowhere: not in any process's command line while they run (polled
from /proc), not in their output, and not in any file under the test's folder - the Prefect
server's database (flow-run states and messages, logs, artifacts), the MLflow server's database
(params, tags) and artifacts, the data root (run journal, stages)."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_imdb_folder
from tests.postgres import postgres_cluster
from tests.servers import base_env, free_port, get, prefect_server, process

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(1200)]
BIN = Path(sys.executable).parent
USER, PASSWORD = "sentiflow-admin", "s3cret-pw-9f3a"


class CommandLines:
    """Every process's command line, read from /proc every 0.1 s while it runs: the ones that
    hold ``needle``."""

    def __init__(self, needle: str):
        self.needle, self.found, self._stop = needle.encode(), set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        line = (entry / "cmdline").read_bytes()
                    except OSError:
                        continue
                    if self.needle in line:
                        self.found.add(line.replace(b"\0", b" ").decode(errors="replace"))

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _files_holding(folder: Path, needle: str) -> list[str]:
    """The files under ``folder`` whose bytes hold ``needle`` (databases and their WAL included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and needle.encode() in p.read_bytes())


def test_authenticated_tracking_server(tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = {USER}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    base = base_env()
    server_env = {**base, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    secret_uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--serve-artifacts"]
    src = write_imdb_folder(tmp_path / "src", n_train=200, n_test=50)
    train = [str(BIN / "sentiflow"), "train", "--source", str(src), "--max-epochs", "1", "--pretrained", "none",
             "--embed-dim", "8", "--hidden-dim", "8", "--workers", "1"]
    score = [str(BIN / "sentiflow"), "score", "--source", str(src / "test.parquet"), "--workers", "1"]
    outputs: list[str] = []

    def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        outputs.extend([done.stdout, done.stderr])
        return done

    with prefect_server(tmp_path, base) as api, CommandLines(PASSWORD) as seen:
        client_env = {**base, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect"),
                      "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": uri}
        with process(cmd, server_env, tmp_path / "mlflow.log", f"{uri}/health"):
            with pytest.raises(urllib.error.HTTPError) as e:  # the API refuses a stranger
                urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
            assert e.value.code == 401

            refused = run(train, client_env)
            assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
            errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]

            secret_env = {**client_env, "MLFLOW_TRACKING_URI": secret_uri}
            ok = run(train, secret_env)
            assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
            assert "registered sentiflow version 1 as @champion" in ok.stdout
            scored = run([*score, "--out", str(tmp_path / "scored.parquet")], secret_env)
            assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr[-2000:]

            client = MlflowClient(secret_uri)  # the password in the URI is all MLflow needs
            assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == "1"
            assert {r.info.run_name for r in client.search_runs(
                [client.get_experiment_by_name("sentiflow").experiment_id])} >= {"evaluate-sentiflow-v1-test"}

        # the same password, the server gone: the score flow's first task fails on MLflow's
        # connection error, whose message names the URL
        down = run([*score, "--out", str(tmp_path / "down.parquet")], {**secret_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
        assert down.returncode == 1, down.stdout[-2000:] + down.stderr[-2000:]
        assert f"{USER}:***@127.0.0.1:{port}" in down.stderr, down.stderr[-2000:]

    assert not seen.found, seen.found  # no command line held it, sentiflow's or a child's
    for out in outputs:
        assert PASSWORD not in out, out[-3000:]
    assert (tmp_path / "prefect-server-home" / "prefect.db").exists()
    assert _files_holding(tmp_path, PASSWORD) == []  # Prefect's and MLflow's stores, the data root, logs


def test_ui_passes_the_store_uri_by_environment(tmp_path):
    """``sentiflow ui`` on a PostgreSQL store (a real temporary cluster, password authentication):
    the DSN reaches ``mlflow ui`` by environment - the UI answers on it - while no process's
    command line holds the password, and sentiflow prints the DSN redacted."""
    with postgres_cluster(("mlflow",)) as cluster:
        dsn = cluster.url("mlflow", "psycopg")
        port = free_port()
        env = {**base_env(), "MLFLOW_TRACKING_URI": dsn, "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"),
               "PREFECT_HOME": str(tmp_path / "prefect")}
        with CommandLines(cluster.password) as seen:
            with process([str(BIN / "sentiflow"), "ui", "--port", str(port)], env, tmp_path / "ui.log",
                         f"http://127.0.0.1:{port}/health", 240):
                experiments = get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5")
        assert [e["name"] for e in experiments["experiments"]] == ["Default"]  # the new PostgreSQL store
        said = [line for line in (tmp_path / "ui.log").read_text().splitlines() if "MLflow UI on" in line]
        assert len(said) == 1 and f"{cluster.user}:***@127.0.0.1" in said[0], said
        assert cluster.password not in (tmp_path / "ui.log").read_text()
        assert not seen.found, seen.found
