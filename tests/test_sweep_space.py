"""The parts of a sweep that need no training: the search space's file, a trial's configuration,
the study's bookkeeping (requeueing a killed trial, the seed of a continued sweep, the pruner).
Real Optuna studies in SQLite files; no mocks."""

from __future__ import annotations

import optuna
import pytest

from sentiflow.flows.sweep_flow import check_space, fixed_paths, trial_config
from sentiflow.flows.train_flow import TrainFlowConfig
from sentiflow.tasks.training import sweep


def _space(tmp_path, text: str) -> sweep.Space:
    (tmp_path / "space.yaml").write_text(text)
    return sweep.load_space(tmp_path / "space.yaml")


def test_the_shipped_space_covers_the_issues_options_and_is_valid():
    space = check_space(sweep.load_space())
    assert {"train.lr", "train.lr_schedule", "model.dropout", "train.word_dropout", "model.hidden_dim",
            "model.head", "model.ngrams", "train.max_epochs"} <= set(space.dimensions)


@pytest.mark.parametrize(("text", "says"), [
    ("train.lr: {float: [0.01, 0.001]}", "train.lr: low must be below high"),
    ("train.lr: {float: [0.001, 0.01], choice: [1]}", "train.lr: give exactly one of"),
    ("train.lr: {floot: [0.001, 0.01]}", "train.lr:"),
    ("model.hidden_dim: {choice: []}", "choice: give at least one value"),
    ("train.lr: {float: [0, 1], log: true}", "log: true needs"),
    ("- a list", "expected a mapping"),
    ("train.lr: [unclosed", "cannot be read"),
])
def test_a_space_file_that_cannot_be_used_names_the_file_and_the_entry(tmp_path, text, says):
    with pytest.raises(sweep.SweepError) as e:
        _space(tmp_path, text)
    assert str(tmp_path / "space.yaml") in str(e.value) and says in str(e.value)


@pytest.mark.parametrize(("text", "says"), [
    ("data.source: {choice: [a, b]}", "data.source: not a field a sweep searches"),
    ("model.hiden_dim: {choice: [64]}", "model.hiden_dim: not a field"),
    ("model.head: {choice: [max, sideways]}", "model.head: 'sideways' is not valid"),
    ("model.dropout: {float: [0.1, 1.5]}", "model.dropout: 1.5 is not valid"),
    ("preset: {choice: [fast, quick]}", "preset: 'quick' is not valid"),
])
def test_a_space_naming_a_field_or_value_the_training_refuses_is_refused(tmp_path, text, says):
    with pytest.raises(sweep.SweepError) as e:
        check_space(_space(tmp_path, text))
    assert says in str(e.value)


def test_options_given_are_fixed_for_every_trial_and_win_over_the_preset_and_the_trial():
    given = TrainFlowConfig.model_validate({"preset": "fast", "train": {"max_epochs": 2}, "model": {"hidden_dim": 32}})
    assert fixed_paths(given) == {"preset", "train.max_epochs", "model.hidden_dim"}
    space = sweep.load_space().without(fixed_paths(given))
    assert "train.max_epochs" not in space.dimensions and "model.hidden_dim" not in space.dimensions
    config = trial_config(given, {"train.lr": 0.003, "model.head": "mean"})
    # fast: --no-bidirectional --pretrained none --embed-dim 100 --head last+max --max-epochs 3
    assert config.train.lr == 0.003 and config.model.head == "mean"  # the trial's values over the preset's
    assert config.model.embed_dim == 100 and config.model.bidirectional is False  # the preset's
    assert config.train.max_epochs == 2 and config.model.hidden_dim == 32  # given: over both
    assert trial_config(TrainFlowConfig(), {"preset": "best"}).model.bidirectional is True  # best's, not the default's


def test_a_name_that_could_reach_a_path_is_refused():
    for bad in ("a/b", "../x", "", "-x", "x" * 101, "a b"):
        with pytest.raises(ValueError, match="sweep name"):
            sweep.check_study_name(bad)
    assert sweep.check_study_name("sweep-1.a_b") == "sweep-1.a_b"


def _storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'sweeps.db'}"


def test_a_trial_left_running_is_failed_and_its_values_drawn_again(tmp_path):
    space = _space(tmp_path, "train.lr: {float: [0.0001, 0.01], log: true}\nmodel.head: {choice: [max, mean]}")
    study = sweep.open_study("s", _storage(tmp_path))
    done = study.ask()
    study.tell(done, 0.7)
    dead = study.ask()
    values = space.suggest(dead)  # a sweep killed while this trial trained
    again = sweep.open_study("s", _storage(tmp_path))
    assert sweep.requeue_stale(again) == [dead.number]
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                               optuna.trial.TrialState.WAITING]
    trial = again.ask()
    assert space.suggest(trial) == values and trial.user_attrs[sweep.RESUMES_ATTR] == dead.number
    assert len(sweep.counted(again)) == 1  # the dead trial never counts


def test_a_continued_sweep_draws_new_values_and_the_same_history_the_same_ones(tmp_path):
    space = _space(tmp_path, "train.lr: {float: [0.0001, 0.01], log: true}")
    first = sweep.open_study("s", _storage(tmp_path), seed=3)
    drawn = []
    for _ in range(2):
        t = first.ask()
        drawn.append(space.suggest(t)["train.lr"])
        first.tell(t, 0.5)
    t = sweep.open_study("s", _storage(tmp_path), seed=3).ask()  # the sweep run again
    assert space.suggest(t)["train.lr"] not in drawn
    # a study with the same history (a copy) draws the same next value: the seed is reproducible
    tmp2 = tmp_path / "copy"
    tmp2.mkdir()
    copy = sweep.open_study("s", _storage(tmp2), seed=3)
    for value in drawn:
        copy.enqueue_trial({"train.lr": value})
        c = copy.ask()
        space.suggest(c)
        copy.tell(c, 0.5)
    assert space.suggest(sweep.open_study("s", _storage(tmp2), seed=3).ask())["train.lr"] == t.params["train.lr"]


def test_the_pruner_stops_a_trial_behind_the_best_third_at_epoch_1_not_a_leader(tmp_path):
    study = sweep.open_study("p", _storage(tmp_path))
    for value in (0.80, 0.82, 0.81):  # three trials reach epoch 1 first
        sweep.reporter(study, study.ask()._trial_id)(1, value)
    behind = study.ask()
    assert sweep.reporter(study, behind._trial_id)(1, 0.50) is True  # worst of four at epoch 1: pruned
    ahead = study.ask()
    assert sweep.reporter(study, ahead._trial_id)(1, 0.90) is False  # the best so far goes on


def test_best_value_is_the_best_epochs_val_acc():
    assert sweep.best_value([(1, 0.6), (2, 0.8), (3, 0.7)]) == 0.8
    assert sweep.best_value([(1, float("nan")), (2, 0.5)]) == 0.5


@pytest.mark.slow
def test_the_command_refuses_a_bad_space_in_one_line_before_any_data_stage(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import write_imdb_folder

    src = write_imdb_folder(tmp_path / "src", n_train=40, n_test=10, seed=1)
    (tmp_path / "space.yaml").write_text("model.hiden_dim: {choice: [64, 128]}\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"),
           "MLFLOW_TRACKING_URI": "", "SENTIFLOW_TRACKING_URI": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "sentiflow"), "sweep", "--source", str(src),
                           "--space", str(tmp_path / "space.yaml")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"error: search space {tmp_path / 'space.yaml'}: model.hiden_dim: not a field" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "data" / "ingest").exists()  # refused before the data stages
