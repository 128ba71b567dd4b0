"""The README's "Running it for a team": its bash block, run line by line as written against a fresh
``prefect server start`` and the real ``prefect worker`` the block starts. Every deployment of
``prefect.yaml`` is created by ``prefect deploy --all``, ``train/weekly`` and ``score/on-demand``
complete through the worker, and the GPU deployment, deployed afterwards by its own documented
commands, leaves the CPU ones as they were.

The block runs in a stand-in checkout under ``tmp`` (links to this checkout's ``flows/`` and
deploy files) so that its relative paths - the worker's data root ``data/``, the predictions'
``data/predictions.parquet`` - land there and not in this checkout. Only two strings are
changed: the server's address (the test's server is on a free port) and the example webhook (a
loopback receiver, which must then receive the alert of the new champion, linking the run)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import STOP_GRACE, write_imdb_folder
from tests.servers import BIN, ROOT, base_env, flow_runs, post, prefect_server, wait_final

README = ROOT / "README.md"
MARK = "<!-- team-block"
DOCUMENTED_API = "http://127.0.0.1:4200/api"
EXAMPLE_HOOK = "https://hooks.example.com/sentiflow"
# the GPU deployment's own commands, as the README's section gives them
GPU_COMMANDS = ("prefect work-pool create sentiflow-gpu --type process --overwrite",
                "prefect --no-prompt deploy --all --prefect-file prefect-gpu.yaml")
DEPLOY_FILES = ("prefect.yaml", "prefect-gpu.yaml")


def team_section(text: str) -> str:
    start = text.index("## Running it for a team")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def team_block(text: str) -> str:
    """The fenced bash block right after the ``team-block`` marker, as written."""
    after = text[text.index(MARK):]
    m = re.match(r"<!--.*?-->\s*```bash\n(.*?)```", after, re.DOTALL)
    assert m, "no ```bash block right after the team-block marker"
    return m.group(1)


def declared(path: Path) -> dict[str, str]:
    """deployment name -> work pool, from a prefect deploy file."""
    return {d["name"]: d["work_pool"]["name"] for d in yaml.safe_load(path.read_text())["deployments"]}


def test_the_team_section_holds_one_block_of_the_commands_people_type():
    text = README.read_text()
    section = team_section(text)
    assert section.count("```bash") == 1 and MARK in section
    block = team_block(text)
    # the server's default address (replaced here only by the test server's) and the steps in order
    steps = ["export PREFECT_API_URL=" + DOCUMENTED_API, "export SENTIFLOW_PROJECT_DIR=$PWD",
             "prefect work-pool create sentiflow", "prefect worker start --pool sentiflow &",
             "prefect --no-prompt deploy --all", "sentiflow alerts create",
             "prefect deployment run train/weekly --watch", "prefect deployment run score/on-demand",
             "sentiflow status"]
    at = [block.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at))
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start" in block
    for command in GPU_COMMANDS:
        assert f"`{command}`" in section
    # docs/operations.md gives the same commands
    operations = (ROOT / "docs" / "operations.md").read_text()
    for line in (*_commands(block), *GPU_COMMANDS):
        assert line in operations, line


def test_the_cpu_deploy_file_names_no_gpu_pool():
    """``prefect deploy --all`` reads prefect.yaml: a pool it names must be the one the block
    creates, or the command stops before the deployments after it."""
    assert set(declared(ROOT / "prefect.yaml").values()) == {"sentiflow"}
    assert declared(ROOT / "prefect-gpu.yaml") == {"weekly-gpu": "sentiflow-gpu"}


def _commands(block: str) -> list[str]:
    """The block's command lines without their trailing comments."""
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


class _Receiver(BaseHTTPRequestHandler):
    posts: list[bytes] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.posts.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _checkout(tmp: Path) -> Path:
    """A folder standing in for a checkout: what the block's commands read from one."""
    checkout = tmp / "checkout"
    checkout.mkdir()
    for name in ("flows", *DEPLOY_FILES):
        (checkout / name).symlink_to(ROOT / name)
    return checkout


