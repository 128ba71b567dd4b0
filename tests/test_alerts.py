"""``sentiflow alerts`` against a real ``prefect server start`` (SQLite, loopback): its automations
send through a real notification block (Prefect's custom webhook) to an HTTP receiver on loopback,
and mark a silent run Crashed. One POST per case, read as the receiver got it:

* ``sentiflow train`` promoting its version, then a second training the gate keeps out: the
  champion decision with both accuracies, checked against the versions' tags in MLflow;
* ``sentiflow score`` of reviews in made-up words: the drift warning, its PSI as MLflow logged it;
* a deployment run that raises (``prefect.yaml``'s ``score/on-demand`` of a source that does not
  exist, on a real ``prefect worker``): Failed, with the state's message;
* a worker's flow process killed with SIGKILL: the worker reports it Crashed;
* a run whose flow process and worker are both SIGKILLed: nobody reports it, its heartbeats stop,
  and the silent-run automation sets it Crashed (which notifies as a crash).

Each notification names the flow run and links to its page. ``create`` twice makes no duplicates;
``list`` shows the automations; ``remove`` removes them and the blocks. Workers and commands run
with ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30`` (Prefect's minimum), as docs/alerts.md says.

To stay short, the cases run at once: after the first training (every case but the failing score
needs its champion, the kills need nothing) the second training, the scoring, and the three worker
runs all start, and each test waits for its own.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_reviews, stop_group, write_imdb_folder
from tests.servers import (
    BIN,
    ROOT,
    base_env,
    get,
    post,
    prefect_server,
    process,
    run_ok,
    wait_final,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

SILENT_AFTER = 45  # seconds: above the 30 s heartbeat with room for a loaded machine, small for a test
# two epochs at a high rate: the two versions' accuracies differ (0.51 or 0.61, and 0.72 on the test
# split here), so the notification's two accuracies are seen in their places
TRAIN = ["train", "--preset", "fast", "--max-epochs", "2", "--lr", "0.02", "--embed-dim", "8", "--hidden-dim", "8",
         "--workers", "1"]
# a training that goes on for minutes (200 epochs, each logged): killed long before it ends
LONG_TRAINING = {"preset": "fast", "model": {"embed_dim": 8, "hidden_dim": 8}, "train": {"max_epochs": 200}}


class Receiver:
    """An HTTP server on loopback that keeps every POST's JSON body."""

    def __init__(self) -> None:
        bodies: list[dict] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def about(self, run_id: str) -> list[dict]:
        """The POSTs whose body links to flow run ``run_id``."""
        return [b for b in self.bodies if f"/runs/flow-run/{run_id}" in b["body"]]

    def wait_for(self, run_id: str, logs: tuple[Path, ...] = (), timeout: float = 60) -> dict:
        """The one POST about ``run_id`` (a second one fails here, or in the last test)."""
        deadline = time.monotonic() + timeout
        while not self.about(run_id):
            assert time.monotonic() < deadline, (f"no POST about flow run {run_id} in {timeout} s; got "
                                                 f"{self.bodies}\n" + "\n".join(p.read_text()[-3000:] for p in logs))
            time.sleep(0.5)
        (body,) = self.about(run_id)
        return body


