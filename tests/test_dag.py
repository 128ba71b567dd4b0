"""The data DAG written once (``sentiflow.tasks.data.dag``): the order, the task runs and the
lineage params derive from it, the walks name no stage, the keys it plans are the ones the stage
functions give when wired by hand, and a stage added to it is run, planned and listed."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.tasks import Task

from sentiflow.flows import data_flow, status
from sentiflow.flows.data_flow import DataConfig, PreparedData, prepare_data
from sentiflow.flows.status import data_status, stored_stages
from sentiflow.storage.store import StageRef, Store
from sentiflow.tasks import stage
from sentiflow.tasks.data import dag, encode, ingest, split, tokenize, vocab
from sentiflow.tasks.data.ingest import IngestParams
from sentiflow.tasks.data.reviews import fingerprint
from sentiflow.tasks.data.shards import shards_of

RUNS = ["ingest", "split", "tokenize-train", "tokenize-val", "tokenize-test", "vocab",
        "encode-train", "encode-val", "encode-test"]


def test_the_dag_gives_the_order_the_task_runs_and_the_parts():
    assert dag.STAGES == ("ingest", "split", "tokenize", "vocab", "encode")
    assert list(dag.RUNS) == RUNS
    assert dag.PARTS == ("train", "val", "test")
    assert dag.SHARD_STAGES == {"tokenize": "tokenize-shard", "encode": "encode-shard"}
    # what the flow module offers its callers (the CLI's --force, the tests) is the same
    assert (data_flow.STAGES, data_flow.RUNS, data_flow.PARTS) == (dag.STAGES, dag.RUNS, dag.PARTS)
    assert get_args(data_flow.Stage) == dag.STAGES


def test_each_step_is_its_stage_modules_task_and_planner():
    for step in dag.DAG:
        assert step.module.STAGE == step.stage
        assert isinstance(step.task.task, Task) and step.task.name == step.task.task.name == step.stage
        takes = set(inspect.signature(step.task.fn).parameters)
        assert set(step.inputs) <= takes, step.stage
        has_section = step.stage in DataConfig.model_fields
        assert ("params" in takes) == step.params == has_section, step.stage
        assert {"root", "force"} <= takes
        if step.per_shard:
            assert {step.shard_arg, "part", "index"} <= takes, step.stage
            assert step.module.SHARD_STAGE == f"{step.stage}-shard" and step.module.GATHERED


def test_a_step_may_read_only_what_comes_before_it():
    dag.check(dag.DAG)
    with pytest.raises(ValueError, match="encode reads .vocab., not made before it"):
        dag.check(tuple(reversed(dag.DAG)))
    without_split = tuple(s for s in dag.DAG if s.stage != "split")
    with pytest.raises(ValueError, match="tokenize reads 'split', not made before it"):
        dag.check(without_split)


def test_the_walks_name_no_stage():
    """The walks read the order and the wiring from the DAG alone: no stage, run or part is
    written in them."""
    walks = [data_flow.prepare, data_flow._submit, PreparedData.from_refs, PreparedData.lineage,
             status._plan, status._waits_for, status._plan_run, status.stored_stages]
    names = {*dag.STAGES, *dag.RUNS, *dag.PARTS, *dag.SHARD_STAGES.values()}
    for walk in walks:
        source = inspect.getsource(walk)
        for name in names:
            assert f'"{name}"' not in source and f"'{name}'" not in source, (walk.__name__, name)


def test_a_training_run_logs_the_same_lineage_params():
    refs = {run: StageRef(stage=run.split("-")[0], key=f"key-of-{run}", path=Path("/nowhere"))
            for run in RUNS}
    data = PreparedData.from_refs(refs, dict.fromkeys(RUNS, "Cached"))
    config = DataConfig(source="somewhere")
    params = data.lineage(config)
    expected_keys = {"key.ingest": "key-of-ingest", "key.split": "key-of-split",
                     "key.vocab": "key-of-vocab", "key.encode_train": "key-of-encode-train",
                     "key.encode_val": "key-of-encode-val", "key.encode_test": "key-of-encode-test"}
    assert {k: v for k, v in params.items() if k.startswith("key.")} == expected_keys
    sections = {f"{section}.{name}" for section in ("split", "tokenize", "vocab")
                for name in type(getattr(config, section)).model_fields}
    assert set(params) == {"data.source", *sections, *expected_keys}
    assert params["data.source"] == "somewhere" and params["split.seed"] == config.split.seed


def _by_hand(config: DataConfig, root: Path) -> dict[str, str]:
    """Every run's key from the stage modules' own plan functions, wired here by hand."""
    ingested = ingest.plan(root, fingerprint(config.source), config.ingest)
    split_ref = split.plan(root, config.split, ingested)
    sources = {"train": split_ref, "val": split_ref, "test": ingested}
    tokens = {part: tokenize.plan(root, config.tokenize, sources[part], part) for part in sources}
    vocab_ref = vocab.plan(root, config.vocab, tokens["train"])
    keys = {"ingest": ingested.key, "split": split_ref.key, "vocab": vocab_ref.key}
    for part in sources:
        keys[f"tokenize-{part}"] = tokens[part].key
        keys[f"encode-{part}"] = encode.plan(root, tokens[part], vocab_ref).key
    return keys


@pytest.mark.usefixtures("prefect_harness")
def test_the_walks_give_the_keys_of_the_stages_wired_by_hand(imdb_folder, data_root):
    config = DataConfig(source=str(imdb_folder), ingest=IngestParams(shard_rows=70))
    result = prepare_data(config=config, data_root=str(data_root), workers=1)
    assert result.shards["tokenize-train"] == {"Completed": 3}  # 200 reviews in 70s: 3 a part
    keys = _by_hand(config, data_root.resolve())
    assert {run: ref.key for run, ref in result.refs().items()} == keys
    assert {r.task: r.key for r in data_status(config, data_root)} == keys
    # the stored shards are the ones split wrote, one tokenize shard and one encode shard each
    shards = {p: len(shards_of(result.split, p)) for p in ("train", "val")}
    stored = [p for p in (data_root / "tokenize-shard").iterdir() if not p.name.startswith(".")]
    assert len(stored) == shards["train"] + shards["val"] + 2


# -- a stage added to the DAG: one entry ---------------------------------------------------------

def _lengths_spec(encoded: StageRef) -> stage.StageSpec:
    return stage.StageSpec("lengths", None, (stage.input_token(encoded),), "1")


def _lengths_planner(p: dict) -> StageRef:
    return _lengths_spec(p["encoded"]).ref(p["root"])


@stage.stage_task("lengths", _lengths_planner)
def lengths_task(encoded: StageRef, root: str, force: bool = False) -> StageRef:
    """Each encoded training review's length, in ``lengths.parquet``."""
    def build(out: Path) -> None:
        pq.write_table(pa.table({"length": encoded.read_shards(["length"]).column("length")}),
                       out / "lengths.parquet")

    return stage.run_stage(root, _lengths_spec(encoded), build, force)


