"""Server mode: a real ``mlflow server`` and a real ``prefect server`` on loopback, both on a real
PostgreSQL (a temporary cluster, tests/postgres.py), MLflow serving the artifacts. ``sentiflow
train`` and ``sentiflow score`` run against them as a user would (``PREFECT_API_URL``,
``MLFLOW_TRACKING_URI``); ``sentiflow serve`` runs a triggered score deployment; then the
deployments of ``prefect.yaml`` go to a process work pool, where two real ``prefect worker``
processes run a scheduled training and a score run at the same time. Checked through the servers'
REST APIs: the runs, the model versions and their aliases, artifacts in the server's artifact
store (nothing under the local data root), the flow runs' states."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import write_imdb_folder
from tests.postgres import bindir, postgres_cluster
from tests.servers import (
    BIN,
    ROOT,
    base_env,
    flow_runs,
    free_port,
    get,
    post,
    process,
    run_ok,
    wait_final,
    wait_healthy,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL on loopback: a temporary cluster with the databases mlflow and prefect."""
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl); `make postgres-tool` installs Debian's")
    with postgres_cluster(("mlflow", "prefect")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def servers(tmp_path_factory, postgres):
    tmp = tmp_path_factory.mktemp("servers")
    base = base_env()
    mlflow_port, prefect_port = free_port(), free_port()
    # The store URI in the environment (as docker-compose.yml does), not on the command line.
    # No GenAI job runner (its consumer processes take over 1 GB), as in docker-compose.yml.
    mlflow_env = {**base, "MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow", "psycopg"),
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                  "--workers", "1", "--artifacts-destination", (tmp / "artifact-store").as_uri(), "--serve-artifacts"]
    prefect_env = {**base, "PREFECT_HOME": str(tmp / "prefect-server-home"), "PREFECT_UI_ENABLED": "false",
                   "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", "asyncpg"),
                   # the scheduler looks for deployments to schedule every 2 s (default 60 s)
                   "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    # both start at once (each creates its tables in its database), then both must answer
    with process(mlflow_cmd, mlflow_env, tmp / "mlflow.log") as mlflow_server, \
            process(prefect_cmd, prefect_env, tmp / "prefect.log") as prefect_server:
        wait_healthy(mlflow_server, tmp / "mlflow.log", f"http://127.0.0.1:{mlflow_port}/health", 180)
        wait_healthy(prefect_server, tmp / "prefect.log", f"http://127.0.0.1:{prefect_port}/api/health", 180)
        client_env = {**base, "PREFECT_HOME": str(tmp / "client-home"),
                      "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                      "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                      "SENTIFLOW_DATA_ROOT": str(tmp / "data"),
                      # a deployment's runs may read the sources and write predictions here only
                      "SENTIFLOW_PATH_ROOTS": json.dumps([str(tmp / "src"), str(tmp / "out")])}
        yield {"tmp": tmp, "env": client_env, "mlflow": f"http://127.0.0.1:{mlflow_port}",
               "prefect": f"http://127.0.0.1:{prefect_port}/api", "artifact_store": tmp / "artifact-store",
               "postgres": postgres}


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    r = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"sentiflow {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _sql(url: str, query: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def trained(servers) -> Path:
    """The source folder, and version 1 of the model (the champion) trained on it through the
    servers with ``sentiflow train``: once for the module, whichever of its tests runs first."""
    src = write_imdb_folder(servers["tmp"] / "src", n_train=240, n_test=60, seed=5)
    _cli(["train", "--source", str(src), "--max-epochs", "2", "--pretrained", "none", "--embed-dim", "16", "--hidden-dim", "16",
          "--batch-size", "16", "--workers", "1"], servers["env"])
    return src


def test_train_and_score_against_servers(servers, trained):
    tmp, env, mlflow_url, src = servers["tmp"], servers["env"], servers["mlflow"], trained
    out = tmp / "predictions.parquet"
    _cli(["score", "--source", str(src), "--out", str(out), "--workers", "1"], env)
    assert pq.read_metadata(out).num_rows == 60

    api = f"{mlflow_url}/api/2.0/mlflow"
    champion = get(f"{api}/registered-models/alias?name=sentiflow&alias=champion")["model_version"]
    assert champion["version"] == "1"
    run = get(f"{api}/runs/get?run_id={champion['run_id']}")["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # the server's store
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"val_acc", "train_loss", "test_acc"} <= metrics
    # the model's files and the checkpoints went to the server's artifact store, not the data root
    assert list(servers["artifact_store"].rglob("MLmodel")) and list(servers["artifact_store"].rglob("epoch-*.pt"))
    data_root = Path(env["SENTIFLOW_DATA_ROOT"])
    assert not (data_root / "mlflow.db").exists() and not (data_root / "mlartifacts").exists()

    exp = get(f"{api}/experiments/get-by-name?experiment_name=sentiflow")["experiment"]
    evals = post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                         "filter": "tags.`sentiflow.kind` = 'evaluation'"})["runs"]
    assert len(evals) == 1
    tags = {t["key"]: t["value"] for t in evals[0]["data"]["tags"]}
    assert tags["sentiflow.model_version"] == "1" and tags["sentiflow.model_uri"] == "models:/sentiflow/1"
    assert {m["key"] for m in evals[0]["data"]["metrics"]} >= {"accuracy", "precision", "recall", "f1"}

    for flow_name in ("train", "score"):
        runs = flow_runs(servers["prefect"], flow_name)
        assert runs and all(r["state"]["type"] == "COMPLETED" for r in runs), flow_name

    # both servers keep their state in PostgreSQL: the rows are there, read with a driver
    pg = servers["postgres"]
    assert _sql(pg.url("mlflow"), "SELECT status FROM runs WHERE run_uuid = %s", champion["run_id"]) == [("FINISHED",)]
    assert _sql(pg.url("mlflow"), "SELECT version FROM model_versions WHERE name = 'sentiflow'") == [(1,)]
    flow_run_ids = {r["id"] for name in ("train", "score") for r in flow_runs(servers["prefect"], name)}
    rows = _sql(pg.url("prefect"), "SELECT id::text FROM flow_run")
    assert flow_run_ids <= {r[0] for r in rows}


