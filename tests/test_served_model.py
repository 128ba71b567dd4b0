"""The registered model as MLflow serves it (issue 9): a model from code that loads without
Prefect and without an installed sentiflow, answers ``mlflow models serve`` like ``sentiflow
predict``, and a training run that reads well in the MLflow UI (experiment kind, dataset inputs,
descriptions). One path from a raw value to a scored row (issue 17): ``sentiflow predict``,
``sentiflow score`` and ``mlflow models serve`` give hostile rows the same status, probability
and OOV share.

One tiny model is trained for the module through the real CLI in its own process (real Prefect
ephemeral server, real MLflow on a temporary SQLite store), and served once by ``mlflow models
serve`` for the module."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import STOP_GRACE, write_imdb_folder

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
CHAMPION = "models:/sentiflow@champion"
POSITIVE_REVIEW = "A wonderful, superb, moving and brilliant film."
NEGATIVE_REVIEW = "Awful, boring, dreadful and tedious."
REVIEWS = [POSITIVE_REVIEW, NEGATIVE_REVIEW, "   ", "the film"]


@dataclass
class Trained:
    root: Path
    uri: str
    env: dict[str, str]


def _env(root: Path, home: Path, api: str) -> dict[str, str]:
    """The commands' environment: the session's Prefect server (``api``, ``prefect_api``), so its
    PREFECT_HOME holds no database (no template copy)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "SENTIFLOW_", "PREFECT_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=api, SENTIFLOW_DATA_ROOT=str(root),
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_api) -> Trained:
    base = tmp_path_factory.mktemp("served")
    src = write_imdb_folder(base / "src", n_train=300, n_test=100, seed=4)
    env = _env(base / "data", base, prefect_api)
    proc = subprocess.run(
        [str(BIN / "sentiflow"), "train", "--source", str(src), "--max-epochs", "2", "--pretrained", "none", "--embed-dim", "16",
         "--hidden-dim", "16", "--batch-size", "16", "--lr", "0.02", "--workers", "1"],
        env=env, cwd=base, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Trained(base / "data", env["MLFLOW_TRACKING_URI"], env)


@pytest.fixture(scope="module")
def client(trained) -> MlflowClient:
    return MlflowClient(trained.uri, registry_uri=trained.uri)


@pytest.fixture(scope="module")
def model_dir(trained, client, tmp_path_factory) -> Path:
    import mlflow

    version = client.get_model_version_by_alias("sentiflow", "champion")
    dst = tmp_path_factory.mktemp("model")
    mlflow.set_tracking_uri(trained.uri)
    mlflow.set_registry_uri(trained.uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/sentiflow/{version.version}",
                                                    dst_path=str(dst)))


# -- a model from code -----------------------------------------------------------------------------

