"""Real servers for the tests: start a process in its own group and wait for its health URL,
a Prefect server on SQLite and a free loopback port, and the few REST calls the tests make."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import prefect_home, stop_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# An ``mlflow server``/``mlflow ui`` (``sentiflow ui`` execs it) on a SQL store otherwise starts
# huey job consumers, each importing all of MLflow: CPU for GenAI jobs no test runs (as in
# docker-compose.yml). For every server or UI a test starts.
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def base_env() -> dict[str, str]:
    """This environment without Prefect, MLflow, sentiflow or PostgreSQL settings; telemetry off,
    and no MLflow job consumers (``NO_JOBS``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SENTIFLOW_", "PG"))}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", **NO_JOBS})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> dict:
    return _json(urllib.request.Request(url), timeout)


def post(url: str, body: dict) -> dict | list:
    return _json(urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}), 10)


def _json(request: urllib.request.Request, timeout: float, tries: int = 5) -> dict | list:
    """The answer's JSON; a 503 (a SQLite-backed server busy under load) is asked again, 1 s apart."""
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == tries - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def wait_healthy(proc: subprocess.Popen, log: Path, health: str, timeout: float = 120) -> None:
    """Wait until ``health`` answers; fail at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(health, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{health} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path, health: str | None = None, timeout: float = 120):
    """Start ``cmd`` in its own process group; wait for ``health`` to answer; stop it with SIGINT
    (a Prefect worker or runner stops on SIGINT, not SIGTERM), then SIGKILL if it lingers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        if health:
            wait_healthy(proc, log, health, timeout)
        yield proc
    finally:
        stop_group(proc)
        # the group: children (gunicorn/uvicorn workers) too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_ok(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, f"{cmd[:3]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def wait_final(api: str, run_id: str, deadline: float, logs: list[Path]) -> dict:
    while True:
        run = get(f"{api}/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs)
        time.sleep(1)


def flow_runs(api: str, flow_name: str) -> list[dict]:
    return post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})




@contextmanager
def prefect_server(tmp: Path, env: dict[str, str] | None = None, **settings: str) -> Iterator[str]:
    """A real ``prefect server start`` on SQLite under ``tmp`` and a free loopback port, its
    services on (scheduler every 2 s); yields its API URL. ``settings``: more server variables."""
    port = free_port()
    server_env = {**(env or base_env()), "PREFECT_HOME": prefect_home(tmp / "prefect-server-home"),
                  "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                  **settings}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with process(cmd, server_env, tmp / "prefect-server.log", f"http://127.0.0.1:{port}/api/health", 180):
        yield f"http://127.0.0.1:{port}/api"