def test_serve_runs_a_triggered_score_deployment(servers, trained):
    """``sentiflow serve`` registers both deployments; a run created through the API executes in
    the serving process with the form's parameters, and one whose form names a path outside the
    allowed folders fails, naming that path."""
    tmp, env, api, src = servers["tmp"], servers["env"], servers["prefect"], trained
    with process([sys.executable, "-m", "sentiflow.flows.cli", "serve", "--cron", "0 3 * * 1"], env, tmp / "serve.log"):
        deadline = time.monotonic() + 120
        while True:
            deployments = {d["name"]: d for d in post(f"{api}/deployments/filter", {})}
            if {"weekly", "on-demand"} <= set(deployments):
                break
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        weekly = deployments["weekly"]
        assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 1"]
        schema = deployments["on-demand"]["parameter_openapi_schema"]
        assert "config" in schema["properties"]  # the pydantic form

        def run_on_demand(config: dict) -> dict:
            run = post(f"{api}/deployments/{deployments['on-demand']['id']}/create_flow_run",
                        {"parameters": {"config": config, "workers": 1}})
            while True:
                state = get(f"{api}/flow_runs/{run['id']}")["state"]
                if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    return state
                assert time.monotonic() < deadline + 240, (tmp / "serve.log").read_text()[-3000:]
                time.sleep(1)

        out = tmp / "out" / "served.parquet"
        state = run_on_demand({"source": str(src / "test.parquet"), "out": str(out)})
        assert state["type"] == "COMPLETED", (tmp / "serve.log").read_text()[-3000:]
        assert pq.read_metadata(out).num_rows == 60
        # a parameter form is no way to read or write any file the worker can: each run fails on
        # its own parameter (its state's message, the run's own record, not the shared log)
        for config, refused in (({"source": "/etc/hostname"}, "source"),
                                ({"source": str(src / "test.parquet"), "out": str(tmp / "x.parquet")}, "out")):
            state = run_on_demand(config)
            assert state["type"] == "FAILED", state
            assert f"{refused} {config[refused]!r} is outside the folders a deployment's run may use" \
                in state["message"], state
        assert not (tmp / "x.parquet").exists()


