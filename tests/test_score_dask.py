"""Scoring on Dask (``SENTIFLOW_TASK_RUNNER=dask``) gives what scoring in-process gives.

A small untrained network over the data stages' vocabulary of a small source is registered here as
``models:/sentiflow@champion`` (real Prefect, real MLflow on a temporary SQLite store; the data
stages made by the data flow, so that the source's encoded test part can be reused). A source with several row groups, some rows that cannot be scored, some without a label
and no id column (so ids come from the ``<split>-<n>`` counters carried from part to part), is
scored in-process and then on a LocalCluster (two single-threaded worker processes) in parts of
two row groups: one ``score-part`` task per part, concatenated in input order. The two outputs
must hold the same rows, ids, labels, statuses and predictions (probabilities to 1e-6). The two
modes share the stage key: a rerun, on Dask or in-process, is Cached and cuts nothing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.flows.runs import with_settings
from sentiflow.flows.score_flow import ScoreConfig, score_flow
from sentiflow.storage.settings import Settings
from sentiflow.tasks.data.sources import SourceError
from tests.conftest import make_reviews, write_imdb_folder

CHAMPION = "models:/sentiflow@champion"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
ROW_GROUP = 20


def _source(path: Path) -> pa.Table:
    """130 reviews in row groups of 20, no id column; a few null/empty texts and missing labels."""
    t = make_reviews(130, seed=3).to_pydict()
    for i in (4, 41, 77):
        t["text"][i] = None
    for i in (20, 99):
        t["text"][i] = "   "
    labels = pa.array([None if i in (7, 60, 129) else v for i, v in enumerate(t["label"])], pa.int8())
    table = pa.table({"text": t["text"], "label": labels})
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return table


@dataclass
class Registered:
    root: Path  # the data root: the data stages of ``src`` and mlflow.db
    src: Path  # train.parquet, test.parquet
    uri: str  # the MLflow tracking URI


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Registered:
    """The data stages of a small source, and a network over their vocabulary registered as the
    champion (untrained: its outputs differ from review to review, which is all a comparison
    needs; no training, so nothing here depends on the training code)."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from sentiflow.flows.data_flow import DataConfig, prepare_data
    from sentiflow.storage.tracking import configure
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.core.model import ModelParams, SentimentRNN
    from sentiflow.tasks.core.text import TokenizeParams, Vocab
    from sentiflow.tasks.scoring.serving import log_model

    base = tmp_path_factory.mktemp("score-dask")
    src = write_imdb_folder(base / "src", n_train=120, n_test=40, seed=11)
    settings = Settings(data_root=base / "data")
    data = prepare_data(config=DataConfig(source=str(src)), data_root=str(settings.data_root), workers=1)
    vocab_file = data.vocab.file("vocab.parquet")
    vocab = Vocab.read(vocab_file)
    torch.manual_seed(5)
    net = SentimentRNN(len(vocab), ModelParams(embed_dim=8, hidden_dim=8, bidirectional=False, head="last+max",
                                               dropout=0.0), pad_id=vocab.pad_id)
    experiment_id = configure(settings)
    with mlflow.start_run(experiment_id=experiment_id), tempfile.TemporaryDirectory() as tmp:
        info = log_model(Scorer(net, vocab, TokenizeParams()), vocab_file, {}, Path(tmp))
    version = mlflow.register_model(info.model_uri, "sentiflow").version
    MlflowClient().set_registered_model_alias("sentiflow", "champion", version)
    return Registered(settings.data_root, src, settings.resolved_tracking_uri)


def _on_dask() -> Settings:
    return Settings(task_runner="dask", workers=2)  # a LocalCluster of 2 single-threaded processes


def _predictions(outcome) -> dict[str, list]:
    return pq.read_table(outcome.predictions).to_pydict()


def _assert_same(local: dict[str, list], dask: dict[str, list]) -> None:
    assert list(dask) == list(local)
    for column in ("id", "pred", "label", "status"):
        assert dask[column] == local[column], column
    ok = [s == "ok" for s in local["status"]]
    assert [p is None for p in dask["prob_pos"]] == [not k for k in ok]
    np.testing.assert_allclose([p for p, k in zip(dask["prob_pos"], ok) if k],
                               [p for p, k in zip(local["prob_pos"], ok) if k], atol=1e-6)


