"""The train flow under real Prefect and real MLflow: data (cached) → train → select, with a
summary artifact; a rerun reuses the finished run and registers nothing new."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sentiflow.flows.data_flow import DataConfig
from sentiflow.flows.runs import with_settings
from sentiflow.flows.train_flow import TrainFlowConfig, train_flow
from sentiflow.storage.settings import Settings
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.training.train import TrainParams
from tests.conftest import read_artifacts, write_imdb_folder
from tests.test_data_flow import flow_run_parameters

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_train_flow_end_to_end_and_rerun(tmp_path):
    src = write_imdb_folder(tmp_path / "src", n_train=300, n_test=100, seed=4)
    config = TrainFlowConfig(
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
    """TrainFlowConfig holds the pipeline's model (the CLI and the deployments read it there):
    ModelParams' defaults (the seed's) made bidirectional, max-pooled, on 50-d GloVe vectors
    (docs/benchmarks.md)."""
    assert TrainFlowConfig().model == ModelParams(embed_dim=50, bidirectional=True, head="max")
    assert TrainFlowConfig().train.pretrained == "glove-6b-50d"
