"""Tokenize, vocab, encode and split as plain functions, seed examples included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.storage.store import StageRef, Store
from sentiflow.tasks import split as split_mod
from sentiflow.tasks.encode import encode_table
from sentiflow.tasks.sources import SourceError
from sentiflow.tasks.split import SplitParams, split_indices
from sentiflow.tasks.tokenize import TokenizeParams, tokenize_file, tokenize_text, tokenize_texts
from sentiflow.tasks.vocab import PAD, UNK, Vocab, VocabParams, build_vocab
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


def test_tokenize_file_parallel_equals_single_process(tmp_path: Path):
    src = tmp_path / "in.parquet"
    pq.write_table(make_reviews(230, seed=5), src)
    params = TokenizeParams(shard_rows=50)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    n1 = tokenize_file(src, tmp_path / "one", params, workers=1)
    n2 = tokenize_file(src, tmp_path / "two", params, workers=2)
    shards = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert shards == [f"part-{i:05d}.parquet" for i in range(5)]
    assert n1 == n2 > 0
    for name in shards:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    table = pq.read_table(tmp_path / "one")
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(230)]
    assert table.schema.field("tokens").type == pa.list_(pa.string())


def _logging_disabled_level() -> int:
    import logging

    return logging.root.manager.disable


def test_tokenizer_workers_do_not_log():
    """Workers are forked from a process with Prefect's threads alive: they must never reach a
    log handler (Prefect's API handler hands records to a thread the child does not have)."""
    import logging

    from sentiflow.tasks import tokenize as tokenize_mod

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


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.array([0] * 100 + [1] * 60)
    tr, va = split_indices(labels, SplitParams(val_fraction=0.2, seed=7))
    assert len(va) == 32 and len(tr) == 128
    assert (labels[va] == 0).sum() == 20 and (labels[va] == 1).sum() == 12
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(160))
    tr2, va2 = split_indices(labels, SplitParams(val_fraction=0.2, seed=7))
    assert (va == va2).all()
    _, va3 = split_indices(labels, SplitParams(val_fraction=0.2, seed=8))
    assert set(va3) != set(va)


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_split_rejects_degenerate_fraction(frac):
    with pytest.raises(ValueError):
        SplitParams(val_fraction=frac)


# -- split: numpy in the key, empty parts refused --------------------------------------------------


def _ingested(tmp_path: Path, n: int) -> StageRef:
    """A fake ingest stage folder holding ``n`` training reviews."""
    ref = Store(tmp_path / "data").ref("ingest", "fake")
    ref.path.mkdir(parents=True)
    pq.write_table(make_reviews(n), ref.file("train.parquet"))
    return ref


def test_split_key_follows_numpy_version_and_module(tmp_path: Path, monkeypatch):
    """Generator streams are not guaranteed stable across numpy releases: a new numpy may hold
    out other reviews, so it must give another split key."""
    ingested = _ingested(tmp_path, 10)
    base = split_mod.plan(tmp_path, SplitParams(), ingested).key
    monkeypatch.setattr(np, "__version__", "99.0.0")
    new_numpy = split_mod.plan(tmp_path, SplitParams(), ingested).key
    edit_module_source(monkeypatch, "sentiflow.tasks.split")
    assert len({base, new_numpy, split_mod.plan(tmp_path, SplitParams(), ingested).key}) == 3


@pytest.mark.parametrize("n, frac, empty", [(2, 0.2, "validation"), (1, 0.2, "validation"),
                                            (2, 0.9, "train")])
def test_split_refuses_an_empty_part(tmp_path: Path, n, frac, empty):
    ingested = _ingested(tmp_path, n)
    root = tmp_path / "data"
    with pytest.raises(SourceError, match=f"leave the {empty} part empty") as exc:
        split_mod.run(SplitParams(val_fraction=frac), ingested, root)
    assert f"{n} training review" in str(exc.value) and "\n" not in str(exc.value)
    assert not (root / "split").exists()


def test_split_of_a_small_source_gives_both_parts(tmp_path: Path):
    ingested = _ingested(tmp_path, 10)
    ref = split_mod.run(SplitParams(), ingested, tmp_path / "data")
    assert ref.manifest()["rows"] == {"train.parquet": 8, "val.parquet": 2}
