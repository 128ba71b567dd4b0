"""The data flow under real Prefect: states, manifests and the cache rules of issue 2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sentiflow.flows.data_flow import (
    RUNS,
    STAGES,
    DataConfig,
    PreparedData,
    data_flow_for,
    prepare_data,
)
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import MANIFEST
from sentiflow.tasks.data.ingest import IngestParams, read_part
from sentiflow.tasks.data.split import SplitParams, held_out
from sentiflow.tasks.data.tokenize import TokenizeParams
from sentiflow.tasks.data.vocab import Vocab, VocabParams
from tests.conftest import write_imdb_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")

ALL = ["ingest", "split", "tokenize-train", "tokenize-val", "tokenize-test", "vocab",
       "encode-train", "encode-val", "encode-test"]


class Run(PreparedData):
    """A flow result, plus the stages whose folder the run actually (re)wrote."""

    rebuilt: set[str]
    flow_run_id: str


def _manifest_stamps(root: Path) -> dict[Path, tuple[int, int]]:
    """Each stage folder's manifest (inode, mtime): a rewritten folder has a new manifest."""
    stamps = {}
    for m in root.glob(f"*/*/{MANIFEST}"):
        st = m.stat()
        stamps[m.parent.resolve()] = (st.st_ino, st.st_mtime_ns)
    return stamps


def run(source: Path, root: Path, **kw) -> Run:
    config = DataConfig(source=str(source), **{k: v for k, v in kw.items() if k != "force"})
    before = _manifest_stamps(root)
    state = prepare_data(config=config, data_root=str(root), force=kw.get("force", []), workers=2,
                         return_state=True)
    result = state.result()
    after = _manifest_stamps(root)
    rebuilt = {name for name, ref in result.refs().items() if before.get(ref.path) != after[ref.path]}
    return Run(**dict(result), rebuilt=rebuilt, flow_run_id=str(state.state_details.flow_run_id))


def recomputed(result: Run) -> set[str]:
    """The stages that ran; each must have rewritten its folder ("ran but reused" fails here),
    and each Cached one must have left its folder alone."""
    assert set(result.states) == set(ALL)
    assert set(result.states.values()) <= {"Cached", "Completed"}
    ran = {name for name, state in result.states.items() if state != "Cached"}
    assert result.rebuilt == ran, f"ran {sorted(ran)} but rewrote {sorted(result.rebuilt)}"
    return ran