def test_champion_is_a_model_from_code_with_nothing_pickled(model_dir):
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc.get("model_code_path"), pyfunc
    assert "python_model" not in pyfunc  # no cloudpickled object
    files = [p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    # its code: tasks/core under the package name sentiflow, nothing generic, nothing else
    code = model_dir / pyfunc["code"]
    assert sorted(p.name for p in code.iterdir()) == ["sentiflow"]
    shipped = sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py"))
    core = sorted(f"sentiflow/tasks/core/{p.name}" for p in (ROOT / "tasks" / "core").glob("*.py"))
    assert shipped == ["sentiflow/tasks/__init__.py", *core]
    for name in shipped:
        text = (code / name).read_text()
        assert "prefect" not in text and "import mlflow" not in text


def test_requirements_are_inference_only(model_dir):
    reqs = [line.split("==")[0].strip().lower() for line in (model_dir / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert {"torch", "spacy", "numpy", "pyarrow", "mlflow"} <= set(reqs)
    assert not [r for r in reqs if r.startswith("prefect")]


LOAD_WITHOUT_PREFECT_OR_SENTIFLOW = """
import json, sys
sys.modules["prefect"] = None  # importing Prefect fails
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
records = model.predict(json.loads(sys.argv[2]))
import sentiflow.tasks
print(json.dumps({"records": records,
                  "sentiflow": list(sentiflow.tasks.__path__),
                  "loaded": sorted(m for m in sys.modules if m.startswith("sentiflow"))}))
"""


def test_model_loads_with_neither_prefect_nor_sentiflow_installed(model_dir, trained, predicted, tmp_path):
    """``python -S``: site-packages without its .pth files, so the editable sentiflow install is
    invisible; the model's own code is all there is of sentiflow."""
    import site

    env = {**trained.env, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    proc = subprocess.run([sys.executable, "-S", "-c", LOAD_WITHOUT_PREFECT_OR_SENTIFLOW, str(model_dir),
                           json.dumps(REVIEWS)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(p.startswith(str(model_dir)) for p in out["sentiflow"]), out["sentiflow"]
    assert "sentiflow.tasks.training.train" not in out["loaded"]
    # the same probabilities as the installed package gives (a 2-epoch model on 240 reviews: its
    # answers, not their quality, are what is checked here)
    want = predicted
    got = out["records"]
    assert [r["status"] for r in got] == [r["status"] for r in want] == ["ok", "ok", "empty", "ok"]
    assert got[2] == {"prob_pos": None, "status": "empty", "oov_share": None}  # blank: no probability
    for record, expected in zip(got, want):
        if expected["prob_pos"] is not None:
            assert record["prob_pos"] == pytest.approx(expected["prob_pos"], abs=1e-6)
            assert record["oov_share"] == pytest.approx(expected["oov_share"], abs=1e-9)


# -- mlflow models serve ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory) -> Callable[[dict], list]:
    """``mlflow models serve`` of the champion (``--env-manager local``: this venv, whose ``bin``
    is on PATH for its ``uvicorn``), for the module: a function that posts a request body to
    ``/invocations`` and returns the predictions."""
    folder = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = open(folder / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=trained.env, cwd=folder,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
            time.sleep(1)
        yield lambda payload: _post(f"http://127.0.0.1:{port}/invocations", payload)["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _predict_cli(trained: Trained) -> list[dict]:
    proc = subprocess.run([str(BIN / "sentiflow"), "predict", "--json", *REVIEWS], env=trained.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def predicted(trained) -> list[dict]:
    """``sentiflow predict --json`` of ``REVIEWS`` with the champion: the answers the other paths
    are compared with, from one run of the command for the module (the model does not change)."""
    return _predict_cli(trained)


def test_predict_runs_without_prefect(trained, predicted, tmp_path):
    """``sentiflow predict`` loads the model and scores without Prefect: with ``import prefect``
    made to fail (a ``sitecustomize``), it gives the same answers."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['prefect'] = None\n")
    env = {**trained.env, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([str(BIN / "sentiflow"), "predict", "--json", *REVIEWS], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert without == predicted
    check = subprocess.run([sys.executable, "-c", "import prefect"], env=env, capture_output=True, text=True)
    assert check.returncode != 0  # the block works


def test_mlflow_models_serve_answers_like_sentiflow_predict(predicted, served):
    answers = (served({"inputs": REVIEWS}),
               served({"dataframe_split": {"columns": ["text"], "data": [[r] for r in REVIEWS]}}))
    cli = predicted
    assert [c["status"] for c in cli] == ["ok", "ok", "empty", "ok"]
    for answer in answers:
        assert [a["status"] for a in answer] == [c["status"] for c in cli]
        assert answer[0]["prob_pos"] > 0.5 > answer[1]["prob_pos"]
        assert answer[2] == {"prob_pos": None, "status": "empty", "oov_share": None}  # JSON null
        for got, want in zip(answer, cli):
            if want["prob_pos"] is not None:
                assert got["prob_pos"] == pytest.approx(want["prob_pos"], abs=1e-6)
                assert got["oov_share"] == pytest.approx(want["oov_share"], abs=1e-9)


# -- one path from a raw value to a scored row: predict, score and the served model -----------------

MEGABYTE = "A wonderful and moving film, the actors superb. " * 21_000  # ~1 MB, one line
# name: (value over REST, line on predict's standard input, value in the score source); None in
# the first two: not expressible there (JSON has no bytes; a command line has no null or number)
HOSTILE = {
    "null": (None, None, None),
    "blank": ("   ", b"   ", "   "),
    "number": (5, None, 5),
    "megabyte": (MEGABYTE, MEGABYTE.encode(), MEGABYTE),
    "positive": (POSITIVE_REVIEW, POSITIVE_REVIEW.encode(), POSITIVE_REVIEW),
    "negative": (NEGATIVE_REVIEW, NEGATIVE_REVIEW.encode(), NEGATIVE_REVIEW),
    "unknown words": ("zyxw qvut wibble flimflam film", b"zyxw qvut wibble flimflam film",
                      "zyxw qvut wibble flimflam film"),
    "not UTF-8": (None, b"caf\xe9 au lait", b"caf\xe9 au lait"),
}
STATUS = {"null": "null", "blank": "empty", "number": "not_text", "megabyte": "ok", "positive": "ok",
          "negative": "ok", "unknown words": "out_of_domain", "not UTF-8": "not_text"}
MAX_OOV = "0.5"


def _score_source(folder: Path) -> list[str]:
    """The hostile rows as a Parquet folder that ``sentiflow score`` reads in file order: a text
    column (with the null), a column of numbers and one of bytes. Returns the rows' names in order."""
    folder.mkdir()
    files = {"test-0.parquet": (pa.string(), (str, type(None))), "test-1.parquet": (pa.int64(), int),
             "test-2.parquet": (pa.binary(), bytes)}
    names: list[str] = []
    for file, (kind, python) in files.items():
        rows = {n: v[2] for n, v in HOSTILE.items() if isinstance(v[2], python)}
        pq.write_table(pa.table({"text": pa.array(list(rows.values()), kind)}), folder / file)
        names += rows
    return names


def test_predict_score_and_served_model_give_a_row_the_same_answer(trained, served, tmp_path):
    """The same hostile rows three ways, each as its input can hold them, with ``max_oov`` 0.5:
    ``sentiflow predict --json`` (standard input), ``sentiflow score`` (a Parquet folder) and
    ``mlflow models serve`` (``inputs`` and ``dataframe_split``). Each row gets the same status,
    probability (to 1e-6) and OOV share everywhere; no row fails a request or a run."""
    assert len(MEGABYTE.encode()) >= 1_000_000
    answers: dict[str, dict[str, dict]] = {}  # path -> row name -> answer

    lines = {n: v[1] for n, v in HOSTILE.items() if v[1] is not None}
    proc = subprocess.run([str(BIN / "sentiflow"), "predict", "--json", "--max-oov", MAX_OOV],
                          input=b"\n".join(lines.values()) + b"\n", env=trained.env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert len(printed) == len(lines)
    answers["predict"] = dict(zip(lines, printed))

    names = _score_source(tmp_path / "src")
    out = tmp_path / "predictions.parquet"
    proc = subprocess.run([str(BIN / "sentiflow"), "score", "--source", str(tmp_path / "src"),
                           "--out", str(out), "--max-oov", MAX_OOV],
                          env=trained.env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pq.read_table(out).to_pylist()
    assert len(table) == len(names)
    answers["score"] = dict(zip(names, table))

    values = {n: v[0] for n, v in HOSTILE.items() if n != "not UTF-8"}
    params = {"max_oov": float(MAX_OOV)}
    framed = {"columns": ["text"], "data": [[v] for v in values.values()]}
    answers["serve inputs"] = dict(zip(values, served({"inputs": list(values.values()), "params": params})))
    answers["serve dataframe"] = dict(zip(values, served({"dataframe_split": framed, "params": params})))

    for path, rows in answers.items():
        assert {n: r["status"] for n, r in rows.items()} == {n: STATUS[n] for n in rows}, path
    reference = answers["serve inputs"] | {"not UTF-8": answers["score"]["not UTF-8"]}
    for path, rows in answers.items():
        for name, row in rows.items():
            want = reference[name]
            for key in ("prob_pos", "oov_share"):
                if want[key] is None:
                    assert row[key] is None, (path, name, key)
                else:
                    assert row[key] == pytest.approx(want[key], abs=1e-6), (path, name, key)
    assert reference["positive"]["prob_pos"] > 0.5 > reference["negative"]["prob_pos"]
    assert reference["unknown words"]["oov_share"] > float(MAX_OOV)


# -- what the MLflow UI shows ----------------------------------------------------------------------

def test_experiment_opens_as_model_training(client):
    exp = client.get_experiment_by_name("sentiflow")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_training_run_logs_its_encoded_stages_as_datasets(trained, client):
    version = client.get_model_version_by_alias("sentiflow", "champion")
    run = client.get_run(version.run_id)
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    manifests = {json.loads(p.read_text())["key"]: p.parent for p in trained.root.glob("encode/*/manifest.json")}
    for context, dataset in inputs.items():
        assert dataset.name == f"encode-{context}"
        assert dataset.digest in manifests  # the stage key, as the store names the folder
        source = json.loads(dataset.source)
        assert "src" in source.get("uri", "")  # the review source the stages came from
    assert run.data.params[f"key.encode_{'train'}"] == inputs["training"].digest


def test_registered_model_and_version_are_described(client, trained):
    model = client.get_registered_model("sentiflow")
    assert "sentiment" in model.description and "P(positive)" in model.description
    version = client.get_model_version_by_alias("sentiflow", "champion")
    text = version.description
    run = client.get_run(version.run_id)
    assert version.run_id in text and "val_acc" in text and "test_acc" in text
    assert run.data.params["key.vocab"] in text and run.data.params["data.source"] in text
    assert f"{float(version.tags['val_acc']):.4f}" in text
