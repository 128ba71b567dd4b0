"""The run journal and what reads it without running anything: a process told gone (ended, its
pid given to another process, another boot), records written whole, the source a data root was
built from remembered, and ``sentiflow status`` showing the service from a real training and
scoring (the journal's figures checked against MLflow's own records)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import mlflow
import pytest

from sentiflow.storage.journal import Journal, Process, RunRecord, now
from sentiflow.storage.settings import Settings, record_source
from tests.conftest import prefect_home, write_imdb_folder
from tests.servers import ROOT, base_env


def _record(id_: str, process: Process, state: str = "running", minutes: int = 0, **outcome) -> RunRecord:
    return RunRecord(id=id_, flow="train", name=f"train-{id_}", state=state, started=now() + timedelta(minutes=minutes),
                     api="ephemeral", tracking="sqlite:///x", process=process, outcome=outcome)


def test_a_process_is_gone_when_it_ended_or_its_pid_is_another_process():
    me = Process.this()
    assert not me.is_gone()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ran = Process(host=me.host, boot=me.boot, pid=child.pid, ticks=0)
    child.wait()
    assert ran.is_gone()  # ended (reaped): no such pid
    assert me.model_copy(update={"ticks": me.ticks + 1}).is_gone()  # the pid, but another process's start
    assert me.model_copy(update={"boot": "another-boot"}).is_gone()  # the machine restarted since
    assert not me.model_copy(update={"host": "elsewhere", "pid": 999_999_999}).is_gone()  # not ours to tell


def test_journal_keeps_whole_records_newest_first_and_finds_the_dead(tmp_path):
    journal = Journal(tmp_path)
    me = Process.this()
    gone = me.model_copy(update={"ticks": me.ticks + 1})
    journal.write(_record("a", me, minutes=-2))
    journal.write(_record("b", gone, minutes=-1))
    journal.write(_record("c", gone, state="completed"))
    (journal.folder / "torn.json").write_text('{"id": "torn", "flow"')  # unreadable: skipped, not an error
    assert [r.id for r in journal.records()] == ["c", "b", "a"]
    assert [r.id for r in journal.dead()] == ["b"]  # running and gone; c ended, a is this process
    ended = journal.end(journal.read("b"), "crashed", "its process ended", version="3")
    assert journal.read("b").state == "crashed" and ended.outcome == {"version": "3"} and ended.ended
    assert not list(journal.folder.glob("*.tmp"))


def test_the_source_a_data_root_was_built_from_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SENTIFLOW_SOURCE", raising=False)
    root = tmp_path / "data"
    assert Settings.load(data_root=root).source == "stanfordnlp/imdb"  # nothing recorded: the default
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    record_source(root, "src")  # relative, as `make train` gives it: remembered absolute
    assert Settings.load(data_root=root).source == str(tmp_path / "src")
    assert Settings.load(data_root=root, source="other").source == "other"  # an option wins
    monkeypatch.setenv("SENTIFLOW_SOURCE", "from-env")
    assert Settings.load(data_root=root).source == "from-env"  # and the environment
    record_source(root, "stanfordnlp/imdb")  # a hub id as it is
    monkeypatch.delenv("SENTIFLOW_SOURCE")
    assert Settings.load(data_root=root).source == "stanfordnlp/imdb"


def _cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.mark.slow
def test_status_shows_the_champion_and_the_last_runs_after_train_and_score(tmp_path):
    """The README's sequence on a small source: train (a source given once), then `status` and
    `score` with none: both use the source the data root was built from."""
    write_imdb_folder(tmp_path / "src", n_train=200, n_test=60)
    env = {**base_env(), "PREFECT_HOME": prefect_home(tmp_path / "prefect-home"), "SENTIFLOW_DATA_ROOT": str(tmp_path / "data")}
    _cli(["train", "--source", str(tmp_path / "src"), "--preset", "fast", "--max-epochs", "1"], env)
    _cli(["score"], env)  # no --source: the recorded one's test part
    state = json.loads(_cli(["status", "--json"], env).stdout)
    service, stages = state["service"], state["stages"]
    assert all(s["state"] == "cached" for s in stages)  # the recorded source's stages, all stored

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("sentiflow", "champion")
    run = client.get_run(champion.run_id)
    trained = service["champion"]
    assert trained["outcome"]["version"] == str(champion.version) and trained["state"] == "completed"
    assert trained["outcome"]["test_acc"] == pytest.approx(float(champion.tags["test_acc"]))
    assert trained["name"] == run.info.run_name and trained["outcome"]["promoted"] is True
    assert service["last_training"]["id"] == trained["id"]
    scored = service["last_scoring"]
    evaluation = client.get_run(scored["outcome"]["evaluation_run_id"])
    assert scored["state"] == "completed" and scored["outcome"]["rows"] == 60
    assert scored["outcome"]["accuracy"] == pytest.approx(evaluation.data.metrics["accuracy"])
    assert scored["name"] == f"score-v{champion.version}-src"
    assert evaluation.info.run_name == f"evaluate-sentiflow-v{champion.version}-src"
    assert service["last_failure"] is None and service["running"] == [] and service["prefect_api"] is None

    shown = _cli(["status"], env).stdout
    assert f"sentiflow v{champion.version}" in shown and trained["name"] in shown and scored["name"] in shown