def task_runs(flow_run_id: str, expected: int) -> list:
    """Every task run the API recorded for a flow run (task runs reach the API as events: wait
    until ``expected`` of them are final, then a little longer)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            states = [r.state.name if r.state else "?" for r in client.read_task_runs(flow_run_filter=flt)]
            done = [s for s in states if s in ("Cached", "Completed", "Failed")]
            if len(done) >= expected or time.monotonic() > deadline:
                time.sleep(1.0)
                return client.read_task_runs(flow_run_filter=flt)
            time.sleep(0.2)


def task_run_states(flow_run_id: str, expected: int) -> list[str]:
    """The final state of every task run the API recorded for a flow run."""
    return sorted(r.state.name if r.state else "?" for r in task_runs(flow_run_id, expected))


def flow_run_parameters(flow_run_id: str) -> dict:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).parameters


def test_first_run_builds_all_then_everything_is_cached(imdb_folder, data_root):
    first = run(imdb_folder, data_root)
    assert recomputed(first) == set(ALL)
    counts = {part: ref.manifest()["total_rows"] for part, ref in first.encoded.items()}
    assert counts["train"] + counts["val"] == 200 and counts["test"] == 100
    ids = read_part(first.ingest.path, "train").column("id").to_pylist()
    held = held_out(ids, SplitParams())
    assert first.encoded["val"].read_shards().column("id").to_pylist() == [i for i, h in zip(ids, held) if h]
    assert first.shards == {name: {"Completed": 1} for name in ALL if name.count("-")}
    enc = first.encoded["train"].read_shards()
    assert enc.column_names == ["id", "label", "ids", "length"]
    assert enc.column("length").to_pylist() == [len(x) for x in enc.column("ids").to_pylist()]
    vocab = Vocab.read(first.vocab.file("vocab.parquet"))
    toks = first.tokens["train"].read_shards().column("tokens").to_pylist()
    assert enc.column("ids").to_pylist() == [vocab(t) for t in toks]

    second = run(imdb_folder, data_root)
    assert recomputed(second) == set()
    volatile = {"states", "shards", "rebuilt", "flow_run_id"}
    assert second.model_dump(exclude=volatile) == first.model_dump(exclude=volatile)


def test_rerun_with_no_change_has_only_cached_task_runs(imdb_folder, data_root):
    """Every task run of an unchanged rerun is Cached, as Prefect's API records them: no task
    outside ``states`` (the source fingerprint is a plain call, not a task) runs each time."""
    run(imdb_folder, data_root)
    second = run(imdb_folder, data_root)
    assert recomputed(second) == set()
    assert second.shards == {name: {"Cached": 1} for name in ALL if name.count("-")}
    expected = len(ALL) + 6  # and one task per shard: a shard a part here
    assert task_run_states(second.flow_run_id, expected) == ["Cached"] * expected


def test_tokenizer_change_reruns_tokenize_vocab_encode_only(imdb_folder, data_root):
    run(imdb_folder, data_root)
    changed = run(imdb_folder, data_root, tokenize=TokenizeParams(lowercase=False))
    assert recomputed(changed) == set(ALL) - {"ingest", "split"}


def test_min_freq_change_reruns_vocab_and_encode_only(imdb_folder, data_root):
    base = run(imdb_folder, data_root)
    changed = run(imdb_folder, data_root, vocab=VocabParams(min_freq=3))
    assert recomputed(changed) == {"vocab", "encode-train", "encode-val", "encode-test"}
    assert len(Vocab.read(changed.vocab.file("vocab.parquet"))) < len(
        Vocab.read(base.vocab.file("vocab.parquet")))


def test_deleted_folder_and_damaged_shard_are_recomputed(imdb_folder, data_root):
    first = run(imdb_folder, data_root)
    run(imdb_folder, data_root)  # records stored for every stage
    import shutil

    shutil.rmtree(first.tokens["val"].path)
    shard = first.encoded["train"].shards()[0]
    good = shard.read_bytes()
    shard.write_bytes(good[:-10] + b"0123456789")
    again = run(imdb_folder, data_root)
    assert recomputed(again) == {"tokenize-val", "encode-train"}
    assert shard.read_bytes() == good
    assert first.tokens["val"].read_shards().num_rows == first.encoded["val"].manifest()["total_rows"]
    assert recomputed(run(imdb_folder, data_root)) == set()


def test_force_one_stage(imdb_folder, data_root):
    first = run(imdb_folder, data_root)
    before = {part: (ref.path.stat().st_ino, ref.manifest()) for part, ref in first.tokens.items()}
    forced = run(imdb_folder, data_root, force=["tokenize"])
    assert recomputed(forced) == {"tokenize-train", "tokenize-val", "tokenize-test"}
    assert forced.tokens == first.tokens  # the same keys and folders...
    for part, ref in forced.tokens.items():
        ino, manifest = before[part]
        assert ref.path.stat().st_ino != ino  # ...rewritten: a new folder renamed into place
        assert ref.manifest()["files"] == manifest["files"]  # with the same content


def test_changed_source_data_reruns_everything(tmp_path, data_root):
    src = write_imdb_folder(tmp_path / "src", seed=0)
    first = run(src, data_root)
    write_imdb_folder(tmp_path / "src", seed=1)
    second = run(src, data_root)
    assert recomputed(second) == set(ALL)
    assert second.ingest.key != first.ingest.key
    # the same data at another path is the same ingest key: nothing to do
    copy = write_imdb_folder(tmp_path / "copy", seed=1)
    assert recomputed(run(copy, data_root)) == set()


def test_stage_order_is_written_once():
    assert STAGES == ("ingest", "split", "tokenize", "vocab", "encode")
    assert RUNS == tuple(ALL)


def test_one_wiring_runs_each_task_after_its_inputs(imdb_folder, data_root):
    """Every stage is submitted; the local runner's threads run a task only once the tasks it
    reads have ended, as the task runs the API recorded show; states and refs list them in stage
    order."""
    first = run(imdb_folder, data_root, ingest=IngestParams(shard_rows=40))
    assert list(first.states) == ALL and list(first.refs()) == ALL
    assert PreparedData.from_refs(first.refs(), first.states, first.shards) == PreparedData(
        **first.model_dump(exclude={"rebuilt", "flow_run_id"}))
    n_shards = sum(sum(c.values()) for c in first.shards.values())
    assert first.shards["tokenize-train"] == first.shards["encode-train"] == {"Completed": 5}  # 200 in 40s
    runs = {r.name: r for r in task_runs(first.flow_run_id, len(ALL) + n_shards)}
    assert len(runs) == len(ALL) + n_shards

    def ends_before(a: str, b: str) -> None:
        assert runs[a].end_time <= runs[b].start_time, (a, b)

    ingest, split = (next(n for n in runs if n.startswith(s + "-")) for s in ("ingest", "split"))
    vocab = next(n for n in runs if n.startswith("vocab-"))
    ends_before(ingest, split)
    ends_before("tokenize-train", vocab)
    for part in ("train", "val", "test"):
        for shard in [n for n in runs if n.startswith(f"tokenize-{part}-")]:
            ends_before(split, shard)
            ends_before(shard, f"tokenize-{part}")
            ends_before(vocab, shard.replace("tokenize", "encode"))
            ends_before(shard, shard.replace("tokenize", "encode"))
            ends_before(shard.replace("tokenize", "encode"), f"encode-{part}")


def test_settings_come_from_the_caller_or_from_the_environment_at_flow_start(
        imdb_folder, tmp_path, monkeypatch):
    # a caller's settings (the CLI's): the run uses them, and they are no flow-run parameter
    secret = "sqlite:///" + str(tmp_path / "token-s3cr3t.db")
    caller = Settings(data_root=tmp_path / "caller", source=str(imdb_folder), workers=1, tracking_uri=secret)
    state = data_flow_for(caller)(config=DataConfig(), return_state=True)
    result = state.result()
    assert result.ingest.path.parents[1] == (tmp_path / "caller").resolve()
    params = flow_run_parameters(state.state_details.flow_run_id)
    assert set(params) <= {"config", "data_root", "force", "workers"}
    assert "s3cr3t" not in str(params)

    # none given (a deployment's run on a worker): the environment, read when the run starts
    monkeypatch.setenv("SENTIFLOW_DATA_ROOT", str(tmp_path / "env"))
    monkeypatch.setenv("SENTIFLOW_SOURCE", str(imdb_folder))
    monkeypatch.setenv("SENTIFLOW_WORKERS", "1")
    assert DataConfig().source is None  # nothing read from the environment before the run
    from_env = prepare_data()
    assert from_env.ingest.path.parents[1] == (tmp_path / "env").resolve()
    assert from_env.ingest.key == result.ingest.key
    # a run's own data_root overrides the settings, whichever they came from
    overridden = data_flow_for(caller)(config=DataConfig(), data_root=str(tmp_path / "param"))
    assert overridden.ingest.path.parents[1] == (tmp_path / "param").resolve()
