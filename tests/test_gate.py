"""The champion gate compares like with like (issue 10): challenger and champion scored on the
same rows, each with its own vocabulary; a challenger trained on data unlike the champion's does
not take the alias; a champion that cannot be loaded is kept and reported.

A gate that knows an outage (issue 19): an MLflow server that stops answering while the champion
is read is waited out (retries) or ends the selection with no verdict written, so a rerun judges
again; only a champion really gone (files deleted, the stages of its own split pruned) is kept.
The gate reads and scores its rows a batch at a time, with the figures of the whole set.

Real Prefect (the data flow), real MLflow on temporary SQLite stores and a real ``mlflow server``
on loopback, real spaCy and Parquet."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from sentiflow.flows.data_flow import DataConfig, prepare_data
from sentiflow.flows.lifecycle import user_error_types
from sentiflow.storage.settings import Settings
from sentiflow.tasks.core.inference import Encoded, Scorer
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.text import TokenizeParams, Vocab
from sentiflow.tasks.release.errors import GONE, TRANSIENT, ChampionUnreachable, classify
from sentiflow.tasks.release.gate import GateParams, score_on, source_rows, split_rows
from sentiflow.tasks.release.select import VERSION_TAG, select
from sentiflow.tasks.scoring.serving import ModelError, resolve_model
from sentiflow.tasks.training.train import TrainConfig, TrainParams, train
from tests.conftest import NEUTRAL, write_imdb_folder
from tests.servers import base_env, free_port, process

# a small model of the seed's kind: one direction, its final state, random embeddings, a constant rate
SMALL = TrainConfig(model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.2, bidirectional=False, head="last",
                                     ngrams=0),
                    train=TrainParams(max_epochs=4, batch_size=16, lr=1e-2, pretrained=None, lr_schedule="constant",
                                      average=None))


def write_unlike_folder(folder: Path, n_train: int = 500, n_test: int = 200, seed: int = 9) -> Path:
    """Reviews unlike IMDb's: no sentiment words at all; the label is a marker token. A model
    trained here is perfect on its own splits and guesses on real reviews."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = [i % 2 for i in range(n)]
        texts = [" ".join([rng.choice(NEUTRAL) for _ in range(rng.randint(4, 20))] + ["zzpos" if y else "zzneg"])
                 for y in labels]
        pq.write_table(pa.table({"id": [f"u-{part}-{i}" for i in range(n)], "text": texts,
                                 "label": pa.array(labels, pa.int8())}), folder / f"{part}.parquet")
    return folder


