"""Names checked at the door (issue 19): a registered model's or an experiment's name follows
MLflow's rules before anything runs, and no name a user gives becomes a path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

from sentiflow.storage.names import check_experiment_name, check_model_name, name_key
from sentiflow.storage.store import LockError, Store
from tests.conftest import prefect_home
from tests.servers import base_env

BIN = Path(sys.executable).parent
NAMES = ["sentiflow", "Sentiment v2", "a-b_c.d", "a/b", "../x", "..", ".", "a:b", "", " ", "x/../y", "./x",
         "ünïcode", "..hidden", "a" * 256]


def _accepts(check, name: str, refusal: type[Exception]) -> bool:
    try:
        check(name)
        return True
    except refusal:
        return False


@pytest.mark.parametrize("name", NAMES)
def test_model_names_follow_mlflows_rules(name):
    assert _accepts(check_model_name, name, ValueError) == _accepts(_validate_model_name, name, MlflowException)


@pytest.mark.parametrize("name", [n for n in NAMES[:-1] if n != " "] + ["e" * 500, "e" * 501])
def test_experiment_names_follow_mlflows_rules(name):
    assert _accepts(check_experiment_name, name, ValueError) == _accepts(_validate_experiment_name, name, MlflowException)


def test_a_blank_experiment_name_is_refused_as_mlflow_318_does():
    """MLflow 3.18 refuses an experiment name of only spaces; 3.17 took it. The door follows
    the newer rule on every release the project allows."""
    for blank in (" ", "   ", "\u3000"):
        with pytest.raises(ValueError, match="blank"):
            check_experiment_name(blank)


def test_control_characters_are_refused_though_mlflow_takes_them():
    for check in (check_model_name, check_experiment_name):
        with pytest.raises(ValueError, match="control characters"):
            check("a\nb")


def test_a_name_never_becomes_a_path(tmp_path):
    store = Store(tmp_path)
    for bad in ("a/b", "../x", "..", "x\0y", ""):
        with pytest.raises(ValueError, match="not one plain path segment"):
            store.ref("select", bad)
    key = name_key("../../etc")
    assert len(key) == 16 and store.ref("select", key).path.parent == (tmp_path / "select").resolve()


def test_a_lock_whose_folder_keeps_disappearing_is_an_error_not_a_spin(tmp_path, monkeypatch):
    """The lock's folder removed each time right after it is made (a racing cleaner that always
    wins): a ``LockError`` after a bounded number of tries, not a loop at 100 % CPU for ever."""
    store = Store(tmp_path)
    ref = store.ref("select", name_key("sentiflow"))
    real_mkdir = Path.mkdir

    def mkdir_then_vanish(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self == ref.path.parent:
            self.rmdir()

    monkeypatch.setattr(Path, "mkdir", mkdir_then_vanish)
    with pytest.raises(LockError, match="keeps disappearing"):
        with store.lock(ref):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("name", ["a/b", "../x"])
def test_train_refuses_a_bad_model_name_at_once_and_creates_nothing(tmp_path, name):
    env = {**base_env(), "SENTIFLOW_DATA_ROOT": str(tmp_path / "data"), "PREFECT_HOME": prefect_home(tmp_path / "prefect")}
    (tmp_path / "work").mkdir()
    proc = subprocess.run([str(BIN / "sentiflow"), "train", "--model-name", name, "--max-epochs", "1"], env=env,
                          cwd=tmp_path / "work", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "names cannot contain '/'" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    made = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert made <= {"work", "prefect"}, made  # no data root built, nothing beside it (no ../x)
    assert not (tmp_path / "x").exists()
