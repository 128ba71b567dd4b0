"""Sweeps (issue 20): ``sentiflow sweep`` on a small synthetic source, through the real CLI,
Prefect, MLflow (a SQLite store) and Optuna (a SQLite study).

* A 6-trial sweep whose space holds a clearly bad learning rate prunes at least one trial before
  its last epoch (its run KILLED, tagged with the epoch), logs 6 child runs under one parent run,
  and registers the trial with the best ``val_acc`` (found here from the child runs' metric
  histories, not from the study) through the gate.
* Killed with SIGKILL during trial 3 and run again, the sweep completes with its planned number of
  trials: the interrupted trial resumed from its checkpoint in the same MLflow run, no child run
  twice, the dead trial never counted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.chromium import CHROMIUM, Chromium
from tests.conftest import write_imdb_folder
from tests.servers import NO_JOBS, free_port, process

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# a learning rate that learns, and one that cannot move the weights in a few epochs
SPACE = """\
train.lr: {choice: [0.01, 0.000001]}
model.dropout: {float: [0.0, 0.2]}
"""
OPTIONS = ["--preset", "seed", "--embed-dim", "16", "--hidden-dim", "16", "--head", "last+max",
           "--batch-size", "16", "--workers", "1"]


def _env(tmp: Path, api: str) -> dict[str, str]:
    """The command's environment: the session's Prefect server (``api``, ``prefect_api``), so its
    PREFECT_HOME holds no database (no template copy)."""
    return {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "prefect"), "SENTIFLOW_DATA_ROOT": str(tmp / "data"),
            "MLFLOW_TRACKING_URI": "", "SENTIFLOW_TRACKING_URI": "", "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _sweep(tmp: Path, src: Path, *extra: str, space: str = SPACE) -> list[str]:
    (tmp / "space.yaml").write_text(space)
    return [str(BIN / "sentiflow"), "sweep", "--source", str(src), "--space", str(tmp / "space.yaml"),
            "--name", "test-sweep", *OPTIONS, *extra]


def _client(tmp: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{(tmp / 'data' / 'mlflow.db').resolve()}")


def _children(client: MlflowClient, parent: str) -> list:
    exp = client.get_experiment_by_name("sentiflow").experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")


def _parent(client: MlflowClient):
    exp = client.get_experiment_by_name("sentiflow").experiment_id
    (run,) = client.search_runs([exp], "attributes.run_name = 'test-sweep'")
    return run


def _val_accs(client: MlflowClient, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, prefect_api) -> dict:
    """A 6-trial sweep of 4 epochs a trial, through the CLI: its folder and its output."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    src = write_imdb_folder(tmp_path / "src", n_train=600, n_test=200, seed=4)
    done = subprocess.run(_sweep(tmp_path, src, "--trials", "6", "--max-epochs", "4"), env=_env(tmp_path, prefect_api),
                          cwd=tmp_path, capture_output=True, text=True, timeout=800)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return {"tmp": tmp_path, "out": out}


