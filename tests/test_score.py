"""Batch scoring (issue 4): the scoring core with an in-process model, the score flow under real
Prefect against a model trained and registered here (real MLflow on a temporary SQLite store),
one clear error for each bad input, and ``sentiflow predict`` in another process.

One tiny model is trained for the whole module (``trained``); the core tests need no MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sentiflow.tasks.core.inference import Scorer
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.rows import status_of
from sentiflow.tasks.data.sources import SourceError
from sentiflow.tasks.data.tokenize import TokenizeParams
from sentiflow.tasks.data.vocab import PAD, UNK, Vocab
from sentiflow.tasks.scoring.score import ScoreParams, score
from sentiflow.tasks.scoring.score_dask import ScorePart, ScoreWork, assemble, score_part
from sentiflow.tasks.scoring.score_sources import plan_parts
from sentiflow.tasks.scoring.serving import ModelError, load_scorer, resolve_model
from tests.conftest import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    make_reviews,
    read_artifacts,
    write_imdb_folder,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHAMPION = "models:/sentiflow@champion"


def read_predictions(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def ok_probs(pred: dict[str, list]) -> np.ndarray:
    return np.array([p for p, s in zip(pred["prob_pos"], pred["status"]) if s == "ok"], np.float64)


def served_probs(records: list[dict]) -> np.ndarray:
    """P(positive) per row of the served model's answer (NaN where it has none)."""
    return np.array([np.nan if r["prob_pos"] is None else r["prob_pos"] for r in records], np.float64)


