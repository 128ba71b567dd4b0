"""Tokenize, vocab, encode and split as plain functions, seed examples included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.storage.store import StageRef
from sentiflow.tasks.data import ingest as ingest_mod
from sentiflow.tasks.data import split as split_mod
from sentiflow.tasks.data import tokenize as tokenize_mod
from sentiflow.tasks.data.encode import encode_table
from sentiflow.tasks.data.ingest import IngestParams, read_part
from sentiflow.tasks.data.shards import shards_of
from sentiflow.tasks.data.sources import SourceError
from sentiflow.tasks.data.split import SplitParams, held_out
from sentiflow.tasks.data.tokenize import TokenizeParams, tokenize_text, tokenize_texts
from sentiflow.tasks.data.vocab import PAD, UNK, Vocab, VocabParams, build_vocab
from tests.conftest import edit_module_source, make_reviews

SEED_SENTENCE = "Master cinéaste Alain Resnais likes to work with those actors"
SEED_TOKENS = ["master", "cinéaste", "alain", "resnais", "likes", "to", "work", "with", "those", "actors"]


def test_seed_example_tokenizes_as_in_the_demo():
    assert tokenize_text(SEED_SENTENCE) == SEED_TOKENS
    assert tokenize_texts([SEED_SENTENCE]).to_pylist() == [SEED_TOKENS]


def test_br_tags_become_spaces_by_default_and_can_be_kept():
    text = "Great film.<br /><br />Loved it<BR>really<br/>."
    assert tokenize_text(text) == ["great", "film", ".", "loved", "it", "really", "."]
    kept = tokenize_text(text, TokenizeParams(html_breaks="keep"))
    assert "br" in kept and "<" in kept


def test_whitespace_tokens_dropped_and_case_kept_on_request():
    assert tokenize_text("Good  movie\n\nTruly") == ["good", "movie", "truly"]
    assert tokenize_text("Good Movie", TokenizeParams(lowercase=False)) == ["Good", "Movie"]


def test_fast_path_equals_reference_loop_on_varied_text():
    texts = make_reviews(300, seed=3).column("text").to_pylist() + [
        "Don't you think it's U.S.-made? :-) 10/10!!", "Émile's café — naïve 😀 emoji", "日本語のテキスト", "",
    ]
    for params in (TokenizeParams(), TokenizeParams(lowercase=False, html_breaks="keep")):
        assert tokenize_texts(texts, params).to_pylist() == [tokenize_text(t, params) for t in texts]


def _ingested(tmp_path: Path, n: int, shard_rows: int = 50) -> StageRef:
    """An ingest stage folder holding ``n`` training reviews in shards of ``shard_rows``."""
    return ingest_mod.run(str(_source(tmp_path, n)), tmp_path / "data", params=IngestParams(shard_rows=shard_rows))


def _source(tmp_path: Path, n: int) -> Path:
    src = tmp_path / f"src-{n}.parquet"
    pq.write_table(make_reviews(n, seed=5), src)
    return src


def test_tokenize_shards_parallel_equal_single_process_and_the_reference(tmp_path: Path):
    ingested = _ingested(tmp_path, 230)
    params = TokenizeParams()
    one = tokenize_mod.run(params, ingested, "train", tmp_path / "one", workers=1)
    two = tokenize_mod.run(params, ingested, "train", tmp_path / "two", workers=2)
    shards = [p.name for p in one.shards()]
    assert shards == [f"part-{i:05d}.parquet" for i in range(5)]
    assert one.key == two.key
    for a, b in zip(one.shards(), two.shards()):
        assert a.read_bytes() == b.read_bytes()
    table = one.read_shards()
    source = pq.read_table(_source(tmp_path, 230))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(230)]
    assert table.column("tokens").to_pylist() == [tokenize_text(t) for t in source.column("text").to_pylist()]
    assert table.schema.field("tokens").type == pa.list_(pa.string())


def test_a_shard_is_keyed_by_its_content_not_its_place(tmp_path: Path):
    """The same reviews in another source, at another place, are the same tokenize shard."""
    small, big = _ingested(tmp_path, 100), _ingested(tmp_path, 230)
    params = TokenizeParams()
    small_keys = [tokenize_mod.plan_shard(tmp_path, params, s).key for s in shards_of(small, "train")]
    big_keys = [tokenize_mod.plan_shard(tmp_path, params, s).key for s in shards_of(big, "train")]
    assert small_keys == big_keys[:2] and len(set(big_keys)) == 5
    assert tokenize_mod.plan(tmp_path, params, small, "train").key != tokenize_mod.plan(tmp_path, params, big, "train").key


def _logging_disabled_level() -> int:
    import logging

    return logging.root.manager.disable


def test_tokenizer_workers_do_not_log():
    """Workers are forked from a process with Prefect's threads alive: they must never reach a
    log handler (Prefect's API handler hands records to a thread the child does not have)."""
    import logging

    from sentiflow.tasks.data import tokenize as tokenize_mod

    with tokenize_mod._pool(1) as pool:
        assert pool.submit(_logging_disabled_level).result(timeout=60) >= logging.CRITICAL
    assert logging.root.manager.disable < logging.CRITICAL  # the parent still logs


def _tokens(*docs: str) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array([d.split() for d in docs], pa.list_(pa.string()))])