LENGTHS = dag.Step(
    SimpleNamespace(STAGE="lengths", lengths_task=lengths_task, _planner=_lengths_planner),
    inputs={"encoded": "encode-train"}, params=False)


@pytest.mark.usefixtures("prefect_harness")
def test_a_stage_added_to_the_dag_is_run_planned_and_listed(imdb_folder, data_root, monkeypatch):
    added = (*dag.DAG, LENGTHS)
    dag.check(added)
    monkeypatch.setattr(dag, "DAG", added)
    monkeypatch.setattr(dag, "BY_STAGE", {s.stage: s for s in added})
    monkeypatch.setattr(dag, "RUNS", tuple(run for s in added for run in s.runs))
    config = DataConfig(source=str(imdb_folder))

    assert data_status(config, data_root)[-1].state == "waits for encode-train"
    first = prepare_data(config=config, data_root=str(data_root), workers=1)
    assert list(first.states) == [*RUNS, "lengths"] and first.states["lengths"] == "Completed"
    made = first.folders["lengths"]
    lengths = pq.read_table(made.file("lengths.parquet")).column("length").to_pylist()
    encoded = pa.concat_tables(pq.read_table(f) for f in first.encoded["train"].shards())
    assert lengths == [len(ids) for ids in encoded.column("ids").to_pylist()]
    assert first.lineage(config)["key.lengths"] == made.key

    again = prepare_data(config=config, data_root=str(data_root), workers=1)
    assert set(again.states.values()) == {"Cached"}
    rows = {r.task: r for r in data_status(config, data_root)}
    assert rows["lengths"].state == "cached" and rows["lengths"].key == made.key
    assert status.stored_result(config, data_root).folders["lengths"].key == made.key
    assert [r["key"] for r in stored_stages(data_root) if r["stage"] == "lengths"] == [made.key]
    assert Store(data_root).is_valid(made)
