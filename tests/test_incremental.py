"""Incremental data: reviews appended to a source are the only ones tokenized again.

Ingest cuts each part into shards of ``shard_rows`` from its start, split assigns a review by a
hash of its id, and tokenize keys a shard by its content: after an append, the shards before the
append point are the same bytes and their tokenize tasks are Cached. The result must equal what a
cold run of the grown source gives in an empty data root (the independent path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.flows.data_flow import DataConfig, prepare_data
from sentiflow.flows.status import stored_stages
from sentiflow.storage.store import MANIFEST
from sentiflow.tasks.data.ingest import IngestParams
from tests.conftest import make_reviews
from tests.test_data_flow import task_run_states

pytestmark = pytest.mark.usefixtures("prefect_harness")
SHARD_ROWS = 50


def _source(folder: Path, n_train: int) -> Path:
    """A folder source: the first ``n_train`` of one fixed stream of training reviews, and 60 test
    reviews (so a larger ``n_train`` is the smaller source with reviews appended)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(make_reviews(400, seed=3, prefix="train-").slice(0, n_train), folder / "train.parquet")
    pq.write_table(make_reviews(60, seed=4, prefix="test-"), folder / "test.parquet")
    return folder


def _prepare(source: Path, root: Path):
    state = prepare_data(config=DataConfig(source=str(source), ingest=IngestParams(shard_rows=SHARD_ROWS)),
                         data_root=str(root), workers=2, return_state=True)
    return state.result(), str(state.state_details.flow_run_id)


def _bytes(ref) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ref.path.iterdir())
            if p.name != MANIFEST}


def test_appended_reviews_are_the_only_ones_tokenized_again(tmp_path):
    root = tmp_path / "data"
    first, _ = _prepare(_source(tmp_path / "src", 200), root)  # 4 full train shards, 2 test
    assert first.shards["tokenize-train"] == {"Completed": 4}

    grown, flow_run_id = _prepare(_source(tmp_path / "src", 290), root)  # + 90: shards 4 and 5 new
    assert grown.ingest.key != first.ingest.key
    assert grown.shards["tokenize-train"] == grown.shards["tokenize-val"] == {"Cached": 4, "Completed": 2}
    assert grown.shards["tokenize-test"] == {"Cached": 2}  # the test part did not change
    # the vocab counts the new reviews too, so every shard is encoded again with it
    assert grown.states["vocab"] == "Completed"
    assert grown.shards["encode-train"] == {"Completed": 6}
    # as Prefect's API records the run: one task a shard, the reused ones Cached
    n_tasks = 9 + sum(sum(c.values()) for c in grown.shards.values())
    states = task_run_states(flow_run_id, n_tasks)
    # the test part is gathered again (from the new ingest folder: its origin) out of the same shards
    assert grown.states["tokenize-test"] == "Completed"
    assert grown.tokens["test"].shards()[0].read_bytes() == first.tokens["test"].shards()[0].read_bytes()
    assert states.count("Cached") == 4 + 4 + 2 and len(states) == n_tasks
    # the stages table: each part's shards, and how many an earlier folder of its stage holds
    rows = stored_stages(root)
    assert sorted(r["shards"] for r in rows if r["stage"] == "tokenize") == sorted(
        ["4: 0 reused", "4: 0 reused", "2: 0 reused", "6: 4 reused", "6: 4 reused", "2: 2 reused"])
    assert sorted(r["shards"] for r in rows if r["stage"] == "encode") == sorted(
        ["4: 0 reused", "4: 0 reused", "2: 0 reused", "6: 0 reused", "6: 0 reused", "2: 0 reused"])
    assert {r["stage"]: r["key"] for r in rows if r["stage"].endswith("-shard")} == {
        "tokenize-shard": "(14 folders)", "encode-shard": "(24 folders)"}  # 4+4+2 + 2+2; 10 + 6+6+2

    # a review keeps its part: the first run's validation reviews are still held out
    val_before = set(first.encoded["val"].read_shards(["id"]).column("id").to_pylist())
    val_after = set(grown.encoded["val"].read_shards(["id"]).column("id").to_pylist())
    assert val_before < val_after

    # the same as a cold run of the grown source in an empty root, file for file
    cold, _ = _prepare(tmp_path / "src", tmp_path / "cold")
    assert set(cold.shards["tokenize-train"]) == {"Completed"}
    for name, ref in grown.refs().items():
        assert ref.key == cold.refs()[name].key, name
        assert _bytes(ref) == _bytes(cold.refs()[name]), name


def test_ingest_shards_do_not_depend_on_how_the_source_was_read(tmp_path):
    """One Parquet file with small row groups and a folder with the same rows give the same
    ingest shards: shards are cut by row count, whatever the batches the reader gives."""
    from sentiflow.tasks.data import ingest as ingest_mod

    reviews = make_reviews(230, seed=9)
    one = tmp_path / "one.parquet"
    pq.write_table(reviews, one, row_group_size=7)
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(reviews, folder / "train.parquet", row_group_size=1000)
    pq.write_table(pa.table({"text": ["x"], "label": [1]}).slice(0, 0), folder / "test.parquet")
    a = ingest_mod.run(str(one), tmp_path / "a", params=IngestParams(shard_rows=SHARD_ROWS))
    b = ingest_mod.run(str(folder), tmp_path / "b", params=IngestParams(shard_rows=SHARD_ROWS))
    files_a, files_b = a.manifest()["files"], b.manifest()["files"]
    train = sorted(n for n in files_a if n.startswith("train-"))
    assert train == [f"train-{i:05d}.parquet" for i in range(5)]
    assert [files_a[n]["sha256"] for n in train] == [files_b[n]["sha256"] for n in train]
