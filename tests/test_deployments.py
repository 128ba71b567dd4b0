"""The deployments: prefect.yaml and ``sentiflow serve`` declare the same two (prefect-gpu.yaml
the GPU copy of the training), their entrypoints load, their parameters are the flows' pydantic
forms, which refuse unknown keys; a served deployment trains a preset asked for in its run's
parameters; ``sentiflow ui`` on the embedded store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sentiflow.flows.cli import app
from sentiflow.flows.deployments import RETRAIN, RETRAIN_CRON, SCORE, SWEEP, runner_deployments
from tests.conftest import stop_group, write_imdb_folder
from tests.servers import NO_JOBS

ROOT = Path(__file__).resolve().parents[1]


def _prefect_yaml(name: str = "prefect.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_prefect_yaml_matches_the_served_deployments():
    declared = {d["name"]: d for d in _prefect_yaml()["deployments"]}
    served = {d.name: d for d in runner_deployments()}
    # `prefect deploy --all` deploys these three alone: the GPU copy is in its own file
    assert set(served) == {RETRAIN, SCORE, SWEEP} and set(declared) == {RETRAIN, SCORE, SWEEP}
    for name in served:
        d = declared[name]
        assert d["entrypoint"].split(":")[0] == served[name].entrypoint.split(":")[0].lstrip("./"), name
        assert d["work_pool"]["name"] == "sentiflow"
    crons = {name: [s["cron"] for s in d.get("schedules") or []] for name, d in declared.items()}
    assert crons == {RETRAIN: [RETRAIN_CRON], SCORE: [], SWEEP: []}
    assert declared[RETRAIN]["schedules"][0]["timezone"] == "UTC"
    assert [s.schedule.cron for s in served[RETRAIN].schedules] == [RETRAIN_CRON]
    assert not served[SCORE].schedules and not served[SWEEP].schedules
    # one training at a time: two runs of one key would share one MLflow run; one sweep at a time
    for name in (RETRAIN, SWEEP):
        assert declared[name]["concurrency_limit"] == 1 and served[name].concurrency_limit == 1, name


def test_the_gpu_deploy_file_is_the_weekly_training_on_the_gpu_pool():
    """prefect-gpu.yaml: the same flow, schedule and pull step as train/weekly, the GPU worker's
    pool, its schedule off until switched on."""
    cpu, gpu_file = _prefect_yaml(), _prefect_yaml("prefect-gpu.yaml")
    (gpu,) = gpu_file["deployments"]
    weekly = next(d for d in cpu["deployments"] if d["name"] == RETRAIN)
    assert gpu["name"] == f"{RETRAIN}-gpu" and gpu["work_pool"]["name"] == "sentiflow-gpu"
    assert gpu["entrypoint"] == weekly["entrypoint"] and gpu["concurrency_limit"] == 1
    assert [s["cron"] for s in gpu["schedules"]] == [RETRAIN_CRON] and gpu["schedules"][0]["active"] is False
    assert gpu_file["pull"] == cpu["pull"] and gpu_file["prefect-version"] == cpu["prefect-version"]


def test_entrypoints_load_the_flows_and_forms_are_pydantic():
    from prefect.flows import load_flow_from_entrypoint

    for d in _prefect_yaml()["deployments"] + _prefect_yaml("prefect-gpu.yaml")["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert flow.name == {"weekly": "train", "weekly-gpu": "train", "on-demand": "score",
                             "search": "sweep"}[d["name"]]
    schemas = {d.name: d._parameter_openapi_schema.model_dump() for d in runner_deployments()}
    train_defs, score_defs = schemas[RETRAIN]["definitions"], schemas[SCORE]["definitions"]
    assert {"TrainFlowConfig", "ModelParams", "TrainParams", "DataConfig"} <= set(train_defs)
    assert {"ScoreConfig", "ScoreParams"} <= set(score_defs)
    sweep_defs = schemas[SWEEP]["definitions"]
    assert {"SweepConfig", "TrainFlowConfig"} <= set(sweep_defs)
    assert sweep_defs["SweepConfig"]["properties"]["parallel"]["default"] == 1
    assert score_defs["ScoreConfig"]["properties"]["model"]["default"] == "models:/sentiflow@champion"
    # the pipeline's model is the deployments' default too: the models' own defaults
    assert train_defs["TrainFlowConfig"]["properties"]["model"]["default"]["head"] == "max"
    assert train_defs["TrainFlowConfig"]["properties"]["train"]["default"]["pretrained"] == "glove-6b-50d"
    # the preset is a field of the form: a choice of the presets' names
    (choice, _none) = train_defs["TrainFlowConfig"]["properties"]["preset"]["anyOf"]
    assert choice["enum"] == ["fast", "default", "best", "rnn", "seed"]
    # every form and every model in it refuses unknown keys: a Prefect server refuses such a run
    for defs in (train_defs, score_defs, sweep_defs):
        assert {name: d.get("additionalProperties") for name, d in defs.items()} == dict.fromkeys(defs, False)
    # nothing in a form is read from the environment when the flows are imported
    for defs in (train_defs["DataConfig"], score_defs["ScoreConfig"]):
        assert defs["properties"]["source"].get("default") is None


@contextmanager
def _serving(env: dict[str, str], log: Path):
    """``sentiflow serve`` (no schedule) in its own process group, stopped with SIGINT, then
    SIGKILL if it lingers (it does: it ignored SIGINT for 20 s)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sentiflow.flows.cli", "serve", "--cron", ""], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def _prefect(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "prefect"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)


