"""The MLflow tracking server down (issue 10): at start, and stopped in the middle of a training.
A real ``mlflow server`` on loopback; ``sentiflow train`` through the CLI in its own processes.

Down at start: bounded retries, then one clear error line. Stopped mid-training: the same; the
checkpoints already written stay usable, and a rerun once the server is back resumes the same
run and completes it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_imdb_folder
from tests.servers import NO_JOBS, free_port, process

pytestmark = [pytest.mark.server, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _env(tmp: Path, uri: str, api: str) -> dict[str, str]:
    """The command's environment: the session's Prefect server (``api``, ``prefect_api``), so its
    PREFECT_HOME holds no database (no template copy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SENTIFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               HF_HUB_OFFLINE="1", PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=api, SENTIFLOW_DATA_ROOT=str(tmp / "data"),
               MLFLOW_TRACKING_URI=uri, **NO_JOBS)  # NO_JOBS: for the mlflow server started with it
    return env


def _train(src: Path, epochs: int) -> list[str]:
    return [str(BIN / "sentiflow"), "train", "--source", str(src), "--max-epochs", str(epochs), "--pretrained", "none", "--embed-dim", "16",
            "--hidden-dim", "16", "--workers", "1"]


def _mlflow_cmd(tmp: Path, port: int) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", (tmp / "artifacts").as_uri(), "--serve-artifacts"]


def test_server_down_at_start_is_one_clear_error_after_bounded_retries(tmp_path, prefect_api):
    src = write_imdb_folder(tmp_path / "src", n_train=200, n_test=50)
    started = time.monotonic()
    proc = subprocess.run(_train(src, 1), env=_env(tmp_path, f"http://127.0.0.1:{free_port()}", prefect_api), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "127.0.0.1" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert seconds < 180  # bounded: 4 retries with backoff, not MLflow's default of minutes


def test_server_stopped_mid_training_then_back_resumes_the_run(tmp_path, prefect_api):
    src = write_imdb_folder(tmp_path / "src", n_train=3000, n_test=100, seed=2)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(tmp_path, uri, prefect_api)
    with process(_mlflow_cmd(tmp_path, port), env, tmp_path / "mlflow-1.log", f"{uri}/health"):
        proc = subprocess.Popen(_train(src, 6), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        second_epoch = threading.Event()

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line)
                if "epoch 2/6:" in line:
                    second_epoch.set()

        threading.Thread(target=pump, daemon=True).start()
        assert second_epoch.wait(400), "".join(lines)[-3000:]
    # the server is gone (its whole process group killed) while epoch 3 trains
    code = proc.wait(timeout=300)
    output = "".join(lines)
    assert code == 1, output[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in output, output[-3000:]

    with process(_mlflow_cmd(tmp_path, port), env, tmp_path / "mlflow-2.log", f"{uri}/health"):
        rerun = subprocess.run(_train(src, 6), env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=900)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert "resuming run" in rerun.stdout + rerun.stderr
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id])
        assert len(runs) == 1
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # every epoch once: none lost, none twice