def recount(pred: dict[str, list]) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] of the scored, labeled rows of a predictions table."""
    cm = [[0, 0], [0, 0]]
    for p, y, s in zip(pred["pred"], pred["label"], pred["status"]):
        if s == "ok" and y is not None:
            cm[y][p] += 1
    return cm


# -- the scoring core, with a model built here ----------------------------------------------------

@pytest.fixture(scope="module")
def scorer() -> Scorer:
    """An untrained network over a small vocabulary: its outputs differ from review to review,
    which is all the comparisons need. ``max_len`` as a model trained with ``--max-len`` has it:
    the 1 MB review is tokenized whole, then cut (an LSTM over its ~200,000 tokens takes about a
    minute on this CPU)."""
    torch.manual_seed(7)
    vocab = Vocab([UNK, PAD, *POSITIVE, *NEGATIVE, *NEUTRAL, "<", ">", "br", "b", "/", "&", "amp", ";",
                   "фильм", "отличный", "😀"])
    net = SentimentRNN(len(vocab), ModelParams(embed_dim=8, hidden_dim=8, bidirectional=False, head="last+max",
                                               dropout=0.0), pad_id=vocab.pad_id)
    return Scorer(net, vocab, TokenizeParams(), max_len=400)


BIG = " ".join(["the", "plot", "was", "great", "but", "the", "actors", "were", "boring"] * 26_000)
HARD = [  # (text, status)
    ("A great and moving film.", "ok"),
    (None, "null"),
    ("", "empty"),
    ("   \n\t ", "empty"),
    (BIG, "ok"),
    ("😀😀 great 👍🏽 film 🎬", "ok"),
    ("Фильм отличный, актёры прекрасны.", "ok"),
    ("这部电影很好看。演员很棒。", "ok"),
    ("الفيلم رائع والممثلون ممتازون", "ok"),
    ("Great<br /><br />film, <b>bold</b> &amp; tedious &lt;3", "ok"),
    ("awful", "ok"),
    ("boring dreadful clumsy", "ok"),
]


def test_every_row_kept_in_order_with_status_and_model_probability(scorer, tmp_path):
    assert len(BIG.encode()) >= 1_000_000
    ids = [f"z{i:02d}" for i in range(len(HARD))][::-1]  # not sorted: order is the file's
    src = tmp_path / "hard.parquet"
    pq.write_table(pa.table({"id": ids, "text": pa.array([t for t, _ in HARD], pa.string())}), src,
                   row_group_size=5)
    expected = scorer.predict_proba([t for t, s in HARD if s == "ok"]).astype(np.float64)
    threshold = float(np.median(expected))  # some rows on each side
    out = tmp_path / "out"
    out.mkdir()
    stats = score(scorer, str(src), out, ScoreParams(threshold=threshold), workers=1, batch_rows=4)

    pred = read_predictions(out / "predictions.parquet")
    assert list(pred) == ["id", "prob_pos", "pred", "status", "oov_share"]  # no label column: the source has none
    assert pred["id"] == ids
    assert pred["status"] == [s for _, s in HARD]
    for p, y, s in zip(pred["prob_pos"], pred["pred"], pred["status"]):
        assert (p is None) == (y is None) == (s != "ok")
    np.testing.assert_allclose(ok_probs(pred), expected, atol=1e-6)
    assert [y for y in pred["pred"] if y is not None] == [int(p > threshold) for p in ok_probs(pred)]
    assert 0 < sum(y for y in pred["pred"] if y is not None) < len(expected)
    saved = json.loads((out / "stats.json").read_text())
    assert saved["rows"] == stats.rows == len(HARD)
    assert saved["statuses"] == {"ok": 9, "null": 1, "empty": 2, "not_text": 0, "out_of_domain": 0}
    assert [o is None for o in pred["oov_share"]] == [s != "ok" for s in pred["status"]]
    assert saved["labeled"] is False and saved["labeled_rows"] == 0


def _labeled_source(path: Path) -> pa.Table:
    """40 reviews with labels, some rows that cannot be scored and some without a label."""
    t = make_reviews(40, seed=5).to_pydict()
    t["text"][3], t["text"][17], t["text"][30] = None, "  ", ""
    t["label"][5], t["label"][3], t["label"][22] = None, None, None
    table = pa.table({"id": t["id"], "text": t["text"], "label": pa.array(t["label"], pa.int8())})
    pq.write_table(table, path, row_group_size=9)
    return table


def test_batches_and_worker_processes_change_nothing(scorer, tmp_path):
    src = tmp_path / "labeled.parquet"
    table = _labeled_source(src)
    outs = {}
    for name, workers, batch_rows in (("one", 1, 2048), ("many", 2, 7)):
        outs[name] = tmp_path / name
        outs[name].mkdir()
        score(scorer, str(src), outs[name], ScoreParams(), workers=workers, batch_rows=batch_rows)
    one, many = (pq.read_table(outs[n] / "predictions.parquet") for n in ("one", "many"))
    meta = pq.ParquetFile(outs["many"] / "predictions.parquet").metadata  # one row group per batch
    assert meta.num_row_groups >= 6 and max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 7
    assert one.schema.equals(many.schema)
    pred, pred_many = one.to_pydict(), many.to_pydict()
    for column in ("id", "pred", "label", "status"):
        assert pred[column] == pred_many[column], column
    # batches of other lengths may round the last bit differently
    np.testing.assert_allclose(ok_probs(pred_many), ok_probs(pred), atol=1e-6)
    assert pred["id"] == table.column("id").to_pylist()
    assert pred["label"] == table.column("label").to_pylist()
    assert [s for s in pred["status"] if s != "ok"] == ["null", "empty", "empty"]
    texts = [t for t, s in zip(table.column("text").to_pylist(), pred["status"]) if s == "ok"]
    np.testing.assert_allclose(ok_probs(pred), scorer.predict_proba(texts), atol=1e-6)
    for folder in outs.values():
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["labeled"] is True
        assert stats["confusion"] == recount(pred)
        assert stats["labeled_rows"] == sum(map(sum, recount(pred))) == 40 - 3 - 2  # 3 not ok, 2 more unlabeled


def test_text_column_of_numbers_is_not_text_for_every_row(scorer, tmp_path):
    src = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": [1, 2, 3], "label": [0, 1, 1]}), src)
    out = tmp_path / "out"
    out.mkdir()
    stats = score(scorer, str(src), out, ScoreParams(), workers=1, batch_rows=2)
    pred = read_predictions(out / "predictions.parquet")
    assert pred["id"] == ["a", "b", "c"] and pred["status"] == ["not_text"] * 3
    assert pred["prob_pos"] == pred["pred"] == [None] * 3
    assert stats.statuses["not_text"] == 3 and stats.labeled_rows == 0 and stats.metrics() is None


@pytest.mark.parametrize("name", ["empty.parquet", "header-only.csv", "empty.txt"])
def test_source_without_rows_gives_an_empty_predictions_file(scorer, tmp_path, name):
    src = tmp_path / name
    if name.endswith("parquet"):
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                                 "label": pa.array([], pa.int8())}), src)
    else:
        src.write_text("id,text,label\n" if name.endswith("csv") else "")
    out = tmp_path / "out"
    out.mkdir()
    stats = score(scorer, str(src), out, ScoreParams(), workers=2)
    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == 0 == stats.rows and stats.metrics() is None
    assert table.column_names == (["id", "prob_pos", "pred", "status", "oov_share"] if name.endswith("txt")
                                  else ["id", "prob_pos", "pred", "label", "status", "oov_share"])


def test_binary_text_column_and_text_file(scorer, tmp_path):
    src = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"text": pa.array([b"great film", b"caf\xe9", None, "жёлтый 😀".encode()],
                                              pa.binary())}), src)
    out = tmp_path / "out"
    out.mkdir()
    score(scorer, str(src), out, ScoreParams(), workers=1)
    pred = read_predictions(out / "predictions.parquet")
    assert pred["status"] == ["ok", "not_text", "null", "ok"]
    np.testing.assert_allclose(ok_probs(pred), scorer.predict_proba(["great film", "жёлтый 😀"]), atol=1e-6)

    txt = tmp_path / "reviews.txt"
    txt.write_bytes(b"great film\r\n\r\nawful\xff\nawful boring\n")
    out2 = tmp_path / "out2"
    out2.mkdir()
    score(scorer, str(txt), out2, ScoreParams(), workers=1, batch_rows=2)
    pred = read_predictions(out2 / "predictions.parquet")
    assert pred["id"] == ["line-1", "line-2", "line-3", "line-4"]
    assert pred["status"] == ["ok", "empty", "not_text", "ok"]
    np.testing.assert_allclose(ok_probs(pred), scorer.predict_proba(["great film", "awful boring"]), atol=1e-6)


def _model_files(scorer: Scorer, folder: Path) -> dict[str, str]:
    """The scorer as the files a registered model carries (config, vocab, weights)."""
    folder.mkdir()
    files = {"config": folder / "config.json", "vocab": folder / "vocab.parquet", "weights": folder / "weights.pt"}
    files["config"].write_text(json.dumps({"model": scorer.net.params.model_dump(mode="json"),
                                           "tokenize": scorer.tokenize.model_dump(mode="json"),
                                           "max_len": scorer.max_len}))
    scorer.vocab.write(files["vocab"])
    torch.save(scorer.net.state_dict(), files["weights"])
    return {k: str(v) for k, v in files.items()}


def test_parts_scored_apart_then_assembled_are_the_whole(scorer, tmp_path):
    """What each Dask task does, without Dask: the source cut into parts (row groups of 9, two a
    part), each scored on its own, in reverse order, then assembled: the same file as one run."""
    src = tmp_path / "labeled.parquet"
    _labeled_source(src)
    whole = tmp_path / "whole"
    whole.mkdir()
    score(scorer, str(src), whole, ScoreParams(), workers=1, batch_rows=7)
    folder = tmp_path / "work"
    files = _model_files(scorer, folder)
    labeled, ranges = plan_parts(str(src), "auto", part_rows=18)
    assert labeled and [r.span for r in ranges] == [(0, 18), (18, 36), (36, 40)]
    work = ScoreWork(folder=str(folder), labeled=True, started=time.time(),
                     parts=[ScorePart(index=i, folder=str(folder), model_files=files, labeled=True, source=r)
                            for i, r in enumerate(ranges)])
    for part in reversed(work.parts):  # Dask runs them in any order
        score_part(part, ScoreParams(), batch_rows=7)
    out = tmp_path / "assembled"
    out.mkdir()
    stats = assemble(work, out)
    expected, got = pq.read_table(whole / "predictions.parquet"), pq.read_table(out / "predictions.parquet")
    assert got.schema.equals(expected.schema)
    for column in ("id", "pred", "label", "status"):
        assert got.column(column).equals(expected.column(column)), column
    np.testing.assert_allclose(ok_probs(got.to_pydict()), ok_probs(expected.to_pydict()), atol=1e-6)
    saved = json.loads((whole / "stats.json").read_text())
    assert stats.rows == saved["rows"] == 40 and stats.statuses == saved["statuses"]
    assert stats.confusion == saved["confusion"] and stats.labeled_rows == saved["labeled_rows"]
    assert json.loads((out / "stats.json").read_text())["confusion"] == saved["confusion"]
    work.discard()
    assert not folder.exists()


# -- a model trained and registered with the train flow -------------------------------------------

@dataclass
class Trained:
    root: Path  # the data root: stage store and mlflow.db
    src: Path  # the training source: train.parquet, test.parquet
    uri: str  # the MLflow tracking URI
    version: str  # registered version of sentiflow holding @champion


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness) -> Trained:
    from sentiflow.flows.data_flow import DataConfig
    from sentiflow.flows.train_flow import TrainFlowConfig, train_flow
    from sentiflow.tasks.training.train import TrainParams

    base = tmp_path_factory.mktemp("score")
    src = write_imdb_folder(base / "src", n_train=200, n_test=30, seed=11)
    config = TrainFlowConfig(data=DataConfig(source=str(src)),
                             model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.0, bidirectional=False,
                                               head="last+max"),
                             train=TrainParams(max_epochs=2, batch_size=16, lr=2e-2, pretrained=None,
                                               lr_schedule="constant", average=None))
    outcome = train_flow(config=config, data_root=str(base / "data"), workers=1)
    assert outcome.selected.alias == "champion"
    return Trained(base / "data", src, outcome.tracking_uri, outcome.selected.version)


@pytest.fixture(scope="module")
def champion_pyfunc(trained):
    mlflow.set_tracking_uri(trained.uri)
    return mlflow.pyfunc.load_model(CHAMPION)


@pytest.fixture(scope="module")
def first_score(trained):
    """The training source's test part, scored once by the flow (the cached-encode path)."""
    from sentiflow.flows.score_flow import ScoreConfig, score_flow

    return score_flow(config=ScoreConfig(model=CHAMPION, source=str(trained.src)), data_root=str(trained.root),
                      workers=1)