def test_workers_run_a_scheduled_training_and_a_score_at_once(servers, trained):
    """``prefect.yaml``'s deployments on a process work pool served by two real ``prefect worker``
    processes (one flow run at a time each). A schedule added to train/weekly fires within seconds;
    the server's scheduler creates the run, a worker picks it up, and while it trains a score run
    created through the API goes to the other worker. Both complete; the registry stays consistent.
    The score run uses the champion of ``trained``."""
    tmp, env, api, mlflow_api = servers["tmp"], servers["env"], servers["prefect"], f"{servers['mlflow']}/api/2.0/mlflow"
    src = trained
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    # a worker runs flows from this checkout (prefect.yaml's pull step); it polls every second
    worker_env = {**env, "SENTIFLOW_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    prefect = str(BIN / "prefect")
    run_ok([prefect, "work-pool", "create", pool, "--type", "process"], worker_env)
    logs = {name: tmp / f"{name}.log" for name in ("worker-a", "worker-b")}
    with process([prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", "worker-a",
                   "--limit", "1"], worker_env, logs["worker-a"]), \
            process([prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", "worker-b",
                      "--limit", "1"], worker_env, logs["worker-b"]):
        run_ok([prefect, "--no-prompt", "deploy", "--name", "weekly", "--name", "on-demand"], worker_env)
        deployments = {d["name"]: d for d in post(f"{api}/deployments/filter", {})}
        weekly, on_demand = deployments["weekly"], deployments["on-demand"]
        assert weekly["work_pool_name"] == pool and on_demand["work_pool_name"] == pool
        assert weekly["entrypoint"] == "flows/train_flow.py:train_flow"
        assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 1"]  # as declared

        # a second schedule of train/weekly that fires in seconds, with a tiny training as its
        # parameters (another seed than ``trained``'s: a new training key)
        config = {"data": {"source": str(src)}, "model": {"embed_dim": 16, "hidden_dim": 16, "head": "last+max"},
                  "train": {"max_epochs": 2, "batch_size": 16, "seed": 7, "pretrained": "none"}}
        anchor = datetime.now(timezone.utc) + timedelta(seconds=3)
        post(f"{api}/deployments/{weekly['id']}/schedules", [{
            "schedule": {"interval": 3600, "anchor_date": anchor.isoformat(), "timezone": "UTC"},
            "active": True, "max_scheduled_runs": 1, "parameters": {"config": config, "workers": 1}}])

        # the scheduler creates the run; a worker claims it
        deadline = time.monotonic() + 180
        while True:
            claimed = post(f"{api}/flow_runs/filter", {"flow_runs": {
                "deployment_id": {"any_": [weekly["id"]]},
                "state": {"type": {"any_": ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED"]}}}})
            if claimed:
                break
            assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs.values())
            time.sleep(0.5)
        (train_run,) = claimed
        # while it trains: a score run through the API; the busy worker leaves it to the other one
        out = tmp / "out" / "worker-scored.parquet"
        score_run = post(f"{api}/deployments/{on_demand['id']}/create_flow_run", {
            "parameters": {"config": {"source": str(src / "test.parquet"), "out": str(out)}, "workers": 1}})

        deadline = time.monotonic() + 420
        train_run = wait_final(api, train_run["id"], deadline, list(logs.values()))
        score_run = wait_final(api, score_run["id"], deadline, list(logs.values()))
        worker_logs = {name: path.read_text() for name, path in logs.items()}
    for run in (train_run, score_run):
        assert run["state"]["type"] == "COMPLETED", (run["state"], *(t[-3000:] for t in worker_logs.values()))

    # the training was the schedule's run, with the schedule's parameters, on the pool's worker
    assert train_run["auto_scheduled"] and train_run["deployment_id"] == weekly["id"]
    assert train_run["parameters"]["config"]["train"]["seed"] == 7
    expected = datetime.fromisoformat(train_run["expected_start_time"].replace("Z", "+00:00"))
    assert abs((expected - anchor).total_seconds()) < 1
    assert train_run["work_pool_name"] == pool == score_run["work_pool_name"]
    # each on its own worker (the worker that takes a run labels it) ...
    ran_on = {r["labels"].get("prefect.worker.name") for r in (train_run, score_run)}
    assert ran_on == {"worker-a", "worker-b"}, [r["labels"] for r in (train_run, score_run)]
    # ... at the same time
    when = {r["id"]: [datetime.fromisoformat(r[k].replace("Z", "+00:00")) for k in ("start_time", "end_time")]
            for r in (train_run, score_run)}
    (t0, t1), (s0, s1) = when[train_run["id"]], when[score_run["id"]]
    assert s0 < t1 and t0 < s1, when
    assert pq.read_metadata(out).num_rows == 60

    # the registry: one version per training, each from a finished run, aliases on existing versions
    versions = get(f"{mlflow_api}/model-versions/search?"
                    + urllib.parse.urlencode({"filter": "name = 'sentiflow'"}))["model_versions"]
    assert sorted(v["version"] for v in versions) == ["1", "2"]
    assert all(v["status"] == "READY" for v in versions)
    assert len({v["run_id"] for v in versions}) == 2
    runs = {v["run_id"]: get(f"{mlflow_api}/runs/get?run_id={v['run_id']}")["run"] for v in versions}
    assert all(r["info"]["status"] == "FINISHED" for r in runs.values())
    model = get(f"{mlflow_api}/registered-models/get?name=sentiflow")["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert "champion" in aliases and set(aliases.values()) <= {"1", "2"}, aliases
    champion = next(v for v in versions if v["version"] == aliases["champion"])
    assert {t["key"]: t["value"] for t in champion.get("tags", [])}["alias"] == "champion"
    assert runs[champion["run_id"]]["info"]["status"] == "FINISHED"
    # version 2 came from the scheduled training: the worker's run, its seed
    v2 = next(v for v in versions if v["version"] == "2")
    assert {p["key"]: p["value"] for p in runs[v2["run_id"]]["data"]["params"]}["train.seed"] == "7"
    # every training recorded once per key; every evaluation against an existing version
    exp = get(f"{mlflow_api}/experiments/get-by-name?experiment_name=sentiflow")["experiment"]
    all_runs = post(f"{mlflow_api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in all_runs]
    keys = Counter(t["sentiflow.train_key"] for t in tags if "sentiflow.train_key" in t)
    assert len(keys) == 2 and set(keys.values()) == {1}, keys
    evaluated = {t["sentiflow.model_version"] for t in tags if t.get("sentiflow.kind") == "evaluation"}
    assert evaluated and evaluated <= {"1", "2"}
    # and the same in PostgreSQL
    assert _sql(servers["postgres"].url("mlflow"), "SELECT version FROM model_versions WHERE name = 'sentiflow' "
                                                   "ORDER BY version") == [(1,), (2,)]
