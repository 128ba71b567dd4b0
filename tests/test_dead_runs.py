"""No run stays "Running" after its process died: a ``sentiflow train`` killed with SIGKILL in the
middle of its epochs, in the embedded (ephemeral Prefect) mode and against a real ``prefect
server``; the next command (``sentiflow status``) says so in one line, and then Prefect holds the
flow run Crashed, MLflow the training run KILLED, the journal ``crashed``. Both stores are read by
their own clients, in another process for Prefect's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import prefect_home, write_imdb_folder
from tests.servers import ROOT, base_env, prefect_server

pytestmark = [pytest.mark.slow]


def _env(tmp: Path, api: str | None) -> dict[str, str]:
    env = {**base_env(), "PREFECT_HOME": prefect_home(tmp / "prefect-home"), "SENTIFLOW_DATA_ROOT": str(tmp / "data"),
           "PYTHONUNBUFFERED": "1"}
    if api:
        env["PREFECT_API_URL"] = api
    return env


def _train_until_an_epoch_is_logged(tmp: Path, env: dict[str, str]) -> subprocess.Popen:
    log = tmp / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentiflow.flows.cli", "train", "--source", str(tmp / "src"), "--preset", "fast",
             "--max-epochs", "200", "--hidden-dim", "16", "--embed-dim", "16"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while "epoch 2/200" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    return proc


def _prefect_flow_run(env: dict[str, str], flow_run_id: str) -> dict[str, str]:
    """The flow run as Prefect's own client reads it (in a process of its own: the ephemeral
    mode's database is the one under the run's PREFECT_HOME)."""
    code = ("import json, sys\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    r = c.read_flow_run(sys.argv[1])\n"
            "    print(json.dumps({'state': r.state.type.value, 'message': r.state.message or '', 'name': r.name}))\n")
    out = subprocess.run([sys.executable, "-c", code, flow_run_id], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=180, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["ephemeral", pytest.param("server", marks=pytest.mark.server)])
def test_a_training_killed_with_sigkill_is_crashed_in_prefect_and_killed_in_mlflow(tmp_path, mode):
    write_imdb_folder(tmp_path / "src", n_train=300, n_test=60)
    servers = prefect_server(tmp_path) if mode == "server" else None
    api = servers.__enter__() if servers else None
    try:
        env = _env(tmp_path, api)
        proc = _train_until_an_epoch_is_logged(tmp_path, env)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        runs = tmp_path / "data" / "runs"
        train = next(json.loads(p.read_text()) for p in runs.glob("*.json") if json.loads(p.read_text())["flow"] == "train")
        assert train["state"] == "running"  # nothing could write more: the process was killed
        assert _prefect_flow_run(env, train["id"])["state"] == "RUNNING"

        status = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", "status"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert status.returncode == 0, status.stderr[-3000:]
        said = [line for line in status.stderr.splitlines() if "died earlier" in line]
        assert len(said) == 1 and train["name"] in said[0] and "KILLED" in said[0], status.stderr[-3000:]

        # the run's name, as both UIs show it: train-<preset>-<the training key's start>
        assert re.fullmatch(r"train-fast-[0-9a-f]{6}", train["name"])
        run = _prefect_flow_run(env, train["id"])
        assert run["state"] == "CRASHED" and "ended without a word" in run["message"]
        assert run["name"] == train["name"]
        client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
        (killed,) = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id],
                                       f"tags.`sentiflow.flow_run_id` = '{train['id']}'")
        assert killed.info.status == "KILLED" and killed.info.run_name == train["name"]
        assert json.loads((runs / f"{train['id']}.json").read_text())["state"] == "crashed"
        # the status it printed shows the failure, and a second command finds nothing more to mark
        assert "crashed" in status.stdout and train["name"] in status.stdout
        again = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", "status"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "died earlier" not in again.stderr
    finally:
        if servers:
            servers.__exit__(None, None, None)