class Background(threading.Thread):
    """``target()`` in a thread; ``result()`` joins it and returns its value or raises its error."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn, self._value, self._error = target, None, None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._target_fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._error = e

    def result(self, timeout: float = 300) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "still running"
        if self._error is not None:
            raise self._error
        return self._value


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``sentiflow args`` in the background, its output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([str(BIN / "sentiflow"), *args], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def finished(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    assert proc.wait(timeout) == 0, log.read_text()[-3000:]
    return log.read_text()


def runs_of(api: str, flow: str, **where: Any) -> list[dict]:
    return post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "flow_runs": where})


def cli_run(api: str, flow: str, known: set[str] = frozenset()) -> dict:
    """The one run of ``flow`` started from the command line (no deployment) not in ``known``."""
    (run,) = [r for r in runs_of(api, flow, deployment_id={"is_null_": True}) if r["id"] not in known]
    return run


def heartbeats(api: str, run_id: str) -> list[dict]:
    return post(f"{api}/events/filter", {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                                                    "resource": {"id": [f"prefect.flow-run.{run_id}"]}}})["events"]


def kill_when_running(api: str, run_id: str, logs: list[Path], worker: subprocess.Popen | None = None) -> float:
    """Once the run is Running on its worker and its first heartbeat reached the server: SIGKILL its
    flow process (``infrastructure_pid``, ``host:pid``), and ``worker`` too when given. Returns when."""
    deadline = time.monotonic() + 180
    while True:
        run = get(f"{api}/flow_runs/{run_id}")
        if run["state"]["type"] == "RUNNING" and run.get("infrastructure_pid") and heartbeats(api, run_id):
            break
        assert run["state"]["type"] in ("SCHEDULED", "PENDING", "RUNNING"), run["state"]
        assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs)
        time.sleep(0.3)
    os.kill(int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1]), signal.SIGKILL)
    if worker is not None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    return time.monotonic()


def made_up_reviews(path: Path) -> Path:
    """250 reviews (drift needs 200 at least) in words no vocabulary holds: the OOV PSI fires."""
    rng = random.Random(3)
    like = make_reviews(250, seed=77).column("text").to_pylist()
    texts = [" ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(7)) for _ in t.split()) for t in like]
    pq.write_table(pa.table({"id": [f"x{i}" for i in range(len(texts))], "text": texts}), path)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    """A Prefect server and sentiflow's alerts on it pointing at a receiver (``sentiflow alerts
    create``, as a user runs it); the environment the commands and workers run with."""
    tmp = tmp_path_factory.mktemp("alerts")
    receiver = Receiver()
    src = write_imdb_folder(tmp / "src", n_train=200, n_test=100)
    with prefect_server(tmp) as api:
        env = {**base_env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "client-home"),
               "SENTIFLOW_DATA_ROOT": str(tmp / "data"), "SENTIFLOW_SOURCE": str(src),
               "SENTIFLOW_PATH_ROOTS": json.dumps([str(src)]), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
               "SENTIFLOW_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        out = run_ok([str(BIN / "sentiflow"), "alerts", "create", "--webhook", receiver.url,
                      "--silent-after", str(SILENT_AFTER)], env)
        assert "created: sentiflow: silent run crashed" in out, out
        try:
            yield {"tmp": tmp, "api": api, "env": env, "src": src, "receiver": receiver}
        finally:
            receiver.server.shutdown()
            (tmp / "posts.json").write_text(json.dumps(receiver.bodies, indent=1))  # for a look after a failure


@pytest.fixture(scope="module")
def cases(stack) -> Iterator[dict]:
    """Every case, started: the first training, while the work pool is set up (``prefect.yaml``'s
    score/on-demand, and a deployment of the train flow on two queues, without train/weekly's
    concurrency limit) and two workers start; the two runs to be killed (one on each worker's
    queue, each killed by a thread); then, once the first training has its champion, the second
    training, the drifting scoring and the score run that raises."""
    tmp, api, env = stack["tmp"], stack["api"], stack["env"]
    prefect = str(BIN / "prefect")
    logs = {k: tmp / f"{k}.log" for k in ("promoted", "kept", "drift", "worker", "worker-z")}
    procs = {"promoted": start(TRAIN, env, logs["promoted"])}
    with ExitStack() as stack_of:
        run_ok([prefect, "work-pool", "create", "sentiflow", "--type", "process"], env)
        run_ok([prefect, "--no-prompt", "deploy", "--name", "on-demand"], env)
        post(f"{api}/work_pools/sentiflow/queues", {"name": "silent"})
        flow_id = post(f"{api}/flows/", {"name": "train"})["id"]
        long = post(f"{api}/deployments/", {
            "name": "long", "flow_id": flow_id, "entrypoint": "flows/train_flow.py:train_flow",
            "work_pool_name": "sentiflow", "work_queue_name": "default",
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]})["id"]
        worker = stack_of.enter_context(process(
            [prefect, "worker", "start", "--pool", "sentiflow", "--work-queue", "default", "--name", "worker-a",
             "--limit", "2"], env, logs["worker"]))
        worker_z = stack_of.enter_context(process(
            [prefect, "worker", "start", "--pool", "sentiflow", "--work-queue", "silent", "--name", "worker-z",
             "--limit", "1"], env, logs["worker-z"]))

        def create_run(deployment: str, parameters: dict, **more: Any) -> str:
            return post(f"{api}/deployments/{deployment}/create_flow_run", {"parameters": parameters, **more})["id"]

        # each on a data root of its own: a later sentiflow run on the same data root and host would
        # find the dead process in the run journal and mark the run Crashed first (flows/reaper.py)
        killed = create_run(long, {"config": LONG_TRAINING},
                            job_variables={"env": {"SENTIFLOW_DATA_ROOT": str(tmp / "data-killed")}})
        silent = create_run(long, {"config": LONG_TRAINING}, work_queue_name="silent",
                            job_variables={"env": {"SENTIFLOW_DATA_ROOT": str(tmp / "data-silent")}})
        killers = {"killed": Background(lambda: kill_when_running(api, killed, [logs["worker"]])),
                   "silent": Background(lambda: kill_when_running(api, silent, [logs["worker-z"]], worker_z))}

        out = finished(procs["promoted"], logs["promoted"])
        assert "registered sentiflow version 1 as @champion" in out, out
        promoted = cli_run(api, "train")
        procs["kept"] = start([*TRAIN, "--train-seed", "2", "--gate-margin", "0.99"], env, logs["kept"])
        drifting = made_up_reviews(tmp / "made-up.parquet")
        procs["drift"] = start(["score", "--source", str(drifting)], env, logs["drift"])
        on_demand = next(d["id"] for d in post(f"{api}/deployments/filter", {}) if d["name"] == "on-demand")
        failing = create_run(on_demand, {"config": {"source": str(stack["src"] / "no-such-file.parquet")},
                                         "workers": 1})
        try:
            yield {"logs": logs, "procs": procs, "promoted": promoted, "failing": failing, "killed": killed,
                   "silent": silent, "killers": killers, "drifting": drifting, "worker": worker}
        finally:
            for proc in procs.values():
                stop_group(proc)


def version_tags(env: dict[str, str], version: str) -> dict[str, str]:
    """A registered version's tags, read from MLflow (the gate's figures are there)."""
    from mlflow.tracking import MlflowClient

    from sentiflow.storage.settings import Settings

    uri = Settings.load(data_root=env["SENTIFLOW_DATA_ROOT"]).resolved_tracking_uri
    return MlflowClient(uri).get_model_version("sentiflow", version).tags


def acc(x: str) -> str:
    return "none" if not x else f"{float(x):.4f}"


def in_process(api: str | None, args: list[str]) -> Any:
    """``sentiflow args`` run in this process against ``api`` (None: no server configured)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from sentiflow.flows.cli import app

    settings = temporary_settings(updates={PREFECT_API_URL: api}) if api else \
        temporary_settings(restore_defaults={PREFECT_API_URL})
    with settings:
        return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def automations(api: str) -> list[dict]:
    return [a for a in post(f"{api}/automations/filter", {}) if a["name"].startswith("sentiflow: ")]