def _end_group(pgid: int, grace: float = STOP_GRACE) -> None:
    """End what the block left running (the worker started with ``&``) with its group: SIGTERM
    (a background job of a non-interactive shell ignores SIGINT), then SIGKILL after ``grace``
    seconds (no test looks at how the worker stops; it did not end within 30 s of SIGTERM)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def _run_script(script: str, env: dict[str, str], cwd: Path, log: Path, timeout: float) -> int:
    """``script`` with ``bash -ex`` (a failing line stops it) in its own process group; the
    group is ended afterwards, whatever it left running."""
    with open(log, "a") as out:
        # bash takes PS4 from the script only: each traced line with its time
        proc = subprocess.Popen(["bash", "-exc", "PS4='+ $(date +%T) '\n" + script], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return -1
    finally:
        _end_group(proc.pid)


def _posted(text: str, timeout: float = 60) -> list[dict]:
    """The webhook's JSON bodies that contain ``text``, waiting for one (automations act on events
    a moment after them)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(b) for b in list(_Receiver.posts) if text in b.decode()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _heartbeats(api: str, flow_run_id: str) -> list[dict]:
    body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 10}
    deadline = time.monotonic() + 30  # events are written in batches
    while True:
        events = post(f"{api}/events/filter", body)["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(1)


@pytest.mark.server
@pytest.mark.slow
def test_the_readme_team_block_deploys_and_runs_through_a_worker(tmp_path):
    started = time.monotonic()
    _Receiver.posts.clear()
    src = write_imdb_folder(tmp_path / "src", n_train=120, n_test=40, seed=3)
    checkout = _checkout(tmp_path)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/sentiflow"
    env = {**base_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SENTIFLOW_SOURCE": str(src),
           "SENTIFLOW_WORKERS": "1", "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}  # the worker looks for runs every second (default 10)
    block = team_block(README.read_text())
    log = tmp_path / "team.log"
    try:
        with prefect_server(tmp_path) as api:
            script = block.replace(DOCUMENTED_API, api).replace(EXAMPLE_HOOK, hook)
            rc = _run_script(script, env, checkout, log, timeout=600)
            assert rc == 0, log.read_text()[-6000:]

            deployments = {d["name"]: d for d in post(f"{api}/deployments/filter", {})}
            cpu = declared(ROOT / "prefect.yaml")
            assert {name: d["work_pool_name"] for name, d in deployments.items()} == cpu

            # the runs asked for by hand (the weekly schedule adds future ones)
            (train,) = [r for r in flow_runs(api, "train") if not r["auto_scheduled"]]
            (score,) = flow_runs(api, "score")
            for run, name in ((train, "weekly"), (score, "on-demand")):
                assert run["state"]["type"] == "COMPLETED", (name, run["state"])
                assert run["deployment_id"] == deployments[name]["id"]
                # a worker took it (it labels the runs it takes)
                assert run["labels"].get("prefect.worker.name"), run["labels"]
            assert score["parameters"]["config"] == {"out": "data/predictions.parquet"}
            # the worker's line passes the heartbeat setting on to the runs it starts
            assert _heartbeats(api, train["id"]), "no heartbeat from the training run"
            # the block's last line: `sentiflow status` names both runs (the worker's run journal, in
            # the data root it shares with the block) and the weekly schedule's next run (the server)
            status = log.read_text().rsplit("sentiflow status\n", 1)[1]
            assert train["name"] in status and score["name"] in status, status
            assert "train/weekly" in status and "Prefect server" in status, status
            # the block's alerts reached the webhook: a notification with the training run's page
            assert _posted(f"/runs/flow-run/{train['id']}"), _Receiver.posts

            # then the GPU deployment by its own commands: the CPU ones stay as they were
            gpu_script = "\n".join((f"export PREFECT_API_URL={api}", *GPU_COMMANDS))
            rc = _run_script(gpu_script, env, checkout, log, timeout=300)
            assert rc == 0, log.read_text()[-4000:]
            after = {d["name"]: d for d in post(f"{api}/deployments/filter", {})}
            assert {name: d["work_pool_name"] for name, d in after.items()} == \
                {**cpu, **declared(ROOT / "prefect-gpu.yaml")}
            assert all(after[name]["id"] == deployments[name]["id"] for name in cpu)

            _refuses_what_escapes(api, deployments["on-demand"]["id"], env, checkout, tmp_path)
    finally:
        receiver.shutdown()

    # the predictions, where the README says: every test review of the source, once
    predictions = pq.read_table(checkout / "data" / "predictions.parquet")
    source_ids = pq.read_table(src / "test.parquet").column("id").to_pylist()
    assert sorted(predictions.column("id").to_pylist()) == sorted(source_ids)
    print(f"team block: {time.monotonic() - started:.0f} s")


def _refuses_what_escapes(api: str, deployment_id: str, env: dict[str, str], checkout: Path, tmp: Path) -> None:
    """Through a worker (started here as the block starts it), ``score/on-demand`` runs whose
    parameters reach outside the worker's folders fail, each with one line naming its parameter,
    and write nothing: a ``data_root`` parameter cannot widen the folders a run may use, nor a
    ``model`` parameter load a model from a folder."""
    outside = tmp / "outside"  # not the worker's data root (checkout/data), nor a path root
    outside.mkdir()
    (outside / "in.csv").write_text("text\nfine\n")
    cases = [({"config": {"source": str(outside / "in.csv"), "out": str(outside / "out.parquet")}, "data_root": "/"},
              "data_root '/' is outside the folders a deployment's run may use"),
             ({"config": {"model": str(checkout / "data"), "out": "data/escaped.parquet"}},
              f"model {str(checkout / 'data')!r}: a deployment's run scores a model of the configured registry only")]
    with open(tmp / "worker-2.log", "w") as log:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "sentiflow"],
                                  env={**env, "PREFECT_API_URL": api}, cwd=checkout, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for parameters, refusal in cases:
            run = post(f"{api}/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
            state = wait_final(api, run["id"], time.monotonic() + 300, [tmp / "worker-2.log"])["state"]
            assert state["type"] == "FAILED", state
            assert refusal in state["message"] and "\n" not in state["message"].strip(), state["message"]
    finally:
        _end_group(worker.pid)
    assert sorted(p.name for p in outside.iterdir()) == ["in.csv"]  # nothing written beside the input
    assert not (checkout / "data" / "escaped.parquet").exists()