def test_flow_gives_the_registered_models_probabilities(trained, champion_pyfunc, first_score, tmp_path):
    from sentiflow.flows.score_flow import ScoreConfig, score_flow

    test = pq.read_table(trained.src / "test.parquet").to_pydict()
    expected = served_probs(champion_pyfunc.predict(test["text"]))

    # the source the model was trained on: its encoded test part is scored, nothing tokenized
    assert first_score.stats.reused is not None
    assert first_score.model.uri == f"models:/sentiflow/{trained.version}"
    pred = read_predictions(Path(first_score.predictions))
    assert pred["id"] == test["id"] and pred["label"] == test["label"]
    assert pred["status"] == ["ok"] * len(test["id"])
    np.testing.assert_allclose(pred["prob_pos"], expected, atol=1e-6)

    # the same reviews as a CSV file: read, tokenized and encoded as they stream
    csv = tmp_path / "same.csv"
    pacsv.write_csv(pq.read_table(trained.src / "test.parquet"), csv)
    streamed = score_flow(config=ScoreConfig(model=CHAMPION, source=str(csv)), data_root=str(trained.root),
                          workers=2)
    assert streamed.stats.reused is None
    assert streamed.stage.key != first_score.stage.key
    pred2 = read_predictions(Path(streamed.predictions))
    assert pred2["id"] == test["id"] and pred2["label"] == test["label"]
    np.testing.assert_allclose(pred2["prob_pos"], expected, atol=1e-6)
    assert pred2["pred"] == pred["pred"] == [int(p > 0.5) for p in expected]
    assert 0 < sum(pred["pred"]) < len(pred["pred"])  # the model tells reviews apart

    # and as a text file, one review per line: no labels, so no evaluation
    txt = tmp_path / "same.txt"
    txt.write_text("".join(f"{t}\n" for t in test["text"]))
    plain = score_flow(config=ScoreConfig(model=CHAMPION, source=str(txt)), data_root=str(trained.root),
                       workers=1)
    pred3 = read_predictions(Path(plain.predictions))
    assert list(pred3) == ["id", "prob_pos", "pred", "status", "oov_share"]
    assert pred3["id"] == [f"line-{n}" for n in range(1, len(test["id"]) + 1)]
    np.testing.assert_allclose(pred3["prob_pos"], expected, atol=1e-6)
    assert plain.stats.labeled_rows == 0 and plain.stats.metrics() is None
    # no labels: the run holds the drift figures alone (the model carries its training statistics)
    metrics = MlflowClient(trained.uri).get_run(plain.evaluation_run_id).data.metrics
    assert "drift_length_psi" in metrics and "accuracy" not in metrics