def blocks(api: str) -> list[dict]:
    return [b for b in post(f"{api}/block_documents/filter", {}) if (b.get("name") or "").startswith("sentiflow-")]


# -- the commands ---------------------------------------------------------------------------------

def test_alerts_need_a_server():
    result = in_process(None, ["alerts", "list"])
    assert result.exit_code == 2, result.output
    assert "alerts need a Prefect server: set PREFECT_API_URL" in result.output


def test_create_again_replaces_and_list_shows_them(stack):
    api = stack["api"]
    before = {a["name"]: a["id"] for a in automations(api)}
    assert set(before) == {"sentiflow: train or score run failed", "sentiflow: champion promoted",
                           "sentiflow: champion kept", "sentiflow: drift warning", "sentiflow: silent run crashed"}
    again = in_process(api, ["alerts", "create", "--webhook", stack["receiver"].url,
                             "--silent-after", str(SILENT_AFTER)])
    assert again.exit_code == 0 and again.output.count("updated: ") == 5 and "created: " not in again.output, \
        again.output
    assert {a["name"]: a["id"] for a in automations(api)} == before  # the same five, updated in place
    assert [b["name"] for b in blocks(api)] == ["sentiflow-webhook"]
    silent = next(a for a in automations(api) if a["name"] == "sentiflow: silent run crashed")
    assert silent["trigger"]["posture"] == "Proactive" and silent["trigger"]["within"] == SILENT_AFTER
    assert [(a["type"], a["state"]) for a in silent["actions"]] == [("change-flow-run-state", "CRASHED")]

    listed = in_process(api, ["alerts", "list"])
    assert listed.exit_code == 0, listed.output
    for name in before:
        assert name in listed.output, listed.output
    assert "notify sentiflow-webhook" in listed.output and "set CRASHED" in listed.output
    assert f"for {SILENT_AFTER} s" in listed.output
    refused = in_process(api, ["alerts", "create", "--silent-after", "30"])
    assert refused.exit_code == 2 and "must exceed the heartbeat interval" in refused.output


