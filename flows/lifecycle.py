"""A command's process tree ends with the command: clean ends on signals, no orphans after a kill.

Two things go wrong without this (seen here with Prefect 3):

* ``SIGTERM`` (``kill``, ``timeout``, ``docker stop``, a cancelled run) and ``SIGHUP`` end Python
  at once: no ``finally``, no ``atexit``. Prefect's ephemeral API server, a uvicorn child process
  stopped only by ``atexit``, keeps running with its port and database; the flow run stays
  ``Running`` and a stage's temporary folder stays behind. ``graceful_signals`` turns both
  signals into ``KeyboardInterrupt`` in the main thread, as Ctrl-C is: context managers remove
  temporary folders, Prefect marks the run crashed, ``atexit`` stops the server, and the command
  exits with 128 + the signal number.
* ``SIGKILL`` runs nothing at all. ``start_guarded_server`` starts the ephemeral server (the one
  Prefect itself would start) with a guard: a thread in the server process that watches its
  parent's pid and ends the server within a second of the parent's death, however it died.
  A parent-death signal (``PR_SET_PDEATHSIG``) would not do: it fires when the *thread* that
  started the child ends; nor would a pipe: forked tokenizer workers inherit its write end.

Tokenizer and scoring pool workers watch their parent the same way
(``sentiflow.tasks.data.tokenize.exit_with_parent``).

A command that will run a flow whatever happens (``score``, ``train``) launches the server's
process first of all (``launch_server_early``: no Prefect import, a few milliseconds), so that
its ~5 s start overlaps the command's own imports; ``start_guarded_server`` then adopts that
process instead of launching one after importing Prefect's server module (~8 s later here).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread for SIGTERM or SIGHUP (a ``KeyboardInterrupt``: Prefect and
    every ``finally`` treat it as Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def graceful_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` in the main thread inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for s in _SIGNALS:  # a second signal while unwinding is ignored: let cleanup finish
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    before = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


# -- the ephemeral Prefect server, guarded ---------------------------------------------------------

GUARD = """
import os, runpy, signal, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down
    time.sleep(5)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
sys.argv[0] = "uvicorn"
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


# Prefect's ephemeral server: uvicorn's arguments (``SubprocessASGIServer._run_uvicorn_command`` as
# of Prefect 3) and the variables it adds to the environment
_UVICORN = ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--log-level", "error",
            "--lifespan", "on"]
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_early: dict[str, Any] = {}  # the process launch_server_early started, until adopted: "process", "port"
_started: list[bool] = []  # not empty once this process has its ephemeral server
_exit_hook: list[Any] = []  # not empty once _stop_unadopted runs at exit
_start_lock = threading.Lock()  # one start at a time: the early thread's, the reaper's, a flow's


def _launch(port: int, app_dir: str, env: dict[str, str]) -> subprocess.Popen[Any]:
    return subprocess.Popen([sys.executable, "-c", GUARD, "--app-dir", app_dir, *_UVICORN, "--port", str(port)],
                            env={**env, **_SERVER_ENV})


