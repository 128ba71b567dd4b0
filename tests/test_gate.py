"""The champion gate compares like with like (issue 10): challenger and champion scored on the
same rows, each with its own vocabulary; a challenger trained on data unlike the champion's does
not take the alias; a champion that cannot be loaded is kept and reported.

Real Prefect (the data flow), real MLflow on temporary SQLite stores, real spaCy and Parquet."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from sentiflow.flows.data_flow import DataConfig, prepare_data
from sentiflow.storage.settings import Settings
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.core.text import TokenizeParams
from sentiflow.tasks.release.gate import GateParams
from sentiflow.tasks.release.select import select
from sentiflow.tasks.training.train import TrainConfig, TrainParams, train
from tests.conftest import NEUTRAL, write_imdb_folder

# a small model of the seed's kind: one direction, its final state, random embeddings, a constant rate
SMALL = TrainConfig(model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.2, bidirectional=False, head="last"),
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