def accuracy_by_hand(probs, labels) -> float:
    return float(np.mean((np.asarray(probs) > 0.5) == (np.asarray(labels) > 0.5)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_harness):
    """Two sources in one data root: IMDb-like reviews and unlike ones, each prepared."""
    base = tmp_path_factory.mktemp("gate")
    imdb = write_imdb_folder(base / "imdb", n_train=500, n_test=200, seed=3)
    unlike = write_unlike_folder(base / "unlike")
    root = base / "data"
    prepared = {name: prepare_data(config=DataConfig(source=str(src)), data_root=str(root), workers=1)
                for name, src in (("imdb", imdb), ("unlike", unlike))}
    return base, root, {"imdb": imdb, "unlike": unlike}, prepared


@pytest.fixture
def settings(world, tmp_path) -> Settings:
    _, root, _, _ = world
    return Settings(data_root=root, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="gate")


def fit_and_select(world, settings, name: str, config=SMALL, gate=GateParams()):
    _, _, sources, prepared = world
    data = prepared[name]
    result = train(config, data.encoded["train"], data.encoded["val"], data.vocab,
                   {"data.source": str(sources[name]), "key.encode_test": data.encoded["test"].key}, settings)
    return select(result, config, TokenizeParams(), data.vocab, data.encoded["val"], data.encoded["test"],
                  "sentiflow", settings, gate)


def test_a_challenger_trained_on_unlike_data_does_not_take_the_champion(world, settings):
    champion = fit_and_select(world, settings, "imdb")
    assert champion.alias == "champion" and champion.test_acc > 0.85

    challenger = fit_and_select(world, settings, "unlike")
    # what the old gate compared: the challenger's own best val_acc beats the champion's
    assert challenger.val_acc > champion.val_acc
    # on its own test split it wins; on the champion's test split it loses: not promoted
    g = challenger.gate
    assert g.main.challenger_acc > g.main.champion_acc
    assert g.guard is not None and g.guard.challenger_acc < g.guard.champion_acc
    assert g.guard.rows == 200 and g.main.rows == 200
    assert challenger.alias == "challenger" and not g.promote
    client = MlflowClient(settings.resolved_tracking_uri)
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == champion.version
    tags = client.get_model_version("sentiflow", challenger.version).tags
    assert tags["gate.decision"] == "keep champion"
    assert float(tags["gate.guard.champion_acc"]) == pytest.approx(g.guard.champion_acc)
    assert "not promoted" in client.get_model_version("sentiflow", challenger.version).description


def test_gate_figures_are_the_models_accuracies_on_the_same_rows(world, settings):
    """Recomputed independently: each registered model loaded through MLflow, fed the gate's
    raw texts."""
    import mlflow

    _, _, sources, _ = world
    fit_and_select(world, settings, "imdb")
    challenger = fit_and_select(world, settings, "unlike")
    test = pq.read_table(sources["unlike"] / "test.parquet").to_pydict()
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    for version, acc in (("1", challenger.gate.main.champion_acc), ("2", challenger.gate.main.challenger_acc)):
        model = mlflow.pyfunc.load_model(f"models:/sentiflow/{version}")
        probs = [r["prob_pos"] for r in model.predict(test["text"])]  # one record per row
        assert accuracy_by_hand(probs, test["label"]) == pytest.approx(acc, abs=1e-9)


def test_a_gate_source_judges_both_on_its_rows(world, settings):
    base, _, sources, _ = world
    fit_and_select(world, settings, "imdb")
    challenger = fit_and_select(world, settings, "unlike", gate=GateParams(source=str(sources["imdb"])))
    assert challenger.gate.main.on == f"source {sources['imdb']}" and challenger.gate.guard is None
    assert challenger.gate.main.rows == 200  # the source's test part
    assert challenger.gate.main.challenger_acc < challenger.gate.main.champion_acc
    assert challenger.alias == "challenger"


def test_a_better_challenger_must_win_by_the_margin(world, settings):
    weak = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 1, "lr": 1e-4}))
    first = fit_and_select(world, settings, "imdb", weak)
    assert first.alias == "champion"
    kept = fit_and_select(world, settings, "imdb", gate=GateParams(margin=0.9))
    assert kept.gate.main.challenger_acc > kept.gate.main.champion_acc and kept.alias == "challenger"
    assert kept.gate.guard is None  # the same test split: one comparison


def test_a_champion_that_cannot_be_loaded_is_kept_and_reported(world, settings):
    first = fit_and_select(world, settings, "imdb")
    client = MlflowClient(settings.resolved_tracking_uri)
    source = client.get_model_version("sentiflow", first.version).source
    import mlflow

    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    info = mlflow.models.get_model_info(source)
    artifacts = Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path)
    shutil.rmtree(artifacts)  # the champion's files are gone
    better = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 5}))
    second = fit_and_select(world, settings, "imdb", better)
    assert second.alias == "challenger" and not second.gate.promote
    assert "cannot be scored" in second.gate.reason and second.gate.champion_version == first.version
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == first.version


def test_on_the_test_split_the_gate_figure_is_the_test_accuracy(world, settings):
    """The challenger is not scored twice on the test split: its gate figure is its test_acc."""
    first = fit_and_select(world, settings, "imdb")
    assert first.gate.main.on.startswith("test split ") and first.gate.main.challenger_acc == first.test_acc


# -- the rows a batch at a time ---------------------------------------------------------------------

def random_scorer(vocab_file: Path, max_len: int | None, seed: int = 0) -> Scorer:
    """An untrained model on a prepared vocabulary: its figures are anything, and must be the
    same however the rows are cut."""
    torch.manual_seed(seed)
    vocab = Vocab.read(vocab_file)
    return Scorer(SentimentRNN(len(vocab), SMALL.model, pad_id=vocab.pad_id), vocab, TokenizeParams(), max_len)


