"""The data flow under real Prefect: states, manifests and the cache rules of issue 2."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.data_flow import DataConfig, prepare_data
from tasks.tokenize import TokenizeParams
from tasks.vocab import Vocab, VocabParams
from tests.conftest import write_imdb_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")

ALL = ["ingest", "split", "tokenize-train", "tokenize-val", "tokenize-test", "vocab",
       "encode-train", "encode-val", "encode-test"]


def run(source: Path, root: Path, **kw):
    config = DataConfig(source=str(source), **{k: v for k, v in kw.items() if k != "force"})
    return prepare_data(config=config, data_root=str(root), force=kw.get("force", []), workers=2)


def recomputed(result) -> set[str]:
    assert set(result.states) == set(ALL)
    assert set(result.states.values()) <= {"Cached", "Completed"}
    return {name for name, state in result.states.items() if state != "Cached"}


def test_first_run_builds_all_then_everything_is_cached(imdb_folder, data_root):
    first = run(imdb_folder, data_root)
    assert recomputed(first) == set(ALL)
    counts = {part: ref.manifest()["total_rows"] for part, ref in first.encoded.items()}
    assert counts == {"train": 160, "val": 40, "test": 100}
    enc = first.encoded["train"].read_shards()
    assert enc.column_names == ["id", "label", "ids", "length"]
    assert enc.column("length").to_pylist() == [len(x) for x in enc.column("ids").to_pylist()]
    vocab = Vocab.read(first.vocab.file("vocab.parquet"))
    toks = first.tokens["train"].read_shards().column("tokens").to_pylist()
    assert enc.column("ids").to_pylist() == [vocab(t) for t in toks]

    second = run(imdb_folder, data_root)
    assert recomputed(second) == set()
    assert second.model_dump() == {**first.model_dump(), "states": second.states}


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
    assert first.tokens["val"].read_shards().num_rows == 40
    assert recomputed(run(imdb_folder, data_root)) == set()


def test_force_one_stage(imdb_folder, data_root):
    run(imdb_folder, data_root)
    forced = run(imdb_folder, data_root, force=["tokenize"])
    assert recomputed(forced) == {"tokenize-train", "tokenize-val", "tokenize-test"}


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