def test_an_event_that_cannot_be_sent_never_fails_the_run(stack):
    """An event Prefect refuses (over its 1.5 MB limit: 100,000 metrics): a warning, no error."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sentiflow.flows.events import emit_drift

    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # the logger's own handlers may not propagate: listen on it
    logger = logging.getLogger("sentiflow.events")
    logger.addHandler(handler)
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
            emit_drift("reviews.parquet", "models:/sentiflow/1", ["length"],
                       {f"metric_{i}": float(i) for i in range(100_000)} | {"drift_oov_psi": float("nan")})
            EventsWorker.drain_all()  # its connection ends while the server is up (not at this process's exit)
    finally:
        logger.removeHandler(handler)
    (warning,) = warnings
    assert warning.getMessage().startswith("could not emit the Prefect event sentiflow.scoring.drift: Event is too "
                                           "large"), warning.getMessage()


# -- the champion: promoted, then kept ------------------------------------------------------------

def test_promotion_notifies_with_both_accuracies(stack, cases):
    run = cases["promoted"]
    body = stack["receiver"].wait_for(run["id"], (cases["logs"]["promoted"],))
    tags = version_tags(stack["env"], "1")
    assert body["name"] == "sentiflow"
    assert body["subject"] == "sentiflow: sentiflow version 1 promoted to champion"
    text = body["body"]
    assert f"Flow run: {run['name']} " in text
    assert f"Challenger accuracy {acc(tags['gate.challenger_acc'])}, champion accuracy none" in text
    assert tags["gate.reason"] == "no champion yet" and f"Reason: {tags['gate.reason']}" in text
    assert f"validation accuracy {acc(tags['val_acc'])}, test accuracy {acc(tags['test_acc'])}" in text


def test_a_kept_champion_notifies_with_both_accuracies(stack, cases):
    api, env = stack["api"], stack["env"]
    out = finished(cases["procs"]["kept"], cases["logs"]["kept"])
    assert "version 2" in out, out
    run = cli_run(api, "train", {cases["promoted"]["id"]})
    body = stack["receiver"].wait_for(run["id"])
    tags = version_tags(env, "2")
    assert tags["alias"] == "challenger" and tags["gate.champion_version"] == "1"
    # both were scored on the new run's test split, which is version 1's too: each its test_acc
    assert float(tags["gate.champion_acc"]) == pytest.approx(float(version_tags(env, "1")["test_acc"]))
    assert float(tags["gate.challenger_acc"]) == pytest.approx(float(tags["test_acc"]))
    assert body["subject"] == "sentiflow: sentiflow champion version 1 kept"
    text = body["body"]
    assert "the new version 2 is challenger" in text and f"Flow run: {run['name']} " in text
    assert (f"Challenger accuracy {acc(tags['gate.challenger_acc'])}, "
            f"champion accuracy {acc(tags['gate.champion_acc'])}") in text
    assert f"Reason: {tags['gate.reason']}" in text


# -- drift ----------------------------------------------------------------------------------------

def test_drift_warning_notifies(stack, cases):
    from mlflow.tracking import MlflowClient

    from sentiflow.storage.settings import Settings

    api, env, source = stack["api"], stack["env"], cases["drifting"]
    out = finished(cases["procs"]["drift"], cases["logs"]["drift"])
    run = cli_run(api, "score")
    body = stack["receiver"].wait_for(run["id"], (cases["logs"]["drift"],))
    client = MlflowClient(Settings.load(data_root=env["SENTIFLOW_DATA_ROOT"]).resolved_tracking_uri)
    (evaluation,) = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id],
                                       "tags.`sentiflow.kind` = 'evaluation'")
    psi = evaluation.data.metrics["drift_oov_psi"]
    assert psi >= 0.25 and "OOV share PSI" in out
    assert body["subject"] == f"sentiflow: drift warning scoring {source}"
    assert f"Scoring {source} with models:/sentiflow/1" in body["body"]
    assert f"OOV PSI {psi:.4f}" in body["body"] and "Warnings: " in body["body"]
    assert f"Flow run: {run['name']} " in body["body"]


# -- runs on a worker: a failure, a killed process, a silent run -----------------------------------

def test_a_deployment_run_that_raises_notifies_failed(stack, cases):
    api, log = stack["api"], cases["logs"]["worker"]
    run = wait_final(api, cases["failing"], time.monotonic() + 240, [log])
    assert run["state"]["type"] == "FAILED", run["state"]
    assert "no-such-file.parquet" in run["state"]["message"]
    body = stack["receiver"].wait_for(run["id"], (log,))
    assert body["subject"] == f"sentiflow: score run {run['name']} Failed"
    assert "(deployment score/on-demand)" in body["body"]
    assert f"Reason: {run['state']['message']}" in body["body"]
    assert f"Flow run: {run['name']} " in body["body"]


def test_a_killed_flow_process_notifies_crashed(stack, cases):
    """SIGKILL of the flow process alone: the worker sees it die and reports it Crashed."""
    api, log = stack["api"], cases["logs"]["worker"]
    cases["killers"]["killed"].result()
    run = wait_final(api, cases["killed"], time.monotonic() + 60, [log])
    assert run["state"]["type"] == "CRASHED", run["state"]
    body = stack["receiver"].wait_for(run["id"], (log,))
    assert body["subject"] == f"sentiflow: train run {run['name']} Crashed"
    assert f"Reason: {run['state']['message']}" in body["body"] and "-9" in run["state"]["message"]


def test_a_silent_run_is_marked_crashed(stack, cases):
    """The flow process and its worker both SIGKILLed: nobody reports the run; its heartbeats stop,
    and SILENT_AFTER s after the last one the automation sets it Crashed, which notifies."""
    from datetime import datetime

    api, log = stack["api"], cases["logs"]["worker-z"]
    killed_at = cases["killers"]["silent"].result()
    run = wait_final(api, cases["silent"], killed_at + SILENT_AFTER + 60, [log])
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert f"no heartbeat for {SILENT_AFTER} s" in run["state"]["message"]
    when = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    last_beat = max(when(e["occurred"]) for e in heartbeats(api, cases["silent"]))
    silent_for = (when(run["state"]["timestamp"]) - last_beat).total_seconds()
    assert SILENT_AFTER <= silent_for < SILENT_AFTER + 30, silent_for  # the window, then the next evaluation
    body = stack["receiver"].wait_for(run["id"])
    assert body["subject"] == f"sentiflow: train run {run['name']} Crashed"
    assert f"Reason: sentiflow: no heartbeat for {SILENT_AFTER} s" in body["body"]


# -- remove ---------------------------------------------------------------------------------------

def test_remove_removes_automations_and_blocks(stack, cases):
    api, receiver = stack["api"], stack["receiver"]
    # every POST so far was about one run, no run got two: one per case
    ids = [b["body"].split("/runs/flow-run/")[1].split()[0] for b in receiver.bodies]
    assert len(ids) == len(set(ids)), [b["subject"] for b in receiver.bodies]
    removed = in_process(api, ["alerts", "remove"])
    assert removed.exit_code == 0 and removed.output.count("removed: ") == 6, removed.output
    assert automations(api) == [] and blocks(api) == []
    assert "nothing to remove" in in_process(api, ["alerts", "remove"]).output
