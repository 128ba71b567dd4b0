"""Shared fixtures: real Prefect (a test harness server), real Parquet files, small data made here.

Environment first, before anything imports Prefect: a private PREFECT_HOME (cache records and
the harness database live there), the Hugging Face hub offline (its path fails at once), and no
telemetry from any library.
"""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="sentiflow-tests-")
os.environ["PREFECT_HOME"] = os.path.join(_HOME, "prefect")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
# sentiflow's rich consoles (flows/views.py) take their width when first imported, so a CliRunner's
# env cannot widen them later: every process of the suite gets the width tests parse at
os.environ["COLUMNS"] = "200"
# One OpenMP/MKL thread per process: the suite runs modules side by side (pytest-xdist), and
# OpenMP threads that spin-wait for a busy core slow every process on the machine
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.pop("SENTIFLOW_DATA_ROOT", None)
os.environ.pop("SENTIFLOW_SOURCE", None)

import functools  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from contextlib import closing, contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

import sentiflow.flows  # noqa: E402,F401  (the libraries' process defaults, before Prefect is imported)

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "delightful", "touching"]
NEGATIVE = ["awful", "boring", "dreadful", "clumsy", "terrible", "tedious", "lifeless"]
NEUTRAL = ["the", "film", "plot", "actors", "scene", "director", "story", "camera", "and", "a"]


def make_reviews(n: int, seed: int = 0, prefix: str = "r") -> pa.Table:
    """``n`` synthetic reviews, half positive, each with a few label words among neutral ones
    and the IMDb quirks: ``<br />`` tags, capitals, punctuation."""
    rng = random.Random(seed)
    ids, texts, labels = [], [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 30))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        if i % 4 == 0:  # a word seen once: rare tokens for min_freq to drop
            words.append(f"cameo{i}")
        text = " ".join(words).capitalize() + "." + (" <br /><br />Really!" if i % 3 == 0 else "")
        ids.append(f"{prefix}{i}")
        texts.append(text)
        labels.append(label)
    return pa.table({"id": ids, "text": texts, "label": pa.array(labels, pa.int8())})


def write_imdb_folder(folder: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """A folder like ``../shared/data/imdb``: ``train.parquet`` and ``test.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(make_reviews(n_train, seed, "train-"), folder / "train.parquet")
    pq.write_table(make_reviews(n_test, seed + 1, "test-"), folder / "test.parquet")
    return folder


STOP_GRACE = 3.0  # seconds a stopped worker, server or ``sentiflow serve`` gets before SIGKILL


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """End a process started with ``start_new_session=True`` and its group: SIGINT (a clean
    stop), then SIGKILL where it lingers past ``grace`` seconds. No test looks at how these
    processes stop, and a Prefect worker or ``sentiflow serve`` does not end on SIGINT within
    20 s anyway: waiting longer only made each stop cost 20 s."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10)):
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue


_TEMPLATE_DB = "SENTIFLOW_TEST_PREFECT_DB"  # set by the controller for its pytest-xdist workers


@functools.cache
def _started_prefect_db() -> Path:
    """A Prefect database as a first server start leaves it: every migration of the installed
    Prefect's schema run, its block types registered, no flow run (``prefect block type ls`` in
    ephemeral mode). Made once per test session where ``pytest_configure`` made it before the
    workers started, else once per test process."""
    if os.environ.get(_TEMPLATE_DB):
        return Path(os.environ[_TEMPLATE_DB])
    home = Path(_HOME) / "prefect-template"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # a first start runs every migration: on a loaded 2-core machine that is past Prefect's 20 s
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "type", "ls"], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"a first Prefect server start failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return home / "prefect.db"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the controller makes the template database once, before its workers
    start and load the machine, and hands them its path; each worker's own PREFECT_HOME (the
    ephemeral mode of the commands it starts with its environment) starts from a copy."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ[_TEMPLATE_DB] = str(_started_prefect_db())
    elif os.environ.get(_TEMPLATE_DB):  # a worker: its own PREFECT_HOME starts from the template too
        prefect_home(Path(os.environ["PREFECT_HOME"]))


