"""One import package (issue 9): installed, the project answers to ``sentiflow`` alone, in the
editable install and in a built wheel; inference stands apart from training."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import importlib, json
out = {}
for name in ("tasks", "flows", "storage", "sentiflow", "sentiflow.tasks.core.inference", "sentiflow.flows.cli",
             "sentiflow.storage.store"):
    try:
        module = importlib.import_module(name)
        out[name] = getattr(module, "__file__", None) or list(module.__path__)[0]
    except ImportError:
        out[name] = None
print(json.dumps(out))
"""


def _probe(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([*args, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_editable_install_claims_only_sentiflow(tmp_path):
    found = _probe([sys.executable], cwd=tmp_path)  # a folder outside the checkout
    assert found["tasks"] is None and found["flows"] is None and found["storage"] is None
    assert found["sentiflow"] is not None
    assert found["sentiflow.tasks.core.inference"] == str(ROOT / "tasks" / "core" / "inference.py")
    assert found["sentiflow.flows.cli"] == str(ROOT / "flows" / "cli.py")


@pytest.mark.slow
def test_built_wheel_holds_one_top_level_package(tmp_path):
    import shutil

    src, wheels = tmp_path / "src", tmp_path / "wheels"  # built from a copy: no build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "flows", "tasks", "storage"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("sentiflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sentiflow", wheel.name.split("-")[0] + "-" +
                                                wheel.name.split("-")[1] + ".dist-info"}
    assert "sentiflow/tasks/core/inference.py" in names and "sentiflow/flows/cli.py" in names
    assert not [n for n in names if n.startswith("sentiflow/") and "tests" in n.split("/")]
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sentiflow = sentiflow.flows.cli:main" in entry

    # installed alone (python -S: no .pth file, so the editable install is out of sight)
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import site

    env = {"PYTHONPATH": ":".join([str(target), *site.getsitepackages()]), "PATH": "/usr/bin:/bin"}
    found = _probe([sys.executable, "-S"], cwd=tmp_path, env=env)
    assert found["tasks"] is None and found["flows"] is None and found["storage"] is None
    assert found["sentiflow.tasks.core.inference"] == str(target / "sentiflow" / "tasks" / "core" / "inference.py")
    assert found["sentiflow.flows.cli"] == str(target / "sentiflow" / "flows" / "cli.py")


def test_inference_imports_nothing_of_training_or_prefect():
    code = ("import sys, sentiflow.tasks.core.inference, sentiflow.tasks.scoring.serving; "
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'sentiflow.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = eval(proc.stdout.strip().splitlines()[-1])  # a printed list of module names
    assert not [m for m in loaded if m.startswith("prefect")]
    tasks = {m for m in loaded if m.startswith("sentiflow.tasks")}
    assert tasks <= {"sentiflow.tasks", "sentiflow.tasks.core", "sentiflow.tasks.core.inference",
                     "sentiflow.tasks.core.model", "sentiflow.tasks.core.rows", "sentiflow.tasks.core.text",
                     "sentiflow.tasks.stage",
                     "sentiflow.tasks.scoring", "sentiflow.tasks.scoring.serving"}, loaded


def test_score_key_follows_inference_not_training(monkeypatch):
    """Editing the training loop leaves a score key as it was; editing inference changes it."""
    from sentiflow.tasks.scoring import score
    from sentiflow.tasks.scoring.serving import ModelRef
    from tests.conftest import edit_module_source

    model = ModelRef(requested="models:/sentiflow@champion", uri="models:/sentiflow/1", model_uuid="u" * 32)
    before = score.spec(score.ScoreParams(), model, "parquet:abc").key
    with monkeypatch.context() as m:
        edit_module_source(m, "sentiflow.tasks.training.train")
        assert score.spec(score.ScoreParams(), model, "parquet:abc").key == before
    with monkeypatch.context() as m:
        edit_module_source(m, "sentiflow.tasks.core.inference")
        assert score.spec(score.ScoreParams(), model, "parquet:abc").key != before
    with monkeypatch.context() as m:
        edit_module_source(m, "sentiflow.tasks.training.batching")  # training batches
        assert score.spec(score.ScoreParams(), model, "parquet:abc").key == before


def test_credentials_never_shown_in_a_uri():
    from sentiflow.storage.redact import redact

    assert redact("http://alice:s3cret@mlflow:5000/api") == "http://alice:***@mlflow:5000/api"
    assert redact("https://tok3n@host/x") == "https://***@host/x"
    assert redact("postgresql://u:pw@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    for plain in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/mlruns"):
        assert redact(plain) == plain


def test_a_deployment_path_must_lie_in_the_configured_roots(tmp_path):
    from sentiflow.storage.settings import PathNotAllowed, Settings

    s = Settings(data_root=tmp_path / "data", path_roots=[tmp_path / "in"])
    for ok in (tmp_path / "data" / "x.parquet", tmp_path / "in" / "sub" / "r.csv", "stanfordnlp/imdb"):
        s.confine(str(ok), "source", dataset=True)
    with pytest.raises(PathNotAllowed, match="outside the folders"):  # an out is a path, never a dataset id
        s.confine("stanfordnlp/imdb", "out")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "escape").symlink_to("/etc")
    for bad in ("/etc/hostname", str(tmp_path / "in" / ".." / "other.parquet"), str(tmp_path / "in" / "escape" / "passwd"),
                "../x.parquet"):
        with pytest.raises(PathNotAllowed, match="outside the folders"):
            s.confine(bad, "source")