def _final_state(client, flow_run_id: str, log: Path, timeout: float = 480):
    deadline = time.monotonic() + timeout
    while True:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and state.is_final():
            return state
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)


@pytest.mark.slow
def test_a_served_deployment_trains_a_preset_and_refuses_an_unknown_key(prefect_harness, tmp_path):
    """As a Prefect user would: ``sentiflow serve`` serves the deployments and ``prefect deployment
    run train/weekly -p 'config=...'`` asks for runs. An unknown key is refused when the run is
    created (the server checks the form's schema), so nothing runs; ``{"preset": "best"}`` trains
    best's options, the small model's values given beside it winning (the run's MLflow params and
    tag say so); a run the server was told not to check fails as it starts, with the flow's line
    naming the key and the nearest one."""
    from mlflow.tracking import MlflowClient
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    src = write_imdb_folder(tmp_path / "src", n_train=120, n_test=40, seed=8)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"), "SENTIFLOW_SOURCE": str(src), "SENTIFLOW_WORKERS": "1"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    small = {"model": {"embed_dim": 8, "hidden_dim": 8, "ngram_buckets": 4096},
             "train": {"max_epochs": 1, "pretrained": "none", "ngram_epochs": 1}}
    with _serving(env, log), get_client(sync_client=True) as client:
        deadline = time.monotonic() + 180
        while not [d for d in client.read_deployments() if d.name == RETRAIN]:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        deployment = client.read_deployment_by_name(f"train/{RETRAIN}")

        refused = _prefect(["deployment", "run", f"train/{RETRAIN}", "-p", 'config={"max_epoch": 3}'], env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "'max_epoch' was unexpected" in refused.stdout + refused.stderr
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        mine = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        assert not client.read_flow_runs(deployment_filter=mine)  # nothing created

        created = _prefect(["deployment", "run", f"train/{RETRAIN}", "-p",
                            "config=" + json.dumps({"preset": "best", **small})], env)
        assert created.returncode == 0, created.stdout + created.stderr
        flow_run_id = re.search(r"UUID: (\S+)", created.stdout).group(1)
        state = _final_state(client, flow_run_id, log)
        assert state.is_completed(), f"{state.message}\n{log.read_text()[-3000:]}"

        request = urllib.request.Request(
            f"{api}/deployments/{deployment.id}/create_flow_run", method="POST",
            data=json.dumps({"parameters": {"config": {"max_epoch": 3}}, "enforce_parameter_schema": False}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            unchecked = json.loads(r.read())["id"]
        state = _final_state(client, unchecked, log)
        assert state.is_failed(), state
        assert "unknown key 'max_epoch' (did you mean 'train.max_epochs'?)" in state.message

    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("sentiflow").experiment_id])
    # best's own value (the default is one direction), and the value given beside it over best's 5 epochs
    assert run.data.params["model.bidirectional"] == "True" and run.data.tags["sentiflow.preset"] == "best"
    assert (run.data.params["train.max_epochs"], run.data.params["model.ngrams"]) == ("1", "3")  # and the default's term
    assert (run.data.params["model.embed_dim"], run.data.params["train.pretrained"]) == ("8", "None")


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
                            env={**os.environ, **NO_JOBS}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
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
        stop_group(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
