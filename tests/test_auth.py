"""The tracking server with authentication, as docker-compose.yml runs it (issue 10): a real
``mlflow server --app-name basic-auth`` on loopback, its admin from the environment (as compose
passes it from .env). ``sentiflow train`` with the credentials in MLflow's standard variables
works; without them it ends with one clear error and no password anywhere in its output."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_imdb_folder
from tests.servers import free_port, process

pytestmark = [pytest.mark.server, pytest.mark.slow]
BIN = Path(sys.executable).parent
USER, PASSWORD = "sentiflow-admin", "s3cret-pw-9f3a"


def test_authenticated_tracking_server(tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = {USER}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SENTIFLOW_"))}
    base.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
                PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server_env = {**base, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--serve-artifacts"]
    src = write_imdb_folder(tmp_path / "src", n_train=200, n_test=50)
    client_env = {**base, "PREFECT_HOME": str(tmp_path / "prefect"), "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"),
                  "MLFLOW_TRACKING_URI": uri}
    train = [str(BIN / "sentiflow"), "train", "--source", str(src), "--max-epochs", "1", "--pretrained", "none", "--embed-dim", "8",
             "--hidden-dim", "8", "--workers", "1"]
    with process(cmd, server_env, tmp_path / "mlflow.log", f"{uri}/health"):
        with pytest.raises(urllib.error.HTTPError) as e:  # the API refuses a stranger
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert e.value.code == 401

        refused = subprocess.run(train, env=client_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]

        ok = subprocess.run(train, env={**client_env, "MLFLOW_TRACKING_USERNAME": USER,
                                        "MLFLOW_TRACKING_PASSWORD": PASSWORD},
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert "registered sentiflow version 1 as @champion" in ok.stdout
        for out in (refused.stdout, refused.stderr, ok.stdout, ok.stderr):
            assert PASSWORD not in out

        client = MlflowClient(uri)  # MLflow reads the credentials from these variables
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = USER, PASSWORD
        try:
            assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == "1"
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