def test_evaluation_run_linked_to_the_model_and_rerun_is_cached(trained, first_score, tmp_path):
    from sentiflow.flows.score_flow import KEY_TAG, ScoreConfig, score_flow

    client = MlflowClient(trained.uri)
    run_id = first_score.evaluation_run_id
    assert run_id and first_score.state == "Completed"
    run = client.get_run(run_id)
    metrics = run.data.metrics
    assert {"accuracy", "precision", "recall", "f1", "rows", "reviews_per_second"} <= set(metrics)
    assert metrics["rows"] == 30 and metrics["reviews_per_second"] > 0
    assert run.data.tags["sentiflow.model_version"] == trained.version
    assert "confusion_matrix.json" in {a.path for a in client.list_artifacts(run_id)}
    matrix = mlflow.artifacts.load_dict(f"runs:/{run_id}/confusion_matrix.json")["matrix"]

    pred = read_predictions(Path(first_score.predictions))
    assert matrix == recount(pred)
    correct = [p == y for p, y in zip(pred["pred"], pred["label"])]
    assert metrics["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-9)

    # the figures are the logged model's too: they show on its page (and its version's)
    model_id = first_score.model.model_id
    assert client.get_model_version("sentiflow", trained.version).source == f"models:/{model_id}"
    linked = client.get_logged_model(model_id).metrics or []
    assert any(m.key == "accuracy" and m.run_id == run_id and m.value == metrics["accuracy"] for m in linked)

    summaries = [a.data for a in read_artifacts("scoring-summary") if run_id in a.data]
    assert summaries and "| ok | 30 |" in summaries[0]

    # the same scoring again: served from the store, the same evaluation run, nothing new logged
    out = tmp_path / "export" / "predictions.parquet"
    again = score_flow(config=ScoreConfig(model=CHAMPION, source=str(trained.src), out=str(out)),
                       data_root=str(trained.root), workers=1)
    assert again.state == "Cached"
    assert again.evaluation_run_id == run_id
    runs = client.search_runs([run.info.experiment_id], f"tags.`{KEY_TAG}` = '{first_score.stage.key}'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert again.predictions == str(out.resolve())
    assert pq.read_table(out).equals(pq.read_table(first_score.predictions))
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.parquet"]  # no temp file left


# -- one clear error each -------------------------------------------------------------------------

class _NotSentiment(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def foreign_model(trained) -> str:
    """A model of another task in the same registry: a pyfunc with no artifacts."""
    mlflow.set_tracking_uri(trained.uri)
    mlflow.set_registry_uri(trained.uri)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("sentiflow").experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=_NotSentiment(), pip_requirements=["mlflow"],
                                       registered_model_name="other-task")
    return f"models:/other-task/{info.registered_model_version}"


@pytest.mark.parametrize("uri, fragment", [
    ("models:/no-such-model@champion", "not found"),
    ("models:/sentiflow@no-such-alias", "not found"),
    ("models:/sentiflow/99", "not found"),
    ("sentiflow", "expected models:/"),
    ("models:/a/b/c", "expected models:/"),
    ("runs:/0123456789abcdef0123456789abcdef/model", "cannot be read"),
])
def test_bad_model_uri_is_a_model_error(trained, uri, fragment):
    mlflow.set_tracking_uri(trained.uri)
    with pytest.raises(ModelError, match=fragment) as e:
        resolve_model(uri)
    assert repr(uri) in str(e.value)


def test_model_of_another_task_is_refused(trained, foreign_model):
    mlflow.set_tracking_uri(trained.uri)
    with pytest.raises(ModelError, match="not a sentiflow model"):
        resolve_model(foreign_model)
    run_id = MlflowClient(trained.uri).get_model_version("other-task", foreign_model.rsplit("/", 1)[1]).run_id
    with pytest.raises(ModelError, match="not a sentiflow model"):
        resolve_model(f"runs:/{run_id}/model")
    assert resolve_model(CHAMPION).version == trained.version  # the registry itself is fine


def test_cli_out_naming_a_folder(trained, first_score, cli, tmp_path):
    """``--out`` naming an existing folder: the file goes into it, or one clear error; never a
    traceback."""
    from sentiflow.flows.cli import app

    folder = tmp_path / "results"
    folder.mkdir()
    result = cli.invoke(app, ["score", "--source", str(trained.src), "--out", str(folder),
                              "--data-root", str(trained.root)])
    if result.exit_code == 0:
        assert [p.name for p in folder.iterdir()] == ["predictions.parquet"]
    else:
        _assert_one_error_line(result, str(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no temp file left beside it


@pytest.mark.parametrize("form", ["version", "runs", "logged-model", "folder"])
def test_other_uri_forms_resolve_to_the_same_model(trained, champion_pyfunc, tmp_path, form):
    """models:/NAME/VERSION, runs:/RUN_ID/model, MLflow 3's models:/MODEL_ID (the version's
    source) and a downloaded model folder: the champion's model, scoring as it does."""
    mlflow.set_tracking_uri(trained.uri)
    champion = resolve_model(CHAMPION)
    mv = MlflowClient(trained.uri).get_model_version("sentiflow", trained.version)
    uri = {"version": f"models:/sentiflow/{trained.version}", "runs": f"runs:/{mv.run_id}/model",
           "logged-model": mv.source,
           "folder": lambda: mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "m"))}[form]
    uri = uri() if callable(uri) else uri
    ref = resolve_model(uri)
    assert ref.model_uuid == champion.model_uuid and ref.requested == uri
    texts = ["A wonderful, superb film.", "Dreadful and boring."]
    probs = load_scorer(ref, tmp_path / "dl").predict_proba(texts)
    np.testing.assert_allclose(probs, served_probs(champion_pyfunc.predict(texts)), atol=1e-6)


@pytest.fixture
def cli(trained, monkeypatch):
    """The CLI with the trained data root (restored afterwards)."""
    monkeypatch.setenv("SENTIFLOW_DATA_ROOT", str(trained.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner()


def _assert_one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_cli_bad_models_and_sources(trained, foreign_model, cli, tmp_path):
    from sentiflow.flows.cli import app

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not a parquet file\x00\xff" * 20)
    good = ["--data-root", str(trained.root)]
    cases = [
        (["score", "--model", "models:/sentiflow@nope", "--source", str(trained.src)], ["not found"]),
        (["score", "--model", "models:/a/b/c", "--source", str(trained.src)], ["expected models:/"]),
        (["score", "--model", foreign_model, "--source", str(trained.src)], ["not a sentiflow model"]),
        (["score", "--source", str(garbage)], [str(garbage), "cannot be read"]),
        (["score", "--source", str(tmp_path / "missing.parquet")], ["missing.parquet"]),
        (["predict", "--model", "models:/nope@champion", "a review"], ["not found"]),
    ]
    for args, fragments in cases:
        _assert_one_error_line(cli.invoke(app, [*args, *good]), *fragments)


def test_cli_score_prints_metrics_and_writes_out(trained, first_score, cli, tmp_path):
    from sentiflow.flows.cli import app

    out = tmp_path / "cli.parquet"
    result = cli.invoke(app, ["score", "--source", str(trained.src), "--out", str(out),
                              "--data-root", str(trained.root)])
    assert result.exit_code == 0, result.output
    assert f"models:/sentiflow@champion → models:/sentiflow/{trained.version}" in result.output
    assert "(cached)" in result.output and first_score.evaluation_run_id in result.output
    assert f"accuracy {first_score.stats.metrics()['accuracy']:.4f}" in result.output
    assert pq.read_table(out).equals(pq.read_table(first_score.predictions))


def test_flow_unreadable_source_is_a_source_error(trained, tmp_path):
    from sentiflow.flows.score_flow import ScoreConfig, score_flow

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    for source in (garbage, tmp_path / "missing.parquet"):
        with pytest.raises(SourceError, match=source.name):
            score_flow(config=ScoreConfig(model=CHAMPION, source=str(source)), data_root=str(trained.root),
                       workers=1)


# -- another process: the alias resolved from the registry alone ----------------------------------

def test_predict_in_another_process_resolves_the_alias(trained, champion_pyfunc):
    """A new process that knows only the tracking URI finds the champion by its alias."""
    texts = ["A wonderful, superb and moving film.", "Awful. Boring and tedious.", "",
             "Фильм 😀 — 日本語 <br />&amp;"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.uri, "SENTIFLOW_DATA_ROOT": str(trained.root)}
    proc = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", "predict", "--model", CHAMPION, "--json", *texts],
                          check=False, capture_output=True, encoding="utf-8", env=env, cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == texts
    assert [r["status"] for r in rows] == ["ok", "ok", "empty", "ok"]
    ok = [t for t in texts if status_of(t) == "ok"]
    expected = served_probs(champion_pyfunc.predict(ok))
    np.testing.assert_allclose([r["prob_pos"] for r in rows if r["status"] == "ok"], expected, atol=1e-6)
    assert rows[2]["prob_pos"] is None and rows[2]["label"] is None
    assert [r["label"] for r in rows if r["status"] == "ok"] == \
        ["positive" if p > 0.5 else "negative" for p in expected]


@pytest.mark.parametrize("args", [[], ["-"]])
def test_predict_reads_standard_input(trained, champion_pyfunc, cli, args):
    """One review per line (LF or CRLF); an empty line keeps its place."""
    from sentiflow.flows.cli import app

    ok = ["A wonderful, superb and moving film.", "Awful. Boring and tedious.", "Фильм 😀 — 日本語"]
    stdin = f"{ok[0]}\r\n\n" + "".join(f"{t}\n" for t in ok[1:])
    result = cli.invoke(app, ["predict", "--model", CHAMPION, "--json", *args], input=stdin)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == [ok[0], "", *ok[1:]]
    assert [r["status"] for r in rows] == ["ok", "empty", "ok", "ok"]
    np.testing.assert_allclose([r["prob_pos"] for r in rows if r["status"] == "ok"],
                               served_probs(champion_pyfunc.predict(ok)), atol=1e-6)


def test_evaluation_run_logs_the_scored_rows_as_its_dataset(trained, first_score):
    """The evaluation run's Dataset column: the score stage (its key as digest), from the source."""
    client = MlflowClient(trained.uri)
    run = client.get_run(first_score.evaluation_run_id)
    (entry,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "evaluation"
    assert entry.dataset.digest == first_score.stage.key and entry.dataset.name == "score-evaluation"
    assert str(trained.src.resolve()) in entry.dataset.source
