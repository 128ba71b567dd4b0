"""The train flow under real Prefect and real MLflow: data (cached) → train → select, with a
summary artifact; a rerun reuses the finished run and registers nothing new. The flow applies a
preset, the values given winning; ``TrainConfig()`` is what ``sentiflow train`` trains."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sentiflow.flows.data_flow import DataConfig
from sentiflow.flows.runs import with_settings
from sentiflow.flows.train_flow import PRESET_TAG, TrainFlowConfig, train_flow
from sentiflow.storage.settings import Settings
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.training.train import TrainConfig, TrainParams
from tests.conftest import read_artifacts, write_imdb_folder
from tests.test_data_flow import flow_run_parameters

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_train_flow_end_to_end_and_rerun(tmp_path):
    """A small model of the seed's kind: the preset ``seed`` (one direction, random embeddings,
    a constant rate, no averaging) under the values given here, which win over it."""
    src = write_imdb_folder(tmp_path / "src", n_train=300, n_test=100, seed=4)
    config = TrainFlowConfig(
        preset="seed",
        data=DataConfig(source=str(src)),
        model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.1, head="last+max"),
        train=TrainParams(max_epochs=3, batch_size=16, lr=1e-2),
    )
    root = str(tmp_path / "data")
    first = train_flow(config=config, data_root=root, workers=1)
    assert first.tracking_uri == f"sqlite:///{(tmp_path / 'data' / 'mlflow.db').resolve()}"
    assert (first.selected.version, first.selected.alias) == ("1", "champion")
    assert 1 <= first.selected.best_epoch <= 3
    client = MlflowClient(first.tracking_uri)
    run = client.get_run(first.train.run_id)
    assert run.data.params["key.encode_train"] == first.data.encoded["train"].key
    assert run.data.params["tokenize.html_breaks"] == "space"
    # given here (over the preset's 100 and "last"), from the preset, and the defaults
    assert (run.data.params["model.embed_dim"], run.data.params["model.head"]) == ("16", "last+max")
    assert [run.data.params[f"model.{k}"] for k in ("bidirectional", "ngrams")] == ["False", "0"]
    assert [run.data.params[f"train.{k}"] for k in ("pretrained", "lr_schedule", "average")] == \
        ["None", "constant", "None"]
    assert run.data.tags[PRESET_TAG] == "seed"
    assert "test_acc" in run.data.metrics
    markdown = [a.data for a in read_artifacts("training-summary") if first.train.run_id in a.data]
    assert markdown and f"Best epoch **{first.selected.best_epoch}**" in markdown[0]
    assert markdown[0].count("\n| ") == 3 + 1  # header + one row per epoch

    # again, as the CLI runs it: with its settings (the same store), which are no flow parameter
    settings = Settings(data_root=tmp_path / "data", workers=1, tracking_uri=first.tracking_uri)
    state = with_settings(train_flow, settings)(config=config, return_state=True)
    again = state.result()
    assert set(again.data.states.values()) == {"Cached"}
    assert again.train.run_id == first.train.run_id and again.selected.version == "1"
    assert [v.version for v in client.search_model_versions("name='sentiflow'")] in (["1"], [1])
    params = flow_run_parameters(state.state_details.flow_run_id)
    assert set(params) == {"config", "data_root", "force", "workers"} and params["data_root"] is None
    assert first.tracking_uri not in str(params)


def test_the_pipeline_default_model_has_one_home():
    """The params' own defaults are the pipeline's model (docs/benchmarks.md): a max-pooled LSTM
    on 50-d GloVe vectors beside an n-gram term over words, word pairs and triples (2^23 buckets,
    fitted for 3 epochs at 0.002), the RNN trained on what the term misses (2 out-of-fold fits),
    3 epochs, a cosine rate, averaged weights; the flow's form holds them as they are."""
    assert TrainFlowConfig().model == ModelParams() == ModelParams(
        embed_dim=50, hidden_dim=128, cell="lstm", layers=1, bidirectional=False, dropout=0.3, head="max", ngrams=3,
        ngram_buckets=1 << 23)
    assert TrainFlowConfig().train == TrainParams()
    assert (TrainParams().pretrained, TrainParams().lr_schedule, TrainParams().average) == ("glove-6b-50d", "cosine", 0.998)
    assert (TrainParams().max_epochs, TrainParams().rnn_target, TrainParams().ngram_folds) == (3, "residual", 2)
    assert (TrainParams().ngram_epochs, TrainParams().ngram_lr) == (3, 0.002)


@pytest.mark.slow
def test_sentiflow_train_with_no_options_trains_the_default_train_config(tmp_path):
    """``sentiflow train`` with no option that sets a field logs ``TrainConfig()``'s values, each
    one, as its run's params: read from the real run, not from the code that built it."""
    from prefect.settings import PREFECT_API_URL

    from sentiflow.flows.cli import app

    src = write_imdb_folder(tmp_path / "src", n_train=120, n_test=40, seed=6)
    result = CliRunner().invoke(app, ["train", "--source", str(src), "--data-root", str(tmp_path / "data"),
                                      "--workers", "1"], env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id])
    default = TrainConfig()
    expected = {f"{part}.{k}": str(v) for part in ("model", "train")
                for k, v in getattr(default, part).model_dump(mode="json").items()}
    assert {k: run.data.params[k] for k in expected} == expected
    assert PRESET_TAG not in run.data.tags