def _free_port() -> int:
    """A port of Prefect's range (8000-8999) that nothing listens on now."""
    for _ in range(50):
        port = random.randrange(8000, 9000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for Prefect's ephemeral server in 8000-8999")


def launch_server_early() -> None:
    """Launch the ephemeral server's process now, before Prefect is imported, unless
    ``PREFECT_API_URL`` is set in the environment. ``start_guarded_server`` adopts it, or stops it
    where Prefect's settings (a profile, a ``.env`` file) name a server after all. The process
    reads Prefect's settings from the same sources as this one (environment, profile, files)."""
    if os.environ.get("PREFECT_API_URL") or _early or _started:
        return
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    port = _free_port()
    app_dir = os.path.dirname(next(iter(spec.submodule_search_locations)))
    _early.update(process=_launch(port, app_dir, dict(os.environ)), port=port)
    if not _exit_hook:
        _exit_hook.append(atexit.register(_stop_unadopted))


def _stop_unadopted() -> None:
    """The early process, when nothing adopted it (the command failed before its flow)."""
    process = _early.pop("process", None)
    _early.clear()
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def _guarded_server_class():
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class GuardedServer(SubprocessASGIServer):
        """Prefect's ephemeral server, started so that it ends when this process does: the
        command and environment are Prefect's own (``SubprocessASGIServer._run_uvicorn_command``
        as of Prefect 3), run through ``GUARD``."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            early = _early.get("process")
            if early is not None and _early["port"] == self.port and early.poll() is None:
                _early.clear()  # adopted: Prefect's own atexit stops it from now on
                return early
            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
            return _launch(self.port, str(prefect.__module_path__.parent), env)

    return GuardedServer


def start_guarded_server() -> None:
    """Start Prefect's ephemeral server now, guarded (see the module docstring), unless a Prefect
    server is configured (``PREFECT_API_URL``) or the ephemeral mode is off. Prefect then uses
    this server for the process's flow runs: it keeps one ephemeral server per process.
    Callers in two threads (``start_prefect_early``'s and a reaper's) take turns: one imports
    Prefect and starts the server, the other then finds it running. Two at once would import
    Prefect twice over (a partly initialised module) and start two servers, one never stopped."""
    with _start_lock:
        _start_guarded_server()


def _start_guarded_server() -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        _stop_unadopted()
        return
    server = _guarded_server_class()()
    if server.running:  # started by an earlier command in this process
        _stop_unadopted()
        return
    if "port" in _early:
        server.port = _early["port"]
    server.start()
    _started.append(True)


# -- a command's process: its error boundary, Prefect's early start, its exit ------------------------

def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message says it all (no traceback): bad input, an unreadable source, an
    ``--out`` that cannot be written (``OSError``), a tracking server that cannot be reached."""
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from sentiflow.tasks.data.sources import SourceError
    from sentiflow.tasks.scoring.serving import ModelError
    from sentiflow.tasks.training.sweep import SweepError

    return (SourceError, ModelError, SweepError, ValidationError, OSError, MlflowException)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task's traceback; for bad input the message alone says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], user_error_types()):
            record.exc_info, record.exc_text = None, None
        return True


def error_line(error: BaseException) -> str:
    """The one line a user error is reported with, credentials redacted (a pydantic error: each
    field's complaint, an unknown key with the nearest valid one)."""
    from pydantic import ValidationError

    from sentiflow.storage.redact import redact_all
    from sentiflow.tasks.config import error_line as config_error_line

    return redact_all(config_error_line(error) if isinstance(error, ValidationError) else str(error))


@contextmanager
def user_errors() -> Iterator[None]:
    """A command's error boundary: bad input ends with one clear line (the file, row and column)
    and exit code 1. SIGTERM and SIGHUP end the command as Ctrl-C does (``graceful_signals``),
    with 128 + the signal."""
    import typer
    from rich.console import Console

    err = Console(stderr=True)
    quiet = _NoTracebackForUserErrors()
    loggers = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        with graceful_signals():
            yield
    except user_error_types() as e:
        err.print(f"[bold red]error:[/] {error_line(e)}", soft_wrap=True, highlight=False, markup=True)
        raise typer.Exit(1) from None
    except Terminated as e:
        err.print(f"[bold red]stopped:[/] {e} (temporary files removed; rerun to continue)")
        raise typer.Exit(128 + e.signum) from None
    except KeyboardInterrupt:  # Ctrl-C (SIGINT)
        err.print("[bold red]stopped:[/] SIGINT (temporary files removed; rerun to continue)")
        raise typer.Exit(128 + 2) from None
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def start_prefect_early(launch_now: bool = False) -> threading.Thread:
    """Without ``PREFECT_API_URL``, a flow starts Prefect's ephemeral server first (~6 s here).
    Start it in the background now, while the flow's libraries import (~8 s); ``.join()`` the
    returned thread before calling the flow. ``launch_now``: the command runs a flow whatever
    happens, so the server's process is launched at once, before Prefect is even imported
    (``launch_server_early``). A start that fails here is retried, and reported, by the flow."""
    if launch_now:
        launch_server_early()

    def start() -> None:
        try:
            start_guarded_server()  # ends with this process, even on SIGKILL
        except Exception:  # noqa: BLE001 - the flow's own start raises it where it is seen
            pass

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def run_and_exit(app: Callable[[], Any]) -> None:
    """Run a command line ``app``, then end the process without the interpreter's teardown, which
    frees PyTorch's, MLflow's, Prefect's and spaCy's objects one by one: 1.5-3 s here after a
    command whose work is done and written. What the teardown would run first still runs, in its
    order: non-daemon threads are joined (``threading._shutdown``, as the interpreter does), then
    the ``atexit`` handlers (Prefect stops its server, logging flushes its handlers), then the
    output streams are flushed. An exception other than an exit takes the usual way out."""
    try:
        app()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _exit_now(code or 0)


def _exit_now(code: int) -> None:
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover - manual check: python -m sentiflow.flows.lifecycle
    start_guarded_server()
    print(os.getpid(), flush=True)
    signal.pause()
    sys.exit(0)


def command_settings(**options: Any):
    """A command's settings (``Settings.load`` with its options), once the runs of this data root
    whose process died are marked so (``sentiflow.flows.reaper``), one line each on stderr.
    Looking is a listing of a few small files; Prefect and MLflow open only for a dead run."""
    from sentiflow.flows.reaper import reap
    from sentiflow.storage.settings import Settings

    settings = Settings.load(**options)
    for line in reap(settings):
        print(f"sentiflow: {line}", file=sys.stderr)
    return settings
