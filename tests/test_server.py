"""Server mode: a real ``mlflow server`` and a real ``prefect server`` on loopback; ``sentiflow
train`` and ``sentiflow score`` run against them as a user would (``PREFECT_API_URL``,
``MLFLOW_TRACKING_URI``), then ``sentiflow serve`` runs a triggered score deployment. Checked
through the servers' REST APIs: the runs, the model version and its alias, artifacts in the
server's artifact store (nothing under the local data root), the flow runs' states."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_imdb_folder

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _post(url: str, body: dict) -> dict | list:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path, health: str | None = None, timeout: float = 120):
    """Start ``cmd`` in its own process group; wait for ``health`` to answer; stop it with SIGINT
    (a Prefect worker or runner stops on SIGINT, not SIGTERM), then SIGKILL if it lingers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while health:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(health, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{health} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield proc
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        # the group: children (gunicorn/uvicorn workers) too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("servers")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SENTIFLOW_"))}
    base.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"})
    mlflow_port, prefect_port = _port(), _port()
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                  "--artifacts-destination", (tmp / "artifact-store").as_uri(), "--serve-artifacts"]
    prefect_env = {**base, "PREFECT_HOME": str(tmp / "prefect-server-home"), "PREFECT_UI_ENABLED": "false",
                   "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}"}
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    with _process(mlflow_cmd, base, tmp / "mlflow.log", f"http://127.0.0.1:{mlflow_port}/health"), \
            _process(prefect_cmd, prefect_env, tmp / "prefect.log", f"http://127.0.0.1:{prefect_port}/api/health"):
        client_env = {**base, "PREFECT_HOME": str(tmp / "client-home"),
                      "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                      "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                      "SENTIFLOW_DATA_ROOT": str(tmp / "data"),
                      # a deployment's runs may read the sources and write predictions here only
                      "SENTIFLOW_PATH_ROOTS": json.dumps([str(tmp / "src"), str(tmp / "out")])}
        yield {"tmp": tmp, "env": client_env, "mlflow": f"http://127.0.0.1:{mlflow_port}",
               "prefect": f"http://127.0.0.1:{prefect_port}/api", "artifact_store": tmp / "artifact-store"}


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    r = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"sentiflow {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _flow_runs(api: str, flow_name: str) -> list[dict]:
    return _post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})


def test_train_and_score_against_servers(servers):
    tmp, env, mlflow_url = servers["tmp"], servers["env"], servers["mlflow"]
    src = write_imdb_folder(tmp / "src", n_train=240, n_test=60, seed=5)
    _cli(["train", "--source", str(src), "--max-epochs", "2", "--embed-dim", "16", "--hidden-dim", "16",
          "--batch-size", "16", "--workers", "1"], env)
    out = tmp / "predictions.parquet"
    _cli(["score", "--source", str(src), "--out", str(out), "--workers", "1"], env)
    assert pq.read_metadata(out).num_rows == 60

    api = f"{mlflow_url}/api/2.0/mlflow"
    champion = _get(f"{api}/registered-models/alias?name=sentiflow&alias=champion")["model_version"]
    assert champion["version"] == "1"
    run = _get(f"{api}/runs/get?run_id={champion['run_id']}")["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # the server's store
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"val_acc", "train_loss", "test_acc"} <= metrics
    # the model's files and the checkpoints went to the server's artifact store, not the data root
    assert list(servers["artifact_store"].rglob("MLmodel")) and list(servers["artifact_store"].rglob("epoch-*.pt"))
    data_root = Path(env["SENTIFLOW_DATA_ROOT"])
    assert not (data_root / "mlflow.db").exists() and not (data_root / "mlartifacts").exists()

    exp = _get(f"{api}/experiments/get-by-name?experiment_name=sentiflow")["experiment"]
    evals = _post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                         "filter": "tags.`sentiflow.kind` = 'evaluation'"})["runs"]
    assert len(evals) == 1
    tags = {t["key"]: t["value"] for t in evals[0]["data"]["tags"]}
    assert tags["sentiflow.model_version"] == "1" and tags["sentiflow.model_uri"] == "models:/sentiflow/1"
    assert {m["key"] for m in evals[0]["data"]["metrics"]} >= {"accuracy", "precision", "recall", "f1"}

    for flow_name in ("train", "score"):
        runs = _flow_runs(servers["prefect"], flow_name)
        assert runs and all(r["state"]["type"] == "COMPLETED" for r in runs), flow_name


def test_serve_runs_a_triggered_score_deployment(servers):
    """``sentiflow serve`` registers both deployments; a run created through the API executes in
    the serving process with the form's parameters. Needs the model of the test above."""
    tmp, env, api = servers["tmp"], servers["env"], servers["prefect"]
    src = tmp / "src"
    if not src.exists():
        pytest.skip("needs the model trained by test_train_and_score_against_servers")
    with _process([sys.executable, "-m", "sentiflow.flows.cli", "serve", "--cron", "0 3 * * 1"], env, tmp / "serve.log"):
        deadline = time.monotonic() + 120
        while True:
            deployments = {d["name"]: d for d in _post(f"{api}/deployments/filter", {})}
            if {"weekly", "on-demand"} <= set(deployments):
                break
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        weekly = deployments["weekly"]
        assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 1"]
        schema = deployments["on-demand"]["parameter_openapi_schema"]
        assert "config" in schema["properties"]  # the pydantic form

        def run_on_demand(config: dict) -> dict:
            run = _post(f"{api}/deployments/{deployments['on-demand']['id']}/create_flow_run",
                        {"parameters": {"config": config, "workers": 1}})
            while True:
                state = _get(f"{api}/flow_runs/{run['id']}")["state"]
                if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    return state
                assert time.monotonic() < deadline + 240, (tmp / "serve.log").read_text()[-3000:]
                time.sleep(1)

        out = tmp / "out" / "served.parquet"
        state = run_on_demand({"source": str(src / "test.parquet"), "out": str(out)})
        assert state["type"] == "COMPLETED", (tmp / "serve.log").read_text()[-3000:]
        assert pq.read_metadata(out).num_rows == 60
        # a parameter form is no way to read or write any file the worker can
        for config in ({"source": "/etc/hostname"}, {"source": str(src / "test.parquet"), "out": str(tmp / "x.parquet")}):
            state = run_on_demand(config)
            assert state["type"] == "FAILED", state
            assert "outside the folders a deployment's run may use" in (tmp / "serve.log").read_text()
        assert not (tmp / "x.parquet").exists()