def test_rows_scored_a_batch_at_a_time_give_the_figures_of_the_whole_set(world):
    """Against each whole set scored in one call: the split's encoding read at once
    (``Encoded.from_shards``), the source's texts read with pyarrow."""
    _, _, sources, prepared = world
    data = prepared["imdb"]
    scorer = random_scorer(data.vocab.file("vocab.parquet"), SMALL.train.max_len)
    test = pq.read_table(sources["imdb"] / "test.parquet").to_pydict()
    whole_texts = accuracy_by_hand(scorer.predict_proba(test["text"]), test["label"])
    encoded = Encoded.from_shards(data.encoded["test"].shards(), SMALL.train.max_len)
    whole_encoded = accuracy_by_hand(scorer.predict_encoded(encoded), encoded.labels)

    for batch_rows in (7, 64, 4096):
        rows = split_rows(data.encoded["test"], SMALL.train.max_len, batch_rows=batch_rows)
        sizes = [len(b.labels) for b in rows.batches()]
        assert sum(sizes) == rows.size == 200 and max(sizes) <= batch_rows
        on_ids, on_text = score_on(scorer, rows, True), score_on(scorer, rows, False)
        assert (on_ids.rows, on_ids.accuracy) == (200, whole_encoded)
        assert (on_text.rows, on_text.accuracy) == (200, whole_texts)
        source = source_rows(str(sources["imdb"]), batch_rows=batch_rows)
        assert max(len(b.labels) for b in source.batches()) <= batch_rows
        assert score_on(scorer, source, False).accuracy == whole_texts


# -- outage or gone: the classification, on real errors ------------------------------------------