def test_a_sweep_prunes_logs_children_under_one_parent_and_registers_the_best(swept):
    tmp_path, out = swept["tmp"], swept["out"]
    client = _client(tmp_path)
    parent = _parent(client)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.train.lr"] == "one of 0.01, 1e-06"
    assert parent.data.params["fixed.train.max_epochs"] == "4"  # given: fixed for every trial
    assert "space.train.max_epochs" not in parent.data.params
    children = _children(client, parent.info.run_id)
    assert len(children) == 6 and len({c.info.run_id for c in children}) == 6
    assert all(c.data.params["train.max_epochs"] == "4" and c.data.params["model.hidden_dim"] == "16"
               for c in children)

    pruned = [c for c in children if c.info.status == "KILLED"]
    assert pruned, [(c.info.run_name, c.info.status, _val_accs(client, c.info.run_id)) for c in children]
    for c in pruned:  # stopped before the last epoch, at the epoch it reached
        epochs = sorted(_val_accs(client, c.info.run_id))
        assert int(c.data.tags["sentiflow.pruned_at_epoch"]) == epochs[-1] < 4
        assert c.data.tags.get("sentiflow.complete") != "true"
    complete = [c for c in children if c.info.status == "FINISHED"]
    assert all(sorted(_val_accs(client, c.info.run_id)) == [1, 2, 3, 4] for c in complete)

    # the best by val_acc, from the runs themselves; test accuracy plays no part in the choice
    # (on 60 validation reviews two trials may tie: any of the tied ones is the best)
    best_acc = {c.info.run_id: max(_val_accs(client, c.info.run_id).values()) for c in complete}
    (version,) = client.search_model_versions("name='sentiflow'")
    assert version.run_id in best_acc and best_acc[version.run_id] == max(best_acc.values()), best_acc
    assert client.get_model_version_by_alias("sentiflow", "champion").version == version.version
    assert parent.data.tags["sentiflow.best_run"] == version.run_id
    assert "trials.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert f"{len(pruned)} pruned" in out

    # the study, in its own SQLite file: 6 counted trials, the pruned ones as PRUNED
    study = optuna.load_study(study_name="test-sweep", storage=f"sqlite:///{tmp_path / 'data' / 'sweeps.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned) and len(states) == 6


@pytest.mark.server
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make browser-tool`)")
def test_the_mlflow_ui_shows_the_sweep_as_one_parent_with_its_trials_and_their_parallel_coordinates(swept,
                                                                                                    prefect_api):
    """As a user looks at it in ``sentiflow ui``: the runs list holds one row, the sweep's parent
    run, with an expander; expanded, the six trials under it; the trials compared, a parallel
    coordinates plot whose axes are the searched options and ``val_acc``."""
    tmp = swept["tmp"]
    port, log = free_port(), tmp / "mlflow-ui.log"
    cmd = [str(BIN / "sentiflow"), "ui", "--data-root", str(tmp / "data"), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with process(cmd, {**_env(tmp, prefect_api), **NO_JOBS}, log, f"{base}/health", timeout=180):
        client = _client(tmp)
        parent = _parent(client)
        children = sorted(c.info.run_name for c in _children(client, parent.info.run_id))
        exp = parent.info.experiment_id
        b = Chromium(tmp / "chromium-profile", tmp / "screenshots", tmp / "chromium.log")
        try:
            runs = f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"
            text = b.open(runs, lambda t: "test-sweep" in t and "matching runs" in t)
            shot = b.screenshot("sweep-runs-collapsed")
            # collapsed: the parent alone, the 7 runs counted (the parent and its 6 trials)
            assert "test-sweep" in text and not any(c in text for c in children), f"{shot}: {text[:2000]}"
            assert "7 matching runs" in text, f"{shot}: {text[:2000]}"
            # the expander beside the parent's name (MLflow's run-name cell)
            assert b.click_selector('button[data-component-id*="runnamecellrenderer"]'), f"{shot}: no expander"
            text = b.wait(lambda t: all(c in t for c in children))
            shot = b.screenshot("sweep-runs-expanded")
            assert all(c in text for c in children), f"{shot}: {text[:2000]}"

            ids = [c.info.run_id for c in _children(client, parent.info.run_id)]
            compare = (f"{base}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
                       f"&experiments={urllib.parse.quote(json.dumps([exp]))}")
            axes_js = """[...document.querySelectorAll('.js-plotly-plot .parcoords .axis-title')]
                .map(e => e.textContent)"""
            text = b.open(compare, lambda t: "Parallel Coordinates Plot" in t and (b.eval(axes_js) or []))
            axes = b.eval(axes_js)
            shot = b.screenshot("sweep-parallel-coordinates")
            assert f"Comparing {len(ids)} Runs" in text, f"{shot}: {text[:2000]}"
            assert {"train.lr", "model.dropout", "val_acc"} <= set(axes), f"{shot}: axes {axes}"
        finally:
            b.close()


# every value trains the same network (the reviews are far shorter than any of them), but each
# is a configuration of its own: the trials tie at each epoch, so none is pruned (ties go on)
SAME_SPACE = """\
train.max_len: {int: [1000, 100000]}
"""


def test_a_killed_sweep_reruns_to_its_planned_trials_resuming_the_interrupted_one(tmp_path, prefect_api):
    """Killed (SIGKILL, the whole process group) while trial 3 trains, past its first epoch's
    checkpoint; the same command then finishes the sweep. The space's trials tie (``SAME_SPACE``),
    so the pruner cannot stop trial 3 before the kill."""
    src = write_imdb_folder(tmp_path / "src", n_train=1200, n_test=200, seed=5)
    cmd = _sweep(tmp_path, src, "--trials", "4", "--max-epochs", "6", space=SAME_SPACE)
    env = _env(tmp_path, prefect_api)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    client = _client(tmp_path)
    target = None
    deadline = time.monotonic() + 600
    while target is None:  # polled: the kill waits for the state it needs, not for a time
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-4000:]
        time.sleep(0.05)
        try:
            runs = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id],
                                      "attributes.run_name = 'test-sweep-trial-2'")
        except Exception:  # noqa: BLE001 - the store is being created
            continue
        if runs and runs[0].info.status == "RUNNING" and 1 in _val_accs(client, runs[0].info.run_id):
            target = runs[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    epochs_before = sorted(_val_accs(client, target.info.run_id))
    assert epochs_before[-1] < 6, "trial 3 ended before the kill"

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=800)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "resumed trial(s) [2]" in out
    resumed_at = re.search(rf"resuming run {target.info.run_id} at epoch (\d+)", out)
    # at the epoch after the last logged one (or one later: its checkpoint saved, its metrics not)
    assert resumed_at and int(resumed_at.group(1)) in (epochs_before[-1] + 1, epochs_before[-1] + 2), out[-4000:]

    parent = _parent(client)
    children = _children(client, parent.info.run_id)
    assert len(children) == 4, [c.info.run_name for c in children]  # the resumed run counted once
    assert target.info.run_id in {c.info.run_id for c in children}
    resumed = client.get_run(target.info.run_id)
    history = client.get_metric_history(target.info.run_id, "val_acc")
    assert len(history) == len({m.step for m in history})  # no epoch logged twice
    assert resumed.info.status == "FINISHED" and sorted(_val_accs(client, target.info.run_id)) == list(range(1, 7))
    study = optuna.load_study(study_name="test-sweep", storage=f"sqlite:///{tmp_path / 'data' / 'sweeps.db'}")
    counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED)]
    assert len(counted) == 4
    (dead,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert dead.number == 2
    (again_trial,) = [t for t in counted if t.user_attrs.get("resumes_trial") == 2]
    assert again_trial.params == dead.params
    assert json.loads(json.dumps(again_trial.user_attrs["run_id"])) == target.info.run_id