def prefect_home(path: Path) -> str:
    """``path`` made a PREFECT_HOME holding a copy of ``_started_prefect_db``, for a test's
    ephemeral-mode commands or its ``prefect server start``: the first server on a bare home runs
    every migration and registers every block type (~4 s of CPU; ~30 such homes in the suite)
    before anything a test looks at."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "prefect.db").exists():
        with closing(sqlite3.connect(_started_prefect_db())) as source, closing(sqlite3.connect(path / "prefect.db")) as copy:
            source.backup(copy)  # SQLite's own copy: what the write-ahead log holds too
    return str(path)


def edit_module_source(monkeypatch: pytest.MonkeyPatch, module_name: str) -> None:
    """Make ``inspect.getsource`` see module ``module_name`` as edited (a comment appended), as
    the stage code versions do after a change to that file."""
    real = inspect.getsource

    def getsource(obj):
        text = real(obj)
        return text + "\n# edited\n" if getattr(obj, "__name__", None) == module_name else text

    monkeypatch.setattr(inspect, "getsource", getsource)


@contextmanager
def capture_log(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """The records logged on ``logger_name`` (and below) inside the block, whatever handlers
    and propagation Prefect set up."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def read_artifacts(key: str) -> list:
    """The Prefect artifacts stored under ``key``, read through the API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


@pytest.fixture
def imdb_folder(tmp_path: Path) -> Path:
    return write_imdb_folder(tmp_path / "source")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect server (temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def prefect_api(prefect_harness) -> str:
    """The session's Prefect server (``prefect_harness``) as a URL, for ``sentiflow`` commands run
    as processes where Prefect's mode is not what a test checks (``PREFECT_API_URL`` in their
    environment): each would otherwise start an ephemeral server of its own, ~8 s of CPU. The
    ephemeral mode of the README's quick start keeps its own tests (test_browser, test_cli,
    test_dead_runs[ephemeral], test_journal, test_unattended's kills)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


_LEAKY = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # storage.tracking.URI_VARIABLES


def _restore(before: dict[str, str | None], globals_too: bool = False) -> None:
    if globals_too:
        import mlflow

        # MLflow also keeps the URIs in module globals, which outlive the variables: a module
        # that called set_registry_uri would otherwise answer a later module's models:/ URIs from
        # its own registry (seen in CI: test_served_model downloaded test_score's model)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    from sentiflow.storage.tracking import restore_environ

    restore_environ(before)


@pytest.fixture(scope="module", autouse=True)
def _environment_per_module():
    """``mlflow.set_tracking_uri``/``set_registry_uri`` also write ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI`` into ``os.environ``, and Settings and child processes read them:
    without this, a test that points MLflow at its store by hand hands that store (and its
    champion) to every later module. (sentiflow's own ``configure`` puts them back itself, and
    the CLI writes nothing there: tests/test_cli.py checks it.)"""
    before = {k: os.environ.get(k) for k in _LEAKY}
    yield
    _restore(before, globals_too=True)


@pytest.fixture(autouse=True)
def _environment_per_test(_environment_per_module):
    before = {k: os.environ.get(k) for k in _LEAKY}
    yield
    _restore(before)


SLOW_TIMEOUT = 900  # seconds; pyproject.toml's ``timeout`` (300) for the rest


# The modules that take longest (servers, kills, heartbeats), longest first: under pytest-xdist's
# ``--dist loadfile`` a module goes whole to the next free worker in collection order, so these
# start at once and the many short modules fill the gaps around them.
HEAVY_FIRST = ("test_unattended", "test_team", "test_server", "test_auth", "test_browser",
               "test_tracking_outage", "test_sweep", "test_alerts", "test_gate", "test_dead_runs",
               "test_served_model", "test_deployments", "test_train", "test_compose_secrets")


def _weight(item: pytest.Item) -> int:
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heaviest modules first (``HEAVY_FIRST``; the sort is stable, so a module's own order
    stays). A test marked ``slow`` (servers, trainings, killed commands: up to 160 s on CI's 2
    cores) gets ``SLOW_TIMEOUT`` unless it names its own ``timeout``."""
    items.sort(key=_weight)
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
