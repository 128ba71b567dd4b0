"""Retraining left unattended (issue 10): the real CLI in its own processes, killed and run twice.

* SIGTERM to a running ``sentiflow prepare`` ends it cleanly (exit 143, the run crashed, no
  temporary folder); SIGKILL leaves no child process (Prefect's server, tokenizer workers) alive
  10 s later; a rerun after either, wherever it landed (ingest, tokenize, vocab, encode),
  completes with the manifests of an uninterrupted run. The four kills are one chain on one
  data root (``KillChain``): each kill's command is the rerun after the kill before it, and one
  rerun after the last runs to the end, on what all four left (one full rerun, not four).
* A second ``sentiflow train`` of a key started while the first trains it (holds its lock) gives
  one training run and one version.

No kill is timed by a sleep: each waits for the state it means to interrupt (a line printed, the
processes it must take down running, a stage being written), polled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_reviews, prefect_home

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(base: Path, api: str | None = None) -> dict[str, str]:
    """A command's environment: Prefect in its ephemeral mode (the kills look for its server), or
    the session's Prefect server (``api``, ``prefect_api``) where the mode is not looked at: its
    PREFECT_HOME then holds no database, and gets no copy of the template."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SENTIFLOW_", "PREFECT_"))}
    env.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_HOME=str(base / "prefect") if api else prefect_home(base / "prefect"),
               SENTIFLOW_DATA_ROOT=str(base / "data"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if api:
        env["PREFECT_API_URL"] = api
    return env


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _left_alive(family: set[int], within: float = 15.0) -> list[int]:
    """The processes of ``family`` still alive after up to ``within`` seconds (polled: a guard
    ends the ephemeral server within a second of its parent's death, a pool worker as soon as
    it sees its parent gone)."""
    deadline = time.monotonic() + within
    while (left := sorted(p for p in family if _alive(p))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


SERVER = b"prefect.server.api.server:create_app"  # the ephemeral Prefect server's command line


def _poll(what: str, state, proc: subprocess.Popen, output, timeout: float = 120):
    """``state()`` once truthy (polled every 50 ms); a failure naming ``what``, with the end of
    ``output()``, when ``timeout`` passes first or ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not (reached := state()):
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"{what}: not reached (exit code {proc.poll()}):\n{output()[-3000:]}")
        time.sleep(0.05)
    return reached


def _family_up(proc: subprocess.Popen, workers: bool, lines: list[str]) -> set[int]:
    """The processes below ``proc`` once those a kill must take down are running: its Prefect
    server and, with ``workers``, its pool's workers (forked: the command's own command line)."""
    def up() -> set[int]:
        family = _descendants(proc.pid)
        cmds = [_cmdline(p) for p in family]
        if any(SERVER in c for c in cmds) and (not workers or _cmdline(proc.pid) in cmds):
            return family
        return set()

    return _poll("the server" + (" and the workers" if workers else ""), up, proc, lambda: "".join(lines))


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """Enough reviews, as long as IMDb's (~230 words), that tokenizing takes many seconds."""
    import pyarrow.compute as pc

    folder = tmp_path_factory.mktemp("big")
    for part, n, seed in (("train", 20_000, 1), ("test", 5_000, 2)):
        t = make_reviews(n, seed=seed, prefix=f"{part}-")
        long = pc.binary_join_element_wise(*([t.column("text")] * 12), " ")
        pq.write_table(t.set_column(1, "text", long), folder / f"{part}.parquet")
    return folder


def _start_and_wait_for(cmd: list[str], env: dict[str, str], cwd: Path, marker: str, timeout: float = 240):
    """Start ``cmd``; return (process, its output so far as a list) once ``marker`` is printed."""
    # SIGINT as a terminal gives it: a test run started in the background (``cmd &``) hands its
    # children SIGINT ignored, and a command that inherits that rightly keeps ignoring it
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    if not seen.wait(timeout):
        proc.kill()
        pytest.fail(f"{marker!r} never printed:\n{''.join(lines)[-3000:]}")
    return proc, lines


def _manifests(root: Path) -> dict[str, dict]:
    """Each stage folder's manifest, less what differs between two builds of the same bytes."""
    out = {}
    for m in sorted(root.glob("*/*/manifest.json")):
        data = json.loads(m.read_text())
        for k in ("created", "seconds"):
            data.pop(k, None)
        out[f"{m.parent.parent.name}/{m.parent.name}"] = data
    return out


@pytest.fixture(scope="module")
def clean_prepare(big_source, tmp_path_factory, prefect_api) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("clean")
    proc = subprocess.run([str(BIN / "sentiflow"), "prepare", "--source", str(big_source)], env=_env(base, prefect_api),
                          cwd=base, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return _manifests(base / "data")


# where the kill lands: the line printed before it (the stage then running). For a kill in
# tokenize, the flow's first line: the kill then waits for the pool's workers, forked when the
# first shard not stored yet starts tokenizing, and lands at once; and the command runs with
# RETOKENIZE, so that every shard is tokenized again and there are workers to kill whatever the
# kills before it stored. (A SIGTERM or SIGINT lets the shard tasks already submitted finish:
# without it, the first two kills' commands once stored every shard and the third found no
# worker to kill; CI, 2026-12-08.)
IN_TOKENIZE = "Beginning flow run"
IN_VOCAB = "Task run 'tokenize-test' - Finished"
RETOKENIZE = ["--force", "tokenize"]
# the kills, in this order, each on what the ones before it left (SIGTERM and SIGINT first: they
# must leave no temporary folder, and a SIGKILL before them would have left one)
KILLS = [("term-tokenize", signal.SIGTERM, IN_TOKENIZE), ("int-tokenize", signal.SIGINT, IN_TOKENIZE),
         ("kill-tokenize", signal.SIGKILL, IN_TOKENIZE), ("kill-vocab", signal.SIGKILL, IN_VOCAB)]


@dataclass
class Killed:
    code: int  # the killed command's exit code
    output: str
    temporary: list[str]  # the temporary folders in the data root right after it ended
    left: list[bytes]  # the command lines of its processes still alive after up to 15 s


class KillChain:
    """``sentiflow prepare`` on one data root (and one PREFECT_HOME), killed as ``KILLS`` says,
    one kill after another: each command is the rerun after the kill before it, until it is
    killed in turn; then one rerun to the end. One full rerun instead of one per kill; every kill
    and what it left are recorded for the test of that kill, the rerun once for all four."""

    def __init__(self, base: Path, source: Path):
        self.base, self.env = base, _env(base)
        self.cmd = [str(BIN / "sentiflow"), "prepare", "--source", str(source)]
        self.killed: list[Killed] = []
        self.broken: str | None = None
        self._rerun: subprocess.CompletedProcess | None = None

    def upto(self, step: int) -> Killed:
        """The kill ``step`` of ``KILLS``, and every one before it, done (once)."""
        while len(self.killed) <= step:
            if self.broken:
                pytest.fail(f"the chain of kills broke at {self.broken}: see that test")
            name, sig, marker = KILLS[len(self.killed)]
            self.broken = name  # until it is done
            self.killed.append(self._kill(sig, marker))
            self.broken = None
        return self.killed[step]

    def _kill(self, sig: int, marker: str) -> Killed:
        in_tokenize = marker == IN_TOKENIZE
        proc, lines = _start_and_wait_for(self.cmd + (RETOKENIZE if in_tokenize else []), self.env, self.base, marker)
        try:
            family = _family_up(proc, workers=in_tokenize, lines=lines)
        except BaseException:  # not left running on the data root the next kills use
            proc.kill()
            raise
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        temporary = [str(p) for p in (self.base / "data").glob("*/.tmp-*")]
        left = _left_alive(family)
        return Killed(code, "".join(lines), temporary,
                      [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in left])

    def rerun(self) -> subprocess.CompletedProcess:
        """After every kill: the command once more, to its end (once)."""
        self.upto(len(KILLS) - 1)
        if self._rerun is None:
            self._rerun = subprocess.run(self.cmd, env=self.env, cwd=self.base, capture_output=True, text=True,
                                         timeout=600)
        return self._rerun


@pytest.fixture(scope="module")
def kill_chain(big_source, tmp_path_factory) -> KillChain:
    return KillChain(tmp_path_factory.mktemp("killed"), big_source)


@pytest.mark.parametrize("step", range(len(KILLS)), ids=[name for name, _, _ in KILLS])
def test_a_killed_prepare_leaves_no_process_and_a_rerun_completes(step, kill_chain, clean_prepare):
    """The kill ``KILLS[step]``, on a data root the kills before it left: a clean end for SIGTERM
    and SIGINT, no process left; then the rerun after all four kills completes with the manifests
    of an uninterrupted run."""
    sig = KILLS[step][1]
    killed = kill_chain.upto(step)
    if sig != signal.SIGKILL:  # a clean end: 128 + the signal, nothing half-written
        assert killed.code == 128 + sig, killed.output[-3000:]
        assert not killed.temporary, f"a temporary folder was left: {killed.temporary}"
    assert not killed.left, killed.left

    rerun = kill_chain.rerun()
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert _manifests(kill_chain.base / "data") == clean_prepare


def test_two_trainings_of_one_key_give_one_run_and_one_version(tmp_path, prefect_api):
    """The second starts once the first holds the training's lock (past the data stages, which
    it left stored): it never trains, but reuses the first's run once the first has finished it.
    Whether it meets the lock still held depends on the machine (it did in both runs seen here,
    once 2 s before the first's last epoch ended); reusing the run does not."""
    from tests.conftest import write_imdb_folder

    src = write_imdb_folder(tmp_path / "src", n_train=2000, n_test=200, seed=5)
    env = _env(tmp_path, prefect_api)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    cmd = [str(BIN / "sentiflow"), "train", "--source", str(src), "--max-epochs", "3", "--pretrained", "none", "--embed-dim", "16",
           "--hidden-dim", "16", "--workers", "1"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]  # files: nobody reads a pipe while polling

    def start(log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)

    first = start(logs[0])
    # the lock file exists from just before it is locked until just before it is released
    _poll("the first training holding its lock", lambda: list((tmp_path / "data" / "train").glob(".lock-*")),
          first, logs[0].read_text, timeout=300)
    second = start(logs[1])
    codes = [p.wait(timeout=900) for p in (first, second)]
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("sentiflow")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    versions = client.search_model_versions("name = 'sentiflow'")
    assert [str(v.version) for v in versions] == ["1"]
    assert all("version 1" in out for out in outs)
    # the second never trained: it found the first's finished run (after waiting for its lock)
    assert f"finished run {runs[0].info.run_id} reused" in outs[1], outs[1][-2000:]
    assert "epoch 1/3" in outs[0] and "epoch 1/3" not in outs[1]


def test_a_killed_score_leaves_no_process_and_a_rerun_gives_the_same_predictions(big_source, tmp_path,
                                                                                prefect_api):
    """``sentiflow score`` killed (SIGKILL) while its workers tokenize: nothing left running, and
    the rerun writes the predictions an uninterrupted run writes."""
    from tests.conftest import write_imdb_folder

    env = _env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    small = write_imdb_folder(tmp_path / "small", n_train=300, n_test=50)
    trained = subprocess.run([str(BIN / "sentiflow"), "train", "--source", str(small), "--max-epochs", "1",
                              "--pretrained", "none", "--embed-dim", "8", "--hidden-dim", "8", "--workers", "1"],
                             env={**env, "PREFECT_API_URL": prefect_api}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    # the smaller part (5,000 reviews as long as IMDb's): its tokenizing still takes seconds
    score = [str(BIN / "sentiflow"), "score", "--source", str(big_source / "test.parquet"), "--workers", "2"]
    proc, lines = _start_and_wait_for(score, env, tmp_path, "Beginning flow run")
    # the score stage being written (its temporary folder) while its tokenizer workers run
    _poll("the score stage written", lambda: list((tmp_path / "data" / "score").glob(".tmp-*")), proc,
          lambda: "".join(lines))
    family = _family_up(proc, workers=True, lines=lines)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not _left_alive(family)
    # the kill landed mid-stage: its temporary folder left, no score stage published
    assert not [p.name for p in (tmp_path / "data" / "score").iterdir() if not p.name.startswith(".")]

    out = [tmp_path / "after-kill.parquet", tmp_path / "forced.parquet"]
    errs = []
    for path, extra in zip(out, ([], ["--force"])):
        rerun = subprocess.run([*score, "--out", str(path), *extra], env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        errs.append(rerun.stderr)
    # the first rerun marks the killed run, through the one (guarded) server it starts; Prefect
    # imported by one thread at a time (two at once: "Failed to initialize plugins", a second server)
    assert "died earlier: marked Crashed in Prefect\n" in errs[0], errs[0][-2000:]
    assert not any("Failed to initialize" in e for e in errs), errs
    assert pq.read_table(out[0]).equals(pq.read_table(out[1]))
    assert pq.read_metadata(out[0]).num_rows == pq.read_metadata(big_source / "test.parquet").num_rows == 5_000
