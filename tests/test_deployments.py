"""The deployments: prefect.yaml and ``sentiflow serve`` declare the same two, their entrypoints
load, their parameters are the flows' pydantic forms; ``sentiflow ui`` on the embedded store."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sentiflow.flows.cli import app
from sentiflow.flows.deployments import RETRAIN, RETRAIN_CRON, SCORE, runner_deployments

ROOT = Path(__file__).resolve().parents[1]


def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_matches_the_served_deployments():
    declared = {d["name"]: d for d in _prefect_yaml()["deployments"]}
    served = {d.name: d for d in runner_deployments()}
    assert set(served) == {RETRAIN, SCORE} and set(declared) == {RETRAIN, SCORE, f"{RETRAIN}-gpu"}
    for name in served:
        d = declared[name]
        assert d["entrypoint"].split(":")[0] == served[name].entrypoint.split(":")[0].lstrip("./"), name
        assert d["work_pool"]["name"] == "sentiflow"
    crons = {name: [s["cron"] for s in d.get("schedules") or []] for name, d in declared.items()}
    assert crons == {RETRAIN: [RETRAIN_CRON], SCORE: [], f"{RETRAIN}-gpu": [RETRAIN_CRON]}
    assert declared[RETRAIN]["schedules"][0]["timezone"] == "UTC"
    assert [s.schedule.cron for s in served[RETRAIN].schedules] == [RETRAIN_CRON]
    assert not served[SCORE].schedules
    # one training at a time: two runs of one key would share one MLflow run
    assert declared[RETRAIN]["concurrency_limit"] == 1 and served[RETRAIN].concurrency_limit == 1
    # the GPU copy: same flow, the GPU worker's pool, its schedule off until switched on
    gpu = declared[f"{RETRAIN}-gpu"]
    assert gpu["entrypoint"] == declared[RETRAIN]["entrypoint"] and gpu["work_pool"]["name"] == "sentiflow-gpu"
    assert gpu["schedules"][0]["active"] is False


def test_entrypoints_load_the_flows_and_forms_are_pydantic():
    from prefect.flows import load_flow_from_entrypoint

    for d in _prefect_yaml()["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert flow.name == {"weekly": "train", "weekly-gpu": "train", "on-demand": "score"}[d["name"]]
    schemas = {d.name: d._parameter_openapi_schema.model_dump() for d in runner_deployments()}
    train_defs, score_defs = schemas[RETRAIN]["definitions"], schemas[SCORE]["definitions"]
    assert {"TrainFlowConfig", "ModelParams", "TrainParams", "DataConfig"} <= set(train_defs)
    assert {"ScoreConfig", "ScoreParams"} <= set(score_defs)
    assert score_defs["ScoreConfig"]["properties"]["model"]["default"] == "models:/sentiflow@champion"
    # the pipeline's model is the deployments' default too, from TrainFlowConfig alone
    assert train_defs["TrainFlowConfig"]["properties"]["model"]["default"]["head"] == "max"
    assert train_defs["TrainFlowConfig"]["properties"]["train"]["default"]["pretrained"] == "glove-6b-50d"
    # nothing in a form is read from the environment when the flows are imported
    for defs in (train_defs["DataConfig"], score_defs["ScoreConfig"]):
        assert defs["properties"]["source"].get("default") is None


def test_deployments_take_no_settings_as_parameters():
    """Settings hold the tracking URI, which may carry credentials: flow-run parameters (stored
    and shown by the Prefect API) never include them; a deployment's run reads its settings from
    the worker's environment when it starts (sentiflow.flows.runs)."""
    for d in runner_deployments():
        params = set(d._parameter_openapi_schema.model_dump()["properties"])
        assert params <= {"config", "data_root", "force", "workers"}, params


def test_pull_step_sets_the_project_folder():
    (step,) = _prefect_yaml()["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $SENTIFLOW_PROJECT_DIR }}"


def test_ui_with_a_tracking_server_prints_its_address(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 0 and "http://mlflow.example:5000" in result.output


def test_ui_without_a_store_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["ui", "--data-root", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "no MLflow store" in result.output and "Traceback" not in result.output


@pytest.mark.server
def test_ui_serves_the_embedded_store(tmp_path):
    import mlflow

    root = tmp_path / "data"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("sentiflow")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sentiflow.flows.cli", "ui", "--data-root", str(root), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                                            "?experiment_name=sentiflow", timeout=2) as r:
                    assert b'"name": "sentiflow"' in r.read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