def test_dask_scores_in_parts_what_local_scores_whole(trained, tmp_path):
    src = tmp_path / "reviews.parquet"
    table = _source(src)
    config = ScoreConfig(model=CHAMPION, source=str(src), part_rows=2 * ROW_GROUP)

    local, none = _run(score_flow, config, trained.root, workers=2)
    assert local.state == "Completed" and local.stats.rows == 130 and none == {}

    dask_root = tmp_path / "data-dask"
    on_dask = with_settings(score_flow, _on_dask().updated(tracking_uri=trained.uri))
    first, parts = _run(on_dask, config, dask_root)
    assert first.state == "Completed" and first.stage.key == local.stage.key
    assert first.stage.path.parent.parent == dask_root.resolve()
    # one task per part of two row groups (the last one shorter), each Completed
    assert parts == {f"score-part-{i}": "Completed" for i in range(4)}

    pred, expected = _predictions(first), _predictions(local)
    _assert_same(expected, pred)
    assert pred["id"] == [f"train-{i}" for i in range(130)]  # in input order, one row per row
    assert pred["label"] == table.column("label").to_pylist()
    assert first.stats.statuses == local.stats.statuses == {"ok": 125, "null": 3, "empty": 2, "not_text": 0,
                                                                 "out_of_domain": 0}
    assert first.stats.confusion == local.stats.confusion
    assert first.stats.labeled_rows == local.stats.labeled_rows == 122
    assert first.evaluation_run_id and first.stats.metrics() == local.stats.metrics()
    saved = json.loads(first.stage.file("stats.json").read_text())
    assert saved["rows"] == 130 and saved["seconds"] > 0

    # no work folder left; a rerun is Cached on Dask (nothing cut or scored) and in-process
    assert [p.name for p in (dask_root / "score").iterdir() if p.name.startswith(".")] == []
    again, parts = _run(on_dask, config, dask_root)
    assert again.state == "Cached" and parts == {}
    in_process = with_settings(score_flow, Settings(tracking_uri=trained.uri))
    assert _run(in_process, config, dask_root, workers=1)[0].state == "Cached"


def test_dask_scores_the_reused_encoded_test_part(trained, tmp_path):
    """The training source itself: its encoded test part is reused, one part per shard, and
    ``force`` scores it again, in parts, into the same folder."""
    config = ScoreConfig(model=CHAMPION, source=str(trained.src))
    local, _ = _run(score_flow, config, trained.root, workers=1)
    expected = _predictions(local)
    on_dask = with_settings(score_flow, _on_dask().updated(tracking_uri=trained.uri))
    forced, parts = _run(on_dask, config, trained.root, force=True)
    assert forced.state == "Completed" and forced.stage.key == local.stage.key
    assert forced.stats.reused == local.stats.reused is not None
    assert parts and set(parts.values()) == {"Completed"}
    _assert_same(expected, _predictions(forced))
    assert forced.stats.confusion == local.stats.confusion


def test_dask_part_error_is_raised_and_nothing_is_left(trained, tmp_path):
    """A bad label in the third part: that part's error, naming the file's row; no work folder
    and no stage folder left."""
    src = tmp_path / "bad.parquet"
    labels = ["pos"] * 25 + ["perhaps"] + ["neg"] * 4
    pq.write_table(pa.table({"text": [f"a great film {i}" for i in range(30)], "label": labels}), src,
                   row_group_size=10)
    root = tmp_path / "data"
    on_dask = with_settings(score_flow, _on_dask().updated(tracking_uri=trained.uri))
    with pytest.raises(SourceError, match="row 26"):
        on_dask(config=ScoreConfig(model=CHAMPION, source=str(src), part_rows=10), data_root=str(root))
    assert [p.name for p in (root / "score").iterdir()] == []


def _run(flow, config: ScoreConfig, root: Path, **kwargs):
    """(the flow's outcome, its score-part task runs: name → final state, as the API recorded)."""
    state = flow(config=config, data_root=str(root), return_state=True, **kwargs)
    return state.result(), part_runs(str(state.state_details.flow_run_id))


def part_runs(flow_run_id: str) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [r.id for r in subflows]
        if not ids:
            return {}
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}))
    return {r.name: r.state.name if r.state else "?" for r in runs if r.name.startswith("score-part-")}
