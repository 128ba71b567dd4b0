"""Reading reviews to score (``sentiflow.tasks.scoring.score_sources``): every row kept with a status, ids and
labels as ingest makes them, files read a batch at a time. Real Parquet, CSV, TSV and text files;
no Prefect needed."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.tasks.core.rows import decoded, status_of
from sentiflow.tasks.data.ingest import ingest
from sentiflow.tasks.data.sources import SourceError
from sentiflow.tasks.scoring.score_sources import (
    SourcePart,
    open_reviews,
    part_batches,
    plan_parts,
)


def read_all(source, split="auto", batch_rows=2048):
    """(labeled, ids, texts, labels or None, batch sizes) of a whole stream."""
    stream = open_reviews(str(source), split, batch_rows)
    ids, texts, labels, sizes = [], [], [], []
    for b in stream.batches:
        assert len(b.ids) == len(b.texts) and (b.labels is None or len(b.labels) == len(b.ids))
        ids += b.ids
        texts += b.texts
        sizes.append(len(b.ids))
        labels = None if b.labels is None else (labels or []) + b.labels
    return stream.labeled, ids, texts, labels, sizes


def ingested_part(folder, split):
    """One part of what ingest wrote into ``folder``, in order: ``<split>.parquet``, or its shards
    ``<split>-NNNNN.parquet``."""
    files = sorted(folder.glob(f"{split}.parquet")) or sorted(folder.glob(f"{split}-*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


@pytest.mark.parametrize("value, status", [
    (None, "null"), (math.nan, "null"), (float("nan"), "null"),
    ("", "empty"), ("   ", "empty"), ("\t\n ", "empty"),
    (12, "not_text"), (1.5, "not_text"), (b"\xff", "not_text"), (b"\xff\xfe bad", "not_text"),
    (b"ok bytes", "ok"), ("text", "ok"), ("  padded  ", "ok"), ("😀", "ok"),
    (True, "not_text"), ([1, 2], "not_text"), ({"a": 1}, "not_text"), (b"   ", "empty"),
])
def test_status_of(value, status):
    assert status_of(value) == status


# -- single files ---------------------------------------------------------------------------------

def test_parquet_keeps_every_row_ids_labels_and_order(tmp_path):
    f = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["good", None, "", "bad"],
                             "label": pa.array([1, 0, None, -1], pa.int8())}), f)
    labeled, ids, texts, labels, _ = read_all(f)
    assert labeled
    assert ids == ["a", "b", "c", "d"]
    assert texts == ["good", None, "", "bad"]
    assert labels == [1, 0, None, None]


def test_parquet_without_labels_is_unlabeled(tmp_path):
    f = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"review": ["good", "bad"]}), f)
    labeled, ids, texts, labels, _ = read_all(f)
    assert (labeled, ids, texts, labels) == (False, ["train-0", "train-1"], ["good", "bad"], None)


def test_csv_numeric_looking_review_and_id_stay_text(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text('id,text,label\n007,123,1\n008,"a ""quoted"", multi\nline review",0\n009,,1\n')
    labeled, ids, texts, labels, _ = read_all(f)
    assert labeled
    assert ids == ["007", "008", "009"]
    assert status_of(texts[0]) == "ok" and decoded(texts[0]) == "123"  # not the number 123
    assert texts[1] == 'a "quoted", multi\nline review'
    assert status_of(texts[2]) in ("null", "empty")
    assert labels == [1, 0, 1]


def test_tsv(tmp_path):
    f = tmp_path / "reviews.tsv"
    f.write_text("text\tsentiment\ngreat, really great\tpositive\n42\tnegative\n")
    labeled, ids, texts, labels, _ = read_all(f)
    assert labeled and ids == ["train-0", "train-1"]
    assert texts == ["great, really great", "42"]
    assert labels == [1, 0]


def test_text_file_one_review_per_line(tmp_path):
    f = tmp_path / "reviews.txt"
    f.write_bytes(b"good film\r\n"          # CRLF
                  b"\n"                     # an empty line is kept
                  b"   \r\n"                # whitespace only
                  b"caf\xe9 latin-1\n"      # not UTF-8
                  + "café ünïcode 😀\n".encode()
                  + b"last line, no newline")
    labeled, ids, texts, labels, sizes = read_all(f, batch_rows=2)
    assert not labeled and labels is None
    assert ids == [f"line-{n}" for n in range(1, 7)]
    assert [status_of(t) for t in texts] == ["ok", "empty", "empty", "not_text", "ok", "ok"]
    assert texts[0] == "good film" and texts[4] == "café ünïcode 😀" and texts[5] == "last line, no newline"
    assert sizes == [2, 2, 2]


def test_text_file_has_no_test_part(tmp_path):
    """As for a CSV or Parquet file without a ``split`` column: asking for its test part is an
    error, not all of it scored silently."""
    f = tmp_path / "reviews.txt"
    f.write_text("a\nb\n")
    assert read_all(f, "all")[2] == ["a", "b"]
    with pytest.raises(SourceError, match="test"):
        list(open_reviews(str(f), "test").batches)


def test_csv_row_that_is_not_utf8_is_not_text_not_a_failed_file(tmp_path):
    """One undecodable review in a CSV keeps its row with status ``not_text``, as in a text
    file; the rest of the file is scored."""
    f = tmp_path / "reviews.csv"
    f.write_bytes(b"text,label\ngood,1\ncaf\xe9 latin-1,0\nfine,1\n")
    _, ids, texts, labels, _ = read_all(f)
    assert ids == ["train-0", "train-1", "train-2"] and labels == [1, 0, 1]
    assert [status_of(t) for t in texts] == ["ok", "not_text", "ok"]


# -- folders and splits ---------------------------------------------------------------------------

def _folder_without_ids(folder):
    """train.csv, and the test part in two files: ids come from the ``<split>-<n>`` fallback."""
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nt zero,pos\nt one,neg\nt two,1\n")
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), folder / "test-0000.parquet")
    pq.write_table(pa.table({"text": ["c", "d", "e"], "label": [1, 1, 0]}), folder / "test-0001.parquet")
    return folder


def test_folder_auto_is_test_all_is_train_then_test(tmp_path):
    src = _folder_without_ids(tmp_path / "src")
    labeled, ids, texts, labels, _ = read_all(src)
    assert labeled and texts == ["a", "b", "c", "d", "e"] and labels == [0, 1, 1, 1, 0]
    assert ids == [f"test-{i}" for i in range(5)]
    _, ids_all, texts_all, labels_all, _ = read_all(src, "all")
    assert ids_all == [f"train-{i}" for i in range(3)] + ids
    assert texts_all == ["t zero", "t one", "t two", "a", "b", "c", "d", "e"]
    assert labels_all == [1, 0, 1, 0, 1, 1, 1, 0]
    assert read_all(src, "train")[2] == ["t zero", "t one", "t two"]
    assert read_all(src, "test")[2] == texts


def test_fallback_ids_equal_ingest_ids(tmp_path):
    src = _folder_without_ids(tmp_path / "src")
    out = tmp_path / "ingested"
    out.mkdir()
    ingest(str(src), out)
    expected = {s: ingested_part(out, s).column("id").to_pylist() for s in ("train", "test")}
    assert read_all(src)[1] == expected["test"]
    assert read_all(src, "all")[1] == expected["train"] + expected["test"]


def test_single_file_with_split_column(tmp_path):
    f = tmp_path / "all.parquet"
    pq.write_table(pa.table({"text": ["tr0", "te0", "tr1", "te1", "te2"],
                             "label": [0, 1, 1, 0, 1],
                             "split": ["train", "test", "train", "test", "test"]}), f)
    out = tmp_path / "ingested"
    out.mkdir()
    ingest(str(f), out)
    ingested = {s: ingested_part(out, s) for s in ("train", "test")}
    _, ids, texts, labels, _ = read_all(f, batch_rows=2)
    assert texts == ["te0", "te1", "te2"] and labels == [1, 0, 1]
    assert ids == ingested["test"].column("id").to_pylist() == ["test-0", "test-1", "test-2"]
    _, ids, texts, _, _ = read_all(f, "train", batch_rows=2)
    assert texts == ["tr0", "tr1"] and ids == ingested["train"].column("id").to_pylist()


def test_single_file_split_column_loses_no_row(tmp_path):
    """A row whose split is neither train nor test must not vanish from ``all``: ingest refuses
    such a file; scoring must either refuse it too or keep the row."""
    f = tmp_path / "all.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "split": ["train", "test", "dev", None]}), f)
    try:
        _, _, texts, _, _ = read_all(f, "all")
    except SourceError as e:
        assert "split" in str(e)
    else:
        assert sorted(texts) == ["a", "b", "c", "d"], f"rows lost: scored only {texts}"


@pytest.mark.parametrize("layout", ["folder", "file", "file-with-split-column"])
def test_test_split_on_source_without_test_is_an_error(tmp_path, layout):
    if layout == "folder":
        src = tmp_path / "src"
        src.mkdir()
        pq.write_table(pa.table({"text": ["a"], "label": [1]}), src / "train.parquet")
    else:
        src = tmp_path / "one.parquet"
        cols = {"text": ["a"], "label": [1]}
        pq.write_table(pa.table({**cols, "split": ["train"]} if layout.endswith("column") else cols), src)
    with pytest.raises(SourceError, match="test"):
        list(open_reviews(str(src), "test").batches)
    assert read_all(src)[2] == ["a"]  # auto: all of it


def test_ids_from_id_then_source_id_columns(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"source_id": ["s1", "s2"], "text": ["x", "y"]}), f)
    assert read_all(f)[1] == ["s1", "s2"]
    g = tmp_path / "b.parquet"
    pq.write_table(pa.table({"source_id": ["s1", "s2"], "id": [10, 11], "text": ["x", "y"]}), g)
    assert read_all(g)[1] == ["10", "11"]


# -- labels ---------------------------------------------------------------------------------------

def test_labels_names_numbers_null_and_unlabeled(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": list("abcdefgh"),
                             "label": ["0", "1", "pos", "neg", "Positive", "negative", None, "pos"]}), f)
    assert read_all(f, batch_rows=3)[3] == [0, 1, 1, 0, 1, 0, None, 1]
    g = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": list("abcd"), "label": pa.array([1, -1, None, 0], pa.int64())}), g)
    assert read_all(g)[3] == [1, None, None, 0]
    h = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": list("abc"), "label": [1.0, float("nan"), 0.0]}), h)
    assert read_all(h)[3] == [1, None, 0]


def test_csv_text_labels_with_missing_ones(tmp_path):
    """A CSV of pos/neg labels where some are missing (an empty field, or the hub's -1): those
    rows have no label, as in a numeric label column, rather than failing the file."""
    f = tmp_path / "a.csv"
    f.write_text("text,label\ngood,pos\nbad,neg\nmeh,\nhm,-1\n")
    assert read_all(f)[3] == [1, 0, None, None]
    g = tmp_path / "b.csv"
    g.write_text("text,label\ngood,1\nbad,0\nmeh,\nhm,-1\n")
    assert read_all(g)[3] == [1, 0, None, None]


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_invalid_label_names_file_row_and_column(tmp_path, suffix):
    f = tmp_path / f"a.{suffix}"
    table = pa.table({"text": [f"r{i}" for i in range(7)], "sentiment": ["pos", "neg", "pos", "neg", "maybe", "pos", "neg"]})
    if suffix == "parquet":
        pq.write_table(table, f, row_group_size=2)
    else:
        f.write_text("text,sentiment\n" + "".join(f"{t},{s}\n" for t, s in zip(*table.to_pydict().values())))
    with pytest.raises(SourceError) as e:
        read_all(f, batch_rows=2)
    assert f"{f}, row 5, column 'sentiment'" in str(e.value) and "maybe" in str(e.value)


def test_invalid_label_row_counts_rows_of_the_other_split(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label,split\na,1,train\nb,0,test\nc,1,train\nd,2,test\n")
    with pytest.raises(SourceError, match=r"row 4, column 'label'"):
        read_all(f)


# -- streaming and unreadable sources -------------------------------------------------------------

def test_parquet_streams_in_batches_of_at_most_batch_rows(tmp_path):
    f = tmp_path / "big.parquet"
    n = 95
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "text": [f"review {i}" for i in range(n)]}),
                   f, row_group_size=20)
    assert pq.ParquetFile(f).metadata.num_row_groups == 5
    _, ids, _, _, sizes = read_all(f, batch_rows=8)
    assert ids == [f"r{i}" for i in range(n)]
    assert len(sizes) >= 12 and max(sizes) <= 8 and sum(sizes) == n


def test_stream_is_lazy(tmp_path):
    """Opening reads no rows: a bad label deep in the file fails only when its batch is read."""
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"r{i}" for i in range(40)], "label": ["pos"] * 39 + ["bad"]}), f,
                   row_group_size=10)
    batches = open_reviews(str(f), batch_rows=10).batches
    assert len(next(batches).ids) == 10
    with pytest.raises(SourceError, match="row 40"):
        list(batches)


@pytest.mark.parametrize("name", ["garbage.parquet", "garbage.csv"])
def test_garbage_file_is_a_source_error(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"PAR1\x00\x01garbage\xff\xfe" * 10 if name.endswith("parquet") else b"\x00\xff\"unterminated\n")
    with pytest.raises(SourceError, match="garbage"):
        read_all(f)


def test_missing_path_and_unsupported_file_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_reviews(str(tmp_path / "missing.parquet"))
    odd = tmp_path / "reviews.json"
    odd.write_text("[]")
    with pytest.raises(SourceError, match="unsupported"):
        open_reviews(str(odd))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no train/test"):
        open_reviews(str(empty))


def test_file_without_text_column_is_a_source_error(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"], "label": [1]}), f)
    with pytest.raises(SourceError, match="no text column"):
        read_all(f)


@pytest.mark.parametrize("kind", ["dictionary", "large_string"])
def test_split_column_of_other_string_types(tmp_path, kind):
    """A ``split`` column as pandas categoricals (dictionary) or Polars (large_string) write it
    reads like a plain string column, as ingest reads it."""
    split = pa.array(["train", "test", "test"], pa.large_string() if kind == "large_string" else pa.string())
    if kind == "dictionary":
        split = split.dictionary_encode()
    f = tmp_path / "all.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "split": split}), f)
    assert read_all(f)[1:3] == (["test-0", "test-1"], ["b", "c"])
    assert read_all(f, "all")[2] == ["a", "b", "c"]


def _acl_folder(root):
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (root / split / label).mkdir(parents=True)
    (root / "train/pos/0_9.txt").write_text("great")
    (root / "train/neg/0_2.txt").write_text("awful")
    (root / "test/pos/0_9.txt").write_text("great film")
    (root / "test/pos/3_8.txt").write_text("moving <br />story")
    (root / "test/neg/1_2.txt").write_text("bad film")
    return root


def test_aclimdb_folder_ids_and_labels_as_ingest(tmp_path):
    root = _acl_folder(tmp_path / "aclImdb")
    out = tmp_path / "ingested"
    out.mkdir()
    ingest(str(root), out)
    expected = ingested_part(out, "test").to_pydict()
    labeled, ids, texts, labels, _ = read_all(root, batch_rows=2)
    assert labeled and (ids, texts, labels) == (expected["id"], expected["text"], expected["label"])


def test_aclimdb_review_that_cannot_be_scored_keeps_its_row(tmp_path):
    """An empty or undecodable review file in an aclImdb folder gets its status, like a row of
    any other source, instead of failing the whole source."""
    root = _acl_folder(tmp_path / "aclImdb")
    (root / "test/neg/1_2.txt").write_text("")
    (root / "test/pos/3_8.txt").write_bytes(b"caf\xe9")
    _, ids, texts, labels, _ = read_all(root)
    assert ids == ["test/neg/1_2.txt", "test/pos/0_9.txt", "test/pos/3_8.txt"]
    assert [status_of(t) for t in texts] == ["empty", "ok", "not_text"]
    assert labels == [0, 1, 1]


# -- parts: contiguous rows scored on their own (one Dask task each) ------------------------------

def _parts_read(source, split="auto", part_rows=3, batch_rows=2):
    """(labeled, ids, texts, labels, part count) of all parts, read one after the other."""
    labeled, parts = plan_parts(str(source), split, part_rows)
    ids, texts, labels = [], [], []
    for part in parts:
        part = SourcePart.model_validate_json(part.model_dump_json())  # as a task gets it
        for b in part_batches(part, batch_rows):
            ids += b.ids
            texts += b.texts
            labels = None if b.labels is None else (labels or []) + b.labels
    return labeled, ids, texts, labels, len(parts)


def _layouts(tmp_path):
    """Sources of every kind a part can be cut from, with no ids (``<split>-<n>`` from counters)."""
    many = tmp_path / "groups.parquet"  # row groups of 4, one of them bigger than part_rows
    t = pa.table({"text": [f"r{i}" for i in range(23)], "label": [i % 2 for i in range(23)],
                  "split": ["train" if i % 3 else "test" for i in range(23)]})
    with pq.ParquetWriter(many, t.schema) as w:
        w.write_table(t.slice(0, 4))
        w.write_table(t.slice(4, 11))
        w.write_table(t.slice(15, 4))
        w.write_table(t.slice(19, 4))
    folder = _folder_without_ids(tmp_path / "folder")
    pq.write_table(pa.table({"text": ["f", "g", "h", "i"], "label": [0, 1, 0, 1]}), folder / "test-0002.parquet",
                   row_group_size=1)
    (folder / "test-0001.csv").write_text("text,label\nx,1\ny,0\n")  # ignored: Parquet comes first
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    (csvs / "test-0000.csv").write_text("text,label\na,1\nb,0\nc,1\n")
    (csvs / "test-0001.csv").write_text("text,split\nd,test\n")
    (csvs / "test-0002.csv").write_text("text,label\ne,0\n")
    txt = tmp_path / "lines.txt"
    txt.write_text("one\ntwo\n\nthree\n")
    big = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(10)], "text": ["x"] * 10}), big)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    acl = _acl_folder(tmp_path / "aclImdb")
    return {"groups": many, "folder": folder, "csvs": csvs, "txt": txt, "one-group": big, "empty": empty,
            "aclImdb": acl}


@pytest.mark.parametrize("split", ["auto", "all", "train"])
def test_parts_in_order_are_the_whole_stream(tmp_path, split):
    for name, source in _layouts(tmp_path).items():
        try:
            whole = read_all(source, split)
        except SourceError:
            with pytest.raises(SourceError):
                plan_parts(str(source), split)
            continue
        labeled, ids, texts, labels, count = _parts_read(source, split)
        assert (labeled, ids, texts, labels) == whole[:4], (name, split)
        parts = {"groups": 10, "folder": {"auto": 4, "all": 5, "train": 1}[split], "csvs": 3, "txt": 1,
                 "one-group": 4, "empty": 0, "aclImdb": 1}
        assert count == parts[name], (name, count)


def test_parts_cut_parquet_at_row_groups(tmp_path):
    f = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": [f"r{i}" for i in range(12)]}), f, row_group_size=5)
    _, parts = plan_parts(str(f), "all", part_rows=5)
    assert [p.span for p in parts] == [(0, 5), (5, 10), (10, 12)]
    assert [p.counters["train"] for p in parts] == [0, 5, 10]
    _, parts = plan_parts(str(f), "all", part_rows=8)
    assert [p.span for p in parts] == [(0, 10), (10, 12)]
    assert all(p.path == str(f.resolve()) for p in parts)  # absolute: a Dask worker has another cwd
    _, one = plan_parts(str(f), "all", part_rows=100)
    assert [p.span for p in one] == [(0, 12)]


def test_part_of_a_file_reports_its_own_row_numbers(tmp_path):
    f = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": [f"r{i}" for i in range(8)], "label": ["pos"] * 6 + ["maybe", "neg"]}), f,
                   row_group_size=4)
    _, parts = plan_parts(str(f), "all", part_rows=4)
    assert list(part_batches(parts[0], 2))  # the first rows are fine
    with pytest.raises(SourceError, match="row 7"):
        list(part_batches(parts[1], 2))
    with pytest.raises(SourceError, match="row 7"):
        read_all(f, "all")