def test_errors_are_told_apart_an_outage_from_a_champion_gone(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after backoff
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as refused:
        MlflowClient(nobody).get_run("0" * 32)
    assert classify(refused.value) == TRANSIENT
    mlflow.set_tracking_uri(nobody)
    mlflow.set_registry_uri(nobody)
    with pytest.raises(ModelError) as wrapped:  # serving's ModelError (a ValueError) around it
        resolve_model("models:/sentiflow/1")
    assert classify(wrapped.value) == TRANSIENT

    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(Exception) as no_run:
        store.get_run("0" * 32)
    assert classify(no_run.value) == GONE
    with pytest.raises(FileNotFoundError) as no_file:
        Scorer.from_files(tmp_path / "config.json", tmp_path / "vocab.parquet", tmp_path / "weights.pt")
    assert classify(no_file.value) == GONE
    (tmp_path / "weights.pt").write_bytes(b"not a state dict")
    with pytest.raises(Exception) as garbage:
        torch.load(tmp_path / "weights.pt", weights_only=True)
    assert classify(garbage.value) == GONE


# -- a champion gone: kept and reported -------------------------------------------------------------

def _input_stage(root: Path, stage: str, key: str, *wanted: str) -> tuple[str, str]:
    """The input of a stage folder made by one of ``wanted``, read from its manifest."""
    for token in json.loads((root / stage / key / "manifest.json").read_text())["inputs"]:
        name, _, rest = token.partition("/")
        if name in wanted:
            return name, rest.partition(":")[0]
    raise AssertionError(f"{stage} {key}: no {wanted} input")


def test_a_champion_whose_own_split_was_pruned_is_kept_and_reported(world, settings, tmp_path):
    _, root, _, prepared = world
    first = fit_and_select(world, settings, "imdb")
    # a copy of the data root where the reviews behind the champion's test split were deleted;
    # its encoding is still there, so the gate means to judge on it too
    pruned = tmp_path / "pruned"
    shutil.copytree(root, pruned)
    tokenize = _input_stage(pruned, "encode", prepared["imdb"].encoded["test"].key, "tokenize")
    raw = _input_stage(pruned, *tokenize, "ingest", "split")
    shutil.rmtree(pruned.joinpath(*raw))
    second = fit_and_select(world, settings.model_copy(update={"data_root": pruned}), "unlike")
    assert second.alias == "challenger" and not second.gate.promote
    assert second.gate.champion_version == first.version and second.gate.guard is None
    assert "cannot be scored" in second.gate.reason and f"{raw[0]} {raw[1]}" in second.gate.reason
    client = MlflowClient(settings.resolved_tracking_uri)
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == first.version
    assert client.get_model_version("sentiflow", second.version).tags["gate.decision"] == "keep champion"


# -- an outage while the champion is read -----------------------------------------------------------

def _mlflow_server(tmp: Path, port: int) -> list[str]:
    return [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", (tmp / "artifacts").as_uri(), "--serve-artifacts"]


@contextmanager
def stopped_at_download(server, back_after_first_retry: bool):
    """Stop the MLflow server (SIGSTOP to its process group: it accepts connections and answers
    nothing) when the gate starts downloading the champion's model; with
    ``back_after_first_retry``, continue it (SIGCONT) when the gate announces its first retry.
    While it is stopped, MLflow's own retries are off and its timeout short, so what rides the
    outage out is the gate's retrying (MLflow's retries would wait out a short one themselves)."""
    events: list[str] = []
    knobs = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    before = {k: os.environ.get(k) for k in knobs}

    def restore() -> None:
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "downloading its model" in message and not events:
                os.killpg(server.pid, signal.SIGSTOP)
                os.environ.update(knobs)
                events.append("stopped")
            elif "retry 1 of" in message and back_after_first_retry and events == ["stopped"]:
                os.killpg(server.pid, signal.SIGCONT)
                restore()
                events.append("continued")

    hook, logger = Hook(logging.DEBUG), logging.getLogger("sentiflow.champion")
    logger.addHandler(hook)
    try:
        yield events
    finally:
        logger.removeHandler(hook)
        os.killpg(server.pid, signal.SIGCONT)
        restore()


@pytest.mark.server
@pytest.mark.slow
def test_an_outage_reading_the_champion_is_no_verdict_and_one_that_passes_is_waited_out(world, tmp_path):
    """Against a real ``mlflow server``: stopped through the champion's download and past every
    retry, the selection ends with one clear line and writes nothing (no version, no verdict, no
    marker on the run); rerun with the server stopped through the first try only, the champion
    is downloaded on the second, judged, and the better challenger takes the alias."""
    _, root, sources, prepared = world
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with process(_mlflow_server(tmp_path, port), base_env(), tmp_path / "mlflow.log", f"{uri}/health") as server:
        settings = Settings(data_root=root, tracking_uri=uri, experiment="gate")
        weak = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 1, "lr": 1e-4}))
        first = fit_and_select(world, settings, "imdb", weak)
        assert first.alias == "champion"
        data = prepared["imdb"]
        result = train(SMALL, data.encoded["train"], data.encoded["val"], data.vocab,
                       {"data.source": str(sources["imdb"]), "key.encode_test": data.encoded["test"].key}, settings)

        def selection():
            return select(result, SMALL, TokenizeParams(), data.vocab, data.encoded["val"], data.encoded["test"],
                          "sentiflow", settings, GateParams())

        with stopped_at_download(server, back_after_first_retry=False) as events:
            with pytest.raises(ChampionUnreachable) as down:
                selection()
        assert events == ["stopped"]
        message = str(down.value)
        assert "\n" not in message and f"champion version {first.version}" in message
        assert "no verdict written" in message and "3 tries" in message
        assert isinstance(down.value, user_error_types())  # the command line: this one line, no traceback
        client = MlflowClient(uri)
        assert [v.version for v in client.search_model_versions("name = 'sentiflow'")] == [first.version]
        assert f"{VERSION_TAG}.sentiflow" not in client.get_run(result.run_id).data.tags
        assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == first.version

        with stopped_at_download(server, back_after_first_retry=True) as events:
            again = selection()
        assert events == ["stopped", "continued"]
        assert again.gate.champion_version == first.version and again.gate.champion_acc is not None
        assert "cannot be scored" not in again.gate.reason
        assert again.gate.main.challenger_acc > again.gate.main.champion_acc
        assert again.alias == "champion" and again.gate.promote
        assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == again.version
        assert client.get_run(result.run_id).data.tags[f"{VERSION_TAG}.sentiflow"] == again.version
