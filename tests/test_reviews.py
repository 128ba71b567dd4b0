"""The review schema's one home (``sentiflow.tasks.data.reviews``): columns, labels and their null rule,
ids, a folder's parts, fingerprints; and ingest and scoring agreeing on them, on real Parquet, CSV
and text files. Expected values are written out or computed here with hashlib, not by the code
under test."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.tasks.data import ingest as ingest_mod
from sentiflow.tasks.data.ingest import ingest, read_part
from sentiflow.tasks.data.reviews import (
    ID_COLUMNS,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    SourceError,
    fingerprint,
    labels,
    line_id,
    make_ids,
    pick,
    source_kind,
)
from sentiflow.tasks.scoring.score_sources import open_reviews
from tests.conftest import edit_module_source


def scored(source, split="auto", batch_rows=2048):
    """(ids, texts, labels) of everything scoring reads from ``source``."""
    ids, texts, labs = [], [], []
    for b in open_reviews(str(source), split, batch_rows).batches:
        ids += b.ids
        texts += b.texts
        labs += b.labels if b.labels is not None else [None] * len(b.ids)
    return ids, texts, labs


def ingested(source, out):
    out.mkdir(parents=True, exist_ok=True)
    ingest(str(source), out)
    return {s: read_part(out, s).to_pydict() for s in ("train", "test")}


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- columns --------------------------------------------------------------------------------------

def test_column_names():
    assert TEXT_COLUMNS == ("text", "review")
    assert LABEL_COLUMNS == ("label", "sentiment")
    assert ID_COLUMNS == ("id", "source_id")


def test_pick_prefers_the_first_wanted_name_not_the_file_order():
    assert pick(["review", "text"], TEXT_COLUMNS) == "text"
    assert pick(["sentiment", "x"], LABEL_COLUMNS) == "sentiment"
    assert pick(["x"], ID_COLUMNS) is None


def test_pick_with_origin_names_what_is_missing():
    with pytest.raises(SourceError) as exc:
        pick(["body", "stars"], LABEL_COLUMNS, "f.parquet", "label")
    assert str(exc.value) == ("f.parquet: no label column (looked for 'label', 'sentiment'; "
                              "found 'body', 'stars')")
    with pytest.raises(SourceError, match="found no columns"):
        pick([], TEXT_COLUMNS, "empty.csv", "text")


# -- labels and the null rule ---------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["error", "none"])
def test_labels_accepted_by_both_rules(missing):
    values = [1, 0, True, False, 1.0, 0.0, "pos", "neg", " Positive ", "NEGATIVE", "1", "0"]
    assert labels(values, "label", "f", missing=missing) == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("value", [None, float("nan"), -1, -1.0, "", "  ", "-1", " -1 "],
                         ids=repr)
def test_missing_label_is_none_for_scoring_and_an_error_for_ingest(value):
    assert labels([1, value], "label", "f", missing="none") == [1, None]
    with pytest.raises(SourceError) as exc:
        labels([1, value], "label", "f.csv", missing="error")
    assert str(exc.value).startswith("f.csv, row 2, column 'label': label ")


@pytest.mark.parametrize("missing", ["error", "none"])
@pytest.mark.parametrize("value", [2, 0.5, "maybe", "neutral", -2], ids=repr)
def test_bad_label_is_an_error_under_both_rules(missing, value):
    with pytest.raises(SourceError) as exc:
        labels(["pos", value], "sentiment", "f.csv", rows=[10, 41], missing=missing)
    assert str(exc.value) == (f"f.csv, row 42, column 'sentiment': label {value!r} is not 0/1 or "
                              "one of pos/neg/positive/negative")


def test_the_null_rule_must_be_given():
    with pytest.raises(TypeError):
        labels([1], "label", "f")  # no default: each caller says what a missing label means


def test_null_label_in_one_file_ingest_refuses_scoring_keeps(tmp_path):
    f = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": pa.array([1, None, -1], pa.int64())}), f)
    with pytest.raises(SourceError, match=r"r\.parquet, row 2, column 'label': label None"):
        ingested(f, tmp_path / "out")
    assert scored(f)[2] == [1, None, None]


def test_bad_label_same_message_in_ingest_and_scoring(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("text,label\na,pos\nb,neutral\n")
    with pytest.raises(SourceError) as from_ingest:
        ingested(f, tmp_path / "out")
    with pytest.raises(SourceError) as from_scoring:
        scored(f)
    expected = f"{f}, row 2, column 'label': label 'neutral' is not 0/1 or one of pos/neg/positive/negative"
    assert str(from_ingest.value) == str(from_scoring.value) == expected


# -- ids ------------------------------------------------------------------------------------------

def test_make_ids_counts_each_split_and_advances_the_counters():
    counters = {"train": 2, "test": 0}
    assert make_ids(None, ["train", "test", "train"], counters) == ["train-2", "test-0", "train-3"]
    assert counters == {"train": 4, "test": 1}
    # a row with its own id still takes its place in the count
    assert make_ids(["a", None, "c"], ["test"] * 3, counters) == ["a", "test-2", "c"]
    assert counters == {"train": 4, "test": 4}


def test_line_id():
    assert [line_id(n) for n in (1, 2, 10)] == ["line-1", "line-2", "line-10"]


def test_ids_without_id_column_the_same_in_ingest_and_scoring(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), src / "train-0.parquet")
    (src / "train-1.csv").write_text("text,label\nc,1\n")  # parquet wins: this one is not read
    pq.write_table(pa.table({"text": ["d"], "label": [1]}), src / "train-1.parquet")
    pq.write_table(pa.table({"source_id": ["x/1"], "text": ["e"], "label": [0]}), src / "test.parquet")
    t = ingested(src, tmp_path / "out")
    assert t["train"]["id"] == ["train-0", "train-1", "train-2"] and t["test"]["id"] == ["x/1"]
    assert scored(src, "all")[0] == ["train-0", "train-1", "train-2", "x/1"]


def test_text_file_ids_are_lines(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("good\nbad\n\nfine\n")
    assert scored(f)[0] == ["line-1", "line-2", "line-3", "line-4"]


# -- a folder's parts: the file decides, a split column must agree ---------------------------------

def _folder(tmp_path, train_split, fmt="parquet"):
    src = tmp_path / "src"
    src.mkdir()
    train = {"text": ["t0", "t1", "t2", "t3"], "label": [0, 1, 0, 1], "split": train_split}
    if fmt == "parquet":
        pq.write_table(pa.table(train), src / "train.parquet")
    else:
        rows = "".join(f"{x},{y},{'' if s is None else s}\n" for x, y, s in zip(*train.values()))
        (src / "train.csv").write_text("text,label,split\n" + rows)
    pq.write_table(pa.table({"text": ["e0"], "label": [1], "split": ["test"]}), src / "test.parquet")
    return src


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_folder_split_column_that_agrees_loses_no_row(tmp_path, fmt):
    src = _folder(tmp_path, ["train"] * 4, fmt)
    t = ingested(src, tmp_path / "out")
    assert t["train"]["text"] == ["t0", "t1", "t2", "t3"] and t["test"]["text"] == ["e0"]
    ids, texts, labs = scored(src, "all", batch_rows=3)
    assert texts == ["t0", "t1", "t2", "t3", "e0"] and labs == [0, 1, 0, 1, 1]
    assert ids == ["train-0", "train-1", "train-2", "train-3", "test-0"]


def test_folder_split_column_as_dictionary_agrees(tmp_path):
    src = _folder(tmp_path, pa.array(["train"] * 4).dictionary_encode())
    assert ingested(src, tmp_path / "out")["train"]["text"] == ["t0", "t1", "t2", "t3"]
    assert scored(src, "train")[1] == ["t0", "t1", "t2", "t3"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("value", ["test", "dev", None], ids=repr)
def test_folder_split_column_that_disagrees_is_an_error_in_ingest_and_scoring(tmp_path, fmt, value):
    """Before: scoring dropped the row (it vanished), ingest kept it as train. Now both refuse,
    naming file, row and column; scoring reads in batches of 2, so the bad row is in the second."""
    src = _folder(tmp_path, ["train", "train", "train", value], fmt)
    shown = "''" if fmt == "csv" and value is None else repr(value)  # a CSV's empty cell is ''
    expected = (f"{src / f'train.{fmt}'}, row 4, column 'split': {shown} in a train file "
                "(in a folder the file decides the part; a split column must agree with it)")
    with pytest.raises(SourceError) as from_ingest:
        ingested(src, tmp_path / "out")
    assert str(from_ingest.value) == expected
    for split in ("all", "train"):
        with pytest.raises(SourceError) as from_scoring:
            scored(src, split, batch_rows=2)
        assert str(from_scoring.value) == expected
    assert scored(src)[1] == ["e0"]  # auto: the test part only, which agrees


def test_single_file_split_column_still_decides(tmp_path):
    f = tmp_path / "all.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, 1, 1],
                             "split": ["train", "test", "train"]}), f)
    t = ingested(f, tmp_path / "out")
    assert t["train"]["text"] == ["a", "c"] and t["test"]["text"] == ["b"]
    assert scored(f)[1] == ["b"] and scored(f, "train")[1] == ["a", "c"]


# -- kinds and fingerprints -----------------------------------------------------------------------

def test_text_kind_only_when_asked(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("good\n")
    assert source_kind(str(f), text=True) == "text"
    with pytest.raises(SourceError, match="unsupported file type"):
        source_kind(str(f))


def test_fingerprint_of_a_file(tmp_path):
    data = b"text,label\na,1\n"
    for kind in ("csv", "tsv"):
        f = tmp_path / f"r.{kind}"
        f.write_bytes(data)
        assert fingerprint(str(f)) == f"{kind}:" + hashlib.sha256(kind.encode() + b".\0" + sha(data)).hexdigest()
    f = tmp_path / "r.txt"
    f.write_bytes(b"good\nbad\n")
    assert fingerprint(str(f)) == "text:" + hashlib.sha256(b"text" + sha(b"good\nbad\n")).hexdigest()


def test_fingerprint_of_a_folder_covers_the_files_read_in_path_order(tmp_path):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    files = {"train/b.csv": b"text,label\nb,0\n", "train/a.csv": b"text,label\na,1\n",
             "test.csv": b"text,label\nc,1\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / "notes.csv").write_bytes(b"not read")
    digest = hashlib.sha256(b"folder")
    for name in ("test.csv", "train/a.csv", "train/b.csv"):
        digest.update(name.encode() + b"\0" + sha(files[name]))
    assert fingerprint(str(src)) == "folder:" + digest.hexdigest()


def test_fingerprint_of_aclimdb_folder_and_archive(tmp_path):
    root = tmp_path / "acl" / "aclImdb"
    files = {"train/pos/0_9.txt": b"great", "train/neg/1_2.txt": b"awful", "test/pos/2_8.txt": b"fine"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    digest = hashlib.sha256(b"aclimdb")
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + sha(files[name]))
    assert fingerprint(str(root)) == fingerprint(str(root.parent)) == "aclimdb:" + digest.hexdigest()
    tar = tmp_path / "acl.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(root, arcname="aclImdb")
    expected = hashlib.sha256(b"aclimdb-tar" + b".\0" + sha(tar.read_bytes())).hexdigest()
    assert fingerprint(str(tar)) == "aclimdb-tar:" + expected


def test_fingerprint_of_a_hub_dataset_is_its_revision(monkeypatch):
    import huggingface_hub

    class Api:
        def dataset_info(self, source, timeout=None):
            return types.SimpleNamespace(sha=f"rev-of-{source}")

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert fingerprint("stanfordnlp/imdb") == "hub:stanfordnlp/imdb@rev-of-stanfordnlp/imdb"


# -- the module itself ----------------------------------------------------------------------------

def test_reviews_imports_no_prefect():
    code = ("import sys, sentiflow.tasks.data.reviews; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ingest_key_follows_reviews(tmp_path, monkeypatch):
    before = ingest_mod.plan(tmp_path, "folder:abc").key
    edit_module_source(monkeypatch, "sentiflow.tasks.data.reviews")
    assert ingest_mod.plan(tmp_path, "folder:abc").key != before


def test_hub_calls_are_retried_with_backoff_on_transient_errors_only():
    from huggingface_hub.errors import OfflineModeIsEnabled

    from sentiflow.tasks.data.reviews import with_retries

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "sha"

    assert with_retries(flaky, "test", first_wait=0.01) == "sha" and len(calls) == 3

    offline = []

    def fails_offline():
        offline.append(1)
        raise OfflineModeIsEnabled("offline")

    with pytest.raises(OfflineModeIsEnabled):
        with_retries(fails_offline, "test", first_wait=0.01)
    assert len(offline) == 1  # offline mode is final: no retry

    always = []

    def down():
        always.append(1)
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        with_retries(down, "test", attempts=3, first_wait=0.01)
    assert len(always) == 3  # bounded