def test_vocab_orders_by_count_then_token_with_specials_first():
    v = build_vocab([_tokens("b a c a", "b a d")], VocabParams(max_size=None))
    assert v.itos == [UNK, PAD, "a", "b", "c", "d"]
    assert v.counts == [0, 0, 3, 2, 1, 1]
    assert (v.unk_id, v.pad_id) == (0, 1)
    assert v(["a", "zzz", "d"]) == [2, 0, 5]


def test_vocab_min_freq_and_max_size():
    toks = [_tokens("b a c a", "b a d")]
    assert build_vocab(toks, VocabParams(min_freq=2, max_size=None)).itos == [UNK, PAD, "a", "b"]
    assert build_vocab(toks, VocabParams(max_size=3)).itos == [UNK, PAD, "a", "b", "c"]


def test_vocab_round_trips_through_parquet(tmp_path: Path):
    v = build_vocab([_tokens("x y y z z z")], VocabParams())
    v.write(tmp_path / "vocab.parquet")
    w = Vocab.read(tmp_path / "vocab.parquet")
    assert w.itos == v.itos and w.counts == v.counts
    t = pq.read_table(tmp_path / "vocab.parquet")
    assert t.column_names == ["token", "id", "count"]


def test_encode_maps_tokens_to_ids_with_unk_and_lengths():
    v = Vocab([UNK, PAD, "good", "bad"])
    tokens = pa.table({"id": ["a", "b", "c"], "label": pa.array([1, 0, 1], pa.int8()),
                       "tokens": pa.array([["good", "x"], ["bad"], []], pa.list_(pa.string()))})
    out = encode_table(tokens, v)
    assert out.column("ids").to_pylist() == [[2, 0], [3], []]
    assert out.column("length").to_pylist() == [2, 1, 0]
    assert out.schema.field("ids").type == pa.list_(pa.int32())
    assert out.column("ids").to_pylist()[0] == v(["good", "x"])


def test_encode_handles_sliced_arrays():
    v = Vocab([UNK, PAD, "a", "b"])
    tokens = pa.table({"id": ["1", "2", "3"], "label": pa.array([0, 1, 0], pa.int8()),
                       "tokens": pa.array([["a"], ["b", "a"], ["b"]], pa.list_(pa.string()))}).slice(1)
    assert encode_table(tokens, v).column("ids").to_pylist() == [[3, 2], [3]]


def test_split_is_seeded_disjoint_and_by_id_alone():
    ids = [f"r{i}" for i in range(2000)]
    params = SplitParams(val_fraction=0.2, seed=7)
    val = held_out(ids, params)
    assert 0.17 < val.mean() < 0.23
    assert (held_out(ids, params) == val).all()  # seeded
    assert (held_out(ids, SplitParams(val_fraction=0.2, seed=8)) != val).any()
    # a review's part depends on its id alone: others added around it change nothing
    assert (held_out(list(reversed(ids)) + ["new-1", "new-2"], params)[:2000][::-1] == val).all()
    # a larger fraction only moves reviews into validation
    assert (held_out(ids, SplitParams(val_fraction=0.3, seed=7)) >= val).all()


def test_split_is_stratified_within_the_stated_tolerance():
    """IMDb-sized: 12,500 reviews a label; each label's held-out share within 1 point of 20 %
    (the module docstring's bound is 3 sigma = 1.1 points)."""
    ids = [f"train-{i}" for i in range(25_000)]
    labels = np.array([0] * 12_500 + [1] * 12_500)
    val = held_out(ids, SplitParams())
    for label in (0, 1):
        assert abs(val[labels == label].mean() - 0.2) < 0.01


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_split_rejects_degenerate_fraction(frac):
    with pytest.raises(ValueError):
        SplitParams(val_fraction=frac)


# -- split: the module in the key, empty parts refused, shards kept --------------------------------


def test_split_key_follows_its_module(tmp_path: Path, monkeypatch):
    ingested = _ingested(tmp_path, 10)
    base = split_mod.plan(tmp_path, SplitParams(), ingested).key
    edit_module_source(monkeypatch, "sentiflow.tasks.data.split")
    assert split_mod.plan(tmp_path, SplitParams(), ingested).key != base


@pytest.mark.parametrize("n, frac, empty", [(1, 0.01, "validation"), (3, 0.01, "validation"),
                                            (2, 0.99, "train")])
def test_split_refuses_an_empty_part(tmp_path: Path, n, frac, empty):
    ingested = _ingested(tmp_path, n)
    root = tmp_path / "out"
    with pytest.raises(SourceError, match=f"leave the {empty} part empty") as exc:
        split_mod.run(SplitParams(val_fraction=frac), ingested, root)
    assert f"{n} training review" in str(exc.value) and "\n" not in str(exc.value)
    assert not (root / "split").exists()


def test_split_writes_a_pair_of_shards_per_ingest_shard(tmp_path: Path):
    ingested = _ingested(tmp_path, 120)
    ref = split_mod.run(SplitParams(), ingested, tmp_path / "out")
    rows = ref.manifest()["rows"]
    assert sorted(rows) == [f"{p}-{i:05d}.parquet" for p in ("train", "val") for i in range(3)]
    assert sum(rows.values()) == 120 and all(rows[f"val-{i:05d}.parquet"] > 0 for i in range(3))
    train = read_part(ref.path, "train").column("id").to_pylist()
    val = read_part(ref.path, "val").column("id").to_pylist()
    ids = [f"r{i}" for i in range(120)]
    expected = held_out(ids, SplitParams())
    assert val == [i for i, v in zip(ids, expected) if v]  # input order kept in each part
    assert train == [i for i, v in zip(ids, expected) if not v]
