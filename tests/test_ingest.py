"""Stage 1, ingest: every source kind → ``train.parquet`` / ``test.parquet`` (id, text, int8 label).

All sources are real files made here: Parquet via pyarrow, CSV via the csv module, an ``aclImdb``
folder of ``.txt`` files, and its ``.tar.gz`` made with tarfile. The hub path is tested offline
(conftest sets ``HF_HUB_OFFLINE=1``) for a fast, clear error.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.storage.store import MANIFEST, Store
from sentiflow.tasks.data import ingest as ingest_mod
from sentiflow.tasks.data.ingest import SCHEMA, ingest, normalize, read_part
from sentiflow.tasks.data.reviews import fingerprint
from sentiflow.tasks.data.sources import SourceError, read_source, source_kind
from tests.conftest import capture_log, edit_module_source, make_reviews, write_imdb_folder

REAL_IMDB = Path("/work/shared/data/imdb")

# -- helpers ------------------------------------------------------------------------------------


def write_parquet(path: Path, **columns: Any) -> Path:
    """A Parquet file with the given columns (lists or pyarrow arrays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


# An aclImdb tree: ``<split>/<label>/<id>_<rating>.txt``. Files are deliberately listed out of
# order; ids 2 and 10 (and 3 and 11) tell numeric order from string order.
ACL_REVIEWS = {
    "train/pos/10_8.txt": "Superb, ten out of ten.",
    "train/pos/2_9.txt": "Bromwell High is a cartoon comedy.",
    "train/pos/0_7.txt": "Master cinéaste Alain Resnais likes to work with those actors.<br /><br />Bravo!",
    "train/neg/1_2.txt": "Dreadful and tedious.",
    "train/neg/0_3.txt": "Story of a man who has unnatural feelings for a pig.",
    "test/pos/0_10.txt": "I went and saw this movie last night, wonderful.",
    "test/neg/11_4.txt": "Lifeless plot,\nclumsy actors.",
    "test/neg/3_1.txt": "Awful.",
}
ACL_TRAIN_IDS = ["train/neg/0_3.txt", "train/neg/1_2.txt",
                 "train/pos/0_7.txt", "train/pos/2_9.txt", "train/pos/10_8.txt"]
ACL_TEST_IDS = ["test/neg/3_1.txt", "test/neg/11_4.txt", "test/pos/0_10.txt"]
# Files the real release also holds, which are not labelled reviews and must be ignored.
ACL_EXTRAS = {
    "imdb.vocab": "the\nand\n",
    "README": "Large Movie Review Dataset v1.0\n",
    "train/urls_pos.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
    "train/unsup/0_0.txt": "An unlabelled review.",
    "train/labeledBow.feat": "9 0:9 1:1\n",
}


def write_acl(parent: Path, reviews: dict[str, str | bytes] | None = None,
              extras: bool = True) -> Path:
    """``parent/aclImdb/...`` with ``reviews`` (text or raw bytes); returns the aclImdb folder."""
    root = parent / "aclImdb"
    files: dict[str, str | bytes] = dict(ACL_REVIEWS if reviews is None else reviews)
    if extras:
        files.update(ACL_EXTRAS)
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return root


def make_tar(acl_root: Path, tar_path: Path) -> Path:
    """Pack an aclImdb folder the way the release does: members ``aclImdb/train/pos/...``."""
    mode = "w:gz" if tar_path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(tar_path, mode) as tar:
        tar.add(acl_root, arcname="aclImdb")
    return tar_path


def run_ingest(source: Path | str, out: Path) -> tuple[dict[str, int], dict[str, pa.Table]]:
    """``ingest`` into a fresh folder; returns its counts and the two tables it wrote."""
    out.mkdir(parents=True)
    counts = ingest(str(source), out)
    assert sorted(p.name for p in out.iterdir()) == ["test-00000.parquet", "train-00000.parquet"]
    tables = {s: read_part(out, s) for s in ("train", "test")}
    for t in tables.values():
        assert t.schema.equals(SCHEMA), t.schema
    assert counts == {s: t.num_rows for s, t in tables.items()}
    return counts, tables


def col(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def source_error(source: Path | str, out: Path) -> str:
    """The message of the ``SourceError`` that ingesting ``source`` raises."""
    out.mkdir(parents=True, exist_ok=True)
    with pytest.raises(SourceError) as exc:
        ingest(str(source), out)
    return str(exc.value)


def leftovers(root: Path) -> list[Path]:
    """Anything under a data root that looks like a stage output or a half-written one."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*")
            if p.name == MANIFEST or p.name.startswith((".tmp-", ".trash-")) or p.is_file()]


# -- 1. every source kind -----------------------------------------------------------------------


def test_parquet_file_without_split_column_is_all_train(tmp_path):
    src = write_parquet(tmp_path / "reviews.parquet", id=["a", "b", "c"],
                        text=["good", "bad", "fine"], label=pa.array([1, 0, 1], pa.int64()))
    assert source_kind(str(src)) == "parquet"
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 3, "test": 0}
    assert col(t["train"], "id") == ["a", "b", "c"]
    assert col(t["train"], "text") == ["good", "bad", "fine"]
    assert col(t["train"], "label") == [1, 0, 1]
    assert t["train"].schema.field("label").type == pa.int8()


def test_parquet_file_with_split_column_is_split_by_it(tmp_path):
    src = write_parquet(tmp_path / "reviews.parquet",
                        text=["t0", "t1", "t2", "t3", "t4"], label=[0, 1, 1, 0, 1],
                        split=["train", "test", "train", "test", "train"])
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 3, "test": 2}
    assert col(t["train"], "text") == ["t0", "t2", "t4"]
    assert col(t["train"], "label") == [0, 1, 1]
    assert col(t["test"], "text") == ["t1", "t3"]
    assert col(t["test"], "label") == [1, 0]
    # no id column: ids are made up per split, and unique
    assert col(t["train"], "id") == ["train-0", "train-1", "train-2"]
    assert col(t["test"], "id") == ["test-0", "test-1"]
    assert "split" not in t["train"].column_names


def test_parquet_folder_with_train_and_test_files(imdb_folder, tmp_path):
    assert source_kind(str(imdb_folder)) == "folder"
    counts, t = run_ingest(imdb_folder, tmp_path / "out")
    assert counts == {"train": 200, "test": 100}
    want_train, want_test = make_reviews(200, 0, "train-"), make_reviews(100, 1, "test-")
    assert t["train"].equals(want_train.cast(SCHEMA))
    assert t["test"].equals(want_test.cast(SCHEMA))
    assert set(col(t["train"], "label")) == {0, 1}


def test_parquet_folder_in_hugging_face_layout(tmp_path):
    """``<config>/<split>-00000-of-0000N.parquet`` with the hub's columns (text, label), and an
    ``unsupervised`` split that is not read."""
    src = tmp_path / "imdb"
    hf = src / "plain_text"
    write_parquet(hf / "train-00000-of-00002.parquet", text=["a", "b"], label=[0, 1])
    write_parquet(hf / "train-00001-of-00002.parquet", text=["c", "d", "e"], label=[1, 0, 1])
    write_parquet(hf / "test-00000-of-00001.parquet", text=["x", "y"], label=[1, 0])
    write_parquet(hf / "unsupervised-00000-of-00001.parquet", text=["u"], label=[-1])
    (src / "README.md").write_text("dataset card\n")
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 5, "test": 2}
    assert col(t["train"], "text") == ["a", "b", "c", "d", "e"]  # shards in order
    assert col(t["train"], "label") == [0, 1, 1, 0, 1]
    # made-up ids continue across shards instead of colliding
    assert col(t["train"], "id") == [f"train-{i}" for i in range(5)]
    assert col(t["test"], "id") == ["test-0", "test-1"]


def test_parquet_folder_keeps_source_id_column_as_id(tmp_path):
    """The shared IMDb copy has ``source_id`` (and a ``rating`` column to drop)."""
    src = tmp_path / "imdb"
    write_parquet(src / "train.parquet", text=["t1", "t2"], label=pa.array([0, 1], pa.int8()),
                  rating=pa.array([3, 9], pa.int8()),
                  source_id=["train/neg/0_3.txt", "train/pos/0_9.txt"])
    write_parquet(src / "test.parquet", text=["t3"], label=pa.array([1], pa.int8()),
                  rating=pa.array([10], pa.int8()), source_id=["test/pos/0_10.txt"])
    _, t = run_ingest(src, tmp_path / "out")
    assert t["train"].column_names == ["id", "text", "label"]
    assert col(t["train"], "id") == ["train/neg/0_3.txt", "train/pos/0_9.txt"]
    assert col(t["test"], "id") == ["test/pos/0_10.txt"]


@pytest.mark.parametrize("name,delimiter,kind", [("reviews.csv", ",", "csv"),
                                                 ("reviews.tsv", "\t", "tsv")])
def test_csv_file_is_all_train(tmp_path, name, delimiter, kind):
    tricky = 'He said "no", then left.\nA second line, with commas.'
    src = write_csv(tmp_path / name, ["id", "text", "label"],
                    [[7, "Loved it", 1], [8, tricky, 0], [9, "Meh <br />", 0]], delimiter)
    assert source_kind(str(src)) == kind
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 3, "test": 0}
    assert col(t["train"], "id") == ["7", "8", "9"]  # numeric ids become strings
    assert col(t["train"], "text") == ["Loved it", tricky, "Meh <br />"]
    assert col(t["train"], "label") == [1, 0, 0]


def test_csv_folder(tmp_path):
    src = tmp_path / "csvs"
    write_csv(src / "train.csv", ["text", "label"], [["good", 1], ["bad", 0], ["ok", 1]])
    write_csv(src / "test.csv", ["text", "label"], [["nice", "pos"], ["dull", "neg"]])
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 3, "test": 2}
    assert col(t["train"], "text") == ["good", "bad", "ok"]
    assert col(t["train"], "label") == [1, 0, 1]
    assert col(t["test"], "label") == [1, 0]


def test_kaggle_csv_with_review_and_sentiment_columns(tmp_path):
    src = write_csv(tmp_path / "IMDB Dataset.csv", ["review", "sentiment"], [
        ["One of the other reviewers has mentioned that...<br /><br />", "positive"],
        ["Basically there's a family where a little boy, Jake...", "negative"],
        ["A wonderful little production.", "positive"],
    ])
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 3, "test": 0}
    assert col(t["train"], "text")[0] == "One of the other reviewers has mentioned that...<br /><br />"
    assert col(t["train"], "label") == [1, 0, 1]
    assert col(t["train"], "id") == ["train-0", "train-1", "train-2"]


def _acl_folder(tmp_path: Path) -> Path:
    return write_acl(tmp_path / "src")


def _acl_parent(tmp_path: Path) -> Path:
    return write_acl(tmp_path / "src").parent


def _acl_tar_gz(tmp_path: Path) -> Path:
    return make_tar(write_acl(tmp_path / "src"), tmp_path / "aclImdb_v1.tar.gz")


def _acl_tgz(tmp_path: Path) -> Path:
    return make_tar(write_acl(tmp_path / "src"), tmp_path / "aclImdb.tgz")


def _acl_plain_tar(tmp_path: Path) -> Path:
    return make_tar(write_acl(tmp_path / "src"), tmp_path / "aclImdb.tar")


@pytest.mark.parametrize("make,kind", [
    (_acl_folder, "aclimdb"), (_acl_parent, "aclimdb"), (_acl_tar_gz, "aclimdb-tar"),
    (_acl_tgz, "aclimdb-tar"), (_acl_plain_tar, "aclimdb-tar"),
], ids=["folder", "parent-folder", "tar.gz", "tgz", "tar"])
def test_aclimdb_sources(tmp_path, make: Callable[[Path], Path], kind: str):
    src = make(tmp_path)
    assert source_kind(str(src)) == kind
    counts, t = run_ingest(src, tmp_path / "out")
    assert counts == {"train": 5, "test": 3}
    # negative first, then numeric file id: 2_9 before 10_8, 3_1 before 11_4
    assert col(t["train"], "id") == ACL_TRAIN_IDS
    assert col(t["test"], "id") == ACL_TEST_IDS
    assert col(t["train"], "label") == [0, 0, 1, 1, 1]
    assert col(t["test"], "label") == [0, 0, 1]
    # texts exactly as in the files: UTF-8, <br /> and newlines kept
    assert col(t["train"], "text") == [ACL_REVIEWS[i] for i in ACL_TRAIN_IDS]
    assert col(t["test"], "text") == [ACL_REVIEWS[i] for i in ACL_TEST_IDS]


def test_aclimdb_folder_with_train_only(tmp_path):
    reviews = {k: v for k, v in ACL_REVIEWS.items() if k.startswith("train/")}
    counts, t = run_ingest(write_acl(tmp_path / "src", reviews), tmp_path / "out")
    assert counts == {"train": 5, "test": 0}
    assert t["test"].num_rows == 0 and t["test"].schema.equals(SCHEMA)


def test_duplicate_ids_are_rejected(tmp_path):
    src = write_parquet(tmp_path / "dup.parquet", id=["a", "b", "a"], text=["x", "y", "z"],
                        label=[0, 1, 0])
    msg = source_error(src, tmp_path / "out")
    assert "duplicate id 'a'" in msg and "train" in msg


# -- 2. labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values,expected", [
    (["pos", "neg"], [1, 0]),
    (["positive", "negative"], [1, 0]),
    ([" Positive ", "NEG"], [1, 0]),
    (["1", "0"], [1, 0]),
    ([True, False], [1, 0]),
    (pa.array([1, 0], pa.int8()), [1, 0]),
    (pa.array([1, 0], pa.int64()), [1, 0]),
    ([1.0, 0.0], [1, 0]),
], ids=["pos-neg", "positive-negative", "case-and-space", "digit-strings", "bool", "int8",
        "int64", "float"])
def test_label_values_are_mapped_to_int8(tmp_path, values, expected):
    src = write_parquet(tmp_path / "l.parquet", text=["a", "b"], label=values)
    _, t = run_ingest(src, tmp_path / "out")
    assert col(t["train"], "label") == expected
    assert t["train"].schema.field("label").type == pa.int8()


def test_csv_labels_as_words_and_booleans(tmp_path):
    src = write_csv(tmp_path / "l.csv", ["text", "label"],
                    [["a", "true"], ["b", "False"]])
    _, t = run_ingest(src, tmp_path / "out")
    assert col(t["train"], "label") == [1, 0]
    src = write_csv(tmp_path / "w.csv", ["text", "label"],
                    [["a", "Positive"], ["b", "neg"], ["c", "1"]])
    _, t = run_ingest(src, tmp_path / "out2")
    assert col(t["train"], "label") == [1, 0, 1]


@pytest.mark.parametrize("bad", [
    2, -1, "maybe", "yes", "", "2", 0.5, None,
], ids=lambda v: repr(v))
def test_unknown_label_names_file_row_and_column(tmp_path, bad):
    labels = ["pos", "neg", bad] if isinstance(bad, str) else [1, 0, bad]
    src = write_parquet(tmp_path / "bad-label.parquet", text=["a", "b", "c"], label=labels)
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg
    assert "row 3" in msg
    assert "column 'label'" in msg
    assert repr(bad) in msg


def test_unknown_sentiment_in_kaggle_csv(tmp_path):
    src = write_csv(tmp_path / "IMDB Dataset.csv", ["review", "sentiment"],
                    [["good", "positive"], ["bad", "negative"], ["what", "neutral"]])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 3" in msg and "column 'sentiment'" in msg
    assert "'neutral'" in msg


# -- 3. bad input -----------------------------------------------------------------------------------


def test_missing_text_column(tmp_path):
    src = write_parquet(tmp_path / "notext.parquet", body=["a"], label=[1])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "no text column" in msg
    assert "'text'" in msg and "'review'" in msg  # what it looked for
    assert "'body'" in msg  # what it found


def test_missing_label_column(tmp_path):
    src = write_csv(tmp_path / "nolabel.csv", ["text", "stars"], [["a", 5]])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "no label column" in msg
    assert "'label'" in msg and "'sentiment'" in msg and "'stars'" in msg


def test_null_text(tmp_path):
    src = write_parquet(tmp_path / "null.parquet", text=["a", None, "c"], label=[0, 1, 0])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 2" in msg and "column 'text'" in msg and "null" in msg


@pytest.mark.parametrize("blank", ["", "   ", " \n\t "], ids=["empty", "spaces", "whitespace"])
def test_empty_or_whitespace_text(tmp_path, blank):
    src = write_parquet(tmp_path / "blank.parquet", text=["a", "b", blank], label=[0, 1, 0])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 3" in msg and "column 'text'" in msg and "empty" in msg


def test_empty_review_in_csv(tmp_path):
    src = write_csv(tmp_path / "k.csv", ["review", "sentiment"],
                    [["fine", "positive"], ["", "negative"]])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 2" in msg and "column 'review'" in msg


def test_single_row_csv_with_empty_text(tmp_path):
    """A CSV text column with no value at all is read by pyarrow as type null; that is still an
    empty review at row 1, not a puzzling type error."""
    src = write_csv(tmp_path / "one.csv", ["text", "label"], [["", 1]])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 1" in msg and "column 'text'" in msg


def test_null_id(tmp_path):
    src = write_parquet(tmp_path / "ids.parquet", id=["a", None], text=["x", "y"], label=[0, 1])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 2" in msg and "column 'id'" in msg and "null id" in msg


def test_non_text_column(tmp_path):
    src = write_parquet(tmp_path / "ints.parquet", text=[1, 2], label=[0, 1])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "column 'text'" in msg and "expected text" in msg


def test_bad_split_value_names_row(tmp_path):
    src = write_parquet(tmp_path / "s.parquet", text=["a", "b", "c"], label=[0, 1, 0],
                        split=["train", "test", "validation"])
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and "row 3" in msg and "column 'split'" in msg and "'validation'" in msg


def test_row_numbers_refer_to_the_file_when_a_split_column_is_used(tmp_path):
    """Rows 1..5 of the file: the bad label is on file row 5, which is the 3rd training row."""
    src = write_parquet(tmp_path / "s.parquet", text=["a", "b", "c", "d", "e"],
                        label=["pos", "neg", "pos", "neg", "maybe"],
                        split=["train", "test", "train", "test", "train"])
    msg = source_error(src, tmp_path / "out")
    assert "row 5" in msg and "column 'label'" in msg
    src = write_parquet(tmp_path / "t.parquet", text=["a", "b", "c", " "], label=[0, 1, 0, 1],
                        split=["test", "train", "test", "test"])
    msg = source_error(src, tmp_path / "out")
    assert "row 4" in msg and "column 'text'" in msg and "empty" in msg


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar.gz"])
def test_undecodable_aclimdb_review_names_the_file(tmp_path, as_tar):
    reviews = dict(ACL_REVIEWS)
    reviews["train/pos/2_9.txt"] = b"Caf\xe9 scene was great"  # Latin-1, not UTF-8
    src = write_acl(tmp_path / "src", reviews)
    if as_tar:
        src = make_tar(src, tmp_path / "aclImdb_v1.tar.gz")
    msg = source_error(src, tmp_path / "out")
    assert "train/pos/2_9.txt" in msg and str(src) in msg
    assert "UTF-8" in msg


def test_empty_aclimdb_review_names_the_file(tmp_path):
    reviews = dict(ACL_REVIEWS)
    reviews["train/pos/2_9.txt"] = "  \n"
    src = write_acl(tmp_path / "src", reviews)
    msg = source_error(src, tmp_path / "out")
    assert "train/pos/2_9.txt" in msg and "empty" in msg


def _empty_parquet(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "empty.parquet", text=pa.array([], pa.string()),
                         label=pa.array([], pa.int8()))


def _header_only_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "empty.csv", ["text", "label"], [])


def _empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "nothing").mkdir()
    return tmp_path / "nothing"


def _folder_with_test_only(tmp_path: Path) -> Path:
    write_parquet(tmp_path / "f" / "test.parquet", text=["a"], label=[1])
    return tmp_path / "f"


def _acl_without_reviews(tmp_path: Path) -> Path:
    return write_acl(tmp_path / "src", {"train/pos/.keep": "", "train/neg/.keep": ""})


def _tar_without_reviews(tmp_path: Path) -> Path:
    return make_tar(_acl_without_reviews(tmp_path), tmp_path / "a.tar.gz")


@pytest.mark.parametrize("make", [
    _empty_parquet, _header_only_csv, _empty_folder, _folder_with_test_only,
    _acl_without_reviews, _tar_without_reviews,
], ids=lambda f: f.__name__.strip("_"))
def test_empty_source(tmp_path, make):
    src = make(tmp_path)
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg
    assert "no training reviews" in msg or "no train/test" in msg


def test_non_existent_local_path(tmp_path):
    missing = tmp_path / "nowhere" / "reviews.parquet"
    for call in (source_kind, fingerprint, lambda s: list(read_source(s))):
        with pytest.raises(SourceError, match="no such file or folder") as exc:
            call(str(missing))
        assert str(missing) in str(exc.value)


@pytest.mark.parametrize("name,content,problem", [
    ("reviews.json", b'[{"text": "a", "label": 1}]', "unsupported file type"),
    ("reviews.txt", b"a great film\n", "unsupported file type"),
    ("reviews.xlsx", b"PK\x03\x04", "unsupported file type"),
    ("broken.parquet", b"this is not parquet", "cannot be read"),
    ("broken.tar.gz", b"this is not a tar archive", "cannot be read"),
])
def test_unsupported_or_unreadable_file(tmp_path, name, content, problem):
    src = tmp_path / name
    src.write_bytes(content)
    msg = source_error(src, tmp_path / "out")
    assert str(src) in msg and problem in msg


def _assert_hub_message(msg: str) -> None:
    assert "'stanfordnlp/imdb'" in msg
    assert "hub could not be reached" in msg
    assert "--source" in msg


def test_hub_id_offline_fails_fast_with_advice(tmp_path):
    assert source_kind("stanfordnlp/imdb") == "hub"
    started = time.perf_counter()
    with pytest.raises(SourceError) as exc:
        fingerprint("stanfordnlp/imdb")
    _assert_hub_message(str(exc.value))
    started_read = time.perf_counter()
    msg = source_error("stanfordnlp/imdb", tmp_path / "out")
    _assert_hub_message(msg)
    assert list((tmp_path / "out").iterdir()) == []
    assert time.perf_counter() - started_read < 20
    assert time.perf_counter() - started < 40


def test_hub_id_through_stage_run_fails_fast(data_root):
    started = time.perf_counter()
    with pytest.raises(SourceError) as exc:
        ingest_mod.run("stanfordnlp/imdb", data_root)
    assert time.perf_counter() - started < 20
    _assert_hub_message(str(exc.value))
    assert leftovers(data_root) == []


# -- 4. nothing half-written -------------------------------------------------------------------


def _bad_label(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "bad.parquet", text=["a", "b"], label=[1, 7])


def _missing_column_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "bad.csv", ["text"], [["a"], ["b"]])


def _undecodable_acl(tmp_path: Path) -> Path:
    return write_acl(tmp_path / "src", {**ACL_REVIEWS, "test/pos/0_10.txt": b"\xff\xfe bad"})


def _bad_second_split(tmp_path: Path) -> Path:
    """train is fine and would be written first; test fails afterwards."""
    folder = write_imdb_folder(tmp_path / "src", 20, 10)
    write_parquet(folder / "test.parquet", text=["ok", None], label=[0, 1])
    return folder


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing"


@pytest.mark.parametrize("make", [
    _bad_label, _missing_column_csv, _undecodable_acl, _bad_second_split, _empty_folder, _missing,
], ids=lambda f: f.__name__.strip("_"))
def test_failed_run_leaves_no_stage_folder(tmp_path, data_root, make):
    src = make(tmp_path)
    with pytest.raises(SourceError):
        ingest_mod.run(str(src), data_root)
    assert leftovers(data_root) == []
    assert Store(data_root).list() == []
    assert not (data_root / "ingest").exists()  # not even an empty stage folder


def test_successful_run_writes_a_valid_stage_and_reuses_it(imdb_folder, data_root):
    ref = ingest_mod.run(str(imdb_folder), data_root)
    assert ref.path == (data_root / "ingest" / ref.key).resolve()
    assert Store(data_root).is_valid(ref)
    manifest = ref.manifest()
    assert manifest["stage"] == "ingest" and manifest["key"] == ref.key
    assert manifest["inputs"] == [fingerprint(str(imdb_folder))]
    assert manifest["rows"] == {"train-00000.parquet": 200, "test-00000.parquet": 100}
    assert sorted(p.name for p in ref.path.iterdir()) == [MANIFEST, "test-00000.parquet", "train-00000.parquet"]
    assert pq.read_table(ref.file("train-00000.parquet")).schema.equals(SCHEMA)
    stamp = (ref.file(MANIFEST).stat().st_mtime_ns, ref.file("train-00000.parquet").stat().st_mtime_ns)
    again = ingest_mod.run(str(imdb_folder), data_root)
    assert again == ref
    assert (ref.file(MANIFEST).stat().st_mtime_ns,
            ref.file("train-00000.parquet").stat().st_mtime_ns) == stamp  # reused, not rewritten
    assert [p.name for p in (data_root / "ingest").iterdir()] == [ref.key]


def test_failed_forced_rerun_keeps_the_valid_stage(tmp_path, imdb_folder, data_root):
    """A forced rebuild of an existing stage (same key) whose source now fails: the old folder is
    left exactly as it was and no temporary folder remains."""
    fp = fingerprint(str(imdb_folder))
    ref = ingest_mod.run(str(imdb_folder), data_root, fp)
    before = {p.name: p.read_bytes() for p in ref.path.iterdir()}
    bad = _bad_second_split(tmp_path)
    with pytest.raises(SourceError):
        ingest_mod.run(str(bad), data_root, fp, force=True)
    assert Store(data_root).is_valid(ref)
    assert {p.name: p.read_bytes() for p in ref.path.iterdir()} == before
    assert [p.name for p in (data_root / "ingest").iterdir()] == [ref.key]


# -- 5. fingerprints ---------------------------------------------------------------------------


def _fp_parquet(d: Path) -> Path:
    return write_parquet(d / "reviews.parquet", text=["good film", "bad film"], label=[1, 0])


def _fp_csv(d: Path) -> Path:
    return write_csv(d / "reviews.csv", ["text", "label"], [["good film", 1], ["bad film", 0]])


def _fp_folder(d: Path) -> Path:
    return write_imdb_folder(d / "imdb", 20, 10)


def _fp_hf_folder(d: Path) -> Path:
    write_parquet(d / "imdb" / "plain_text" / "train-00000-of-00001.parquet", text=["a"], label=[1])
    write_parquet(d / "imdb" / "plain_text" / "test-00000-of-00001.parquet", text=["b"], label=[0])
    return d / "imdb"


def _fp_acl(d: Path) -> Path:
    return write_acl(d)


def _fp_tar(d: Path) -> Path:
    return make_tar(write_acl(d / "tree"), d / "aclImdb_v1.tar.gz")


FP_SOURCES = [_fp_parquet, _fp_csv, _fp_folder, _fp_hf_folder, _fp_acl, _fp_tar]


def _copy(src: Path, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True)
    dest = dest_dir / src.name
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copyfile(src, dest)
    return dest


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _a_data_file(src: Path) -> Path:
    if src.is_file():
        return src
    return next(p for p in sorted(src.rglob("*")) if p.suffix in (".parquet", ".csv", ".txt")
                and "unsup" not in p.parts)


@pytest.mark.parametrize("make", FP_SOURCES, ids=lambda f: f.__name__[4:])
def test_same_content_elsewhere_gives_same_fingerprint_and_stage_key(tmp_path, make):
    first = make(tmp_path / "one")
    second = _copy(first, tmp_path / "two" / "deeper")
    fp1, fp2 = fingerprint(str(first)), fingerprint(str(second))
    assert fp1 == fp2
    assert fp1.startswith(source_kind(str(first)) + ":")
    root = tmp_path / "data"
    assert ingest_mod.plan(root, fp1).key == ingest_mod.plan(root, fp2).key
    # and the stage built from one copy is reused for the other
    ref1 = ingest_mod.run(str(first), root)
    created = ref1.manifest()["created"]
    ref2 = ingest_mod.run(str(second), root)
    assert ref2 == ref1 and ref2.manifest()["created"] == created


@pytest.mark.parametrize("make", FP_SOURCES, ids=lambda f: f.__name__[4:])
def test_changing_one_byte_changes_the_fingerprint(tmp_path, make):
    src = make(tmp_path)
    before = fingerprint(str(src))
    assert fingerprint(str(src)) == before  # deterministic
    _flip_byte(_a_data_file(src))
    after = fingerprint(str(src))
    assert after != before
    assert ingest_mod.plan(tmp_path, after).key != ingest_mod.plan(tmp_path, before).key


def test_aclimdb_fingerprint_follows_reviews(tmp_path):
    acl = write_acl(tmp_path / "src")
    base = fingerprint(str(acl))
    # editing one review
    review = acl / "test" / "neg" / "3_1.txt"
    review.write_text("Awful!", encoding="utf-8")
    edited = fingerprint(str(acl))
    assert edited != base
    review.write_text(ACL_REVIEWS["test/neg/3_1.txt"], encoding="utf-8")
    assert fingerprint(str(acl)) == base
    # adding a review
    (acl / "train" / "neg" / "5_2.txt").write_text("Tedious.", encoding="utf-8")
    assert fingerprint(str(acl)) not in (base, edited)


def test_aclimdb_fingerprint_follows_labels(tmp_path):
    """Moving a review to the other label folder changes its label but no file's bytes (and here
    not even the order of the files): the fingerprint must still change."""
    acl = write_acl(tmp_path / "src", {"train/neg/0_3.txt": "A.", "train/pos/0_9.txt": "B."},
                    extras=False)
    base = fingerprint(str(acl))
    (acl / "train" / "pos" / "0_9.txt").rename(acl / "train" / "neg" / "0_9.txt")
    assert fingerprint(str(acl)) != base


def test_aclimdb_fingerprint_same_for_folder_and_its_parent(tmp_path):
    acl = write_acl(tmp_path / "src")
    assert fingerprint(str(acl)) == fingerprint(str(acl.parent))


def test_folder_fingerprint_ignores_files_that_are_not_read(tmp_path):
    src = write_imdb_folder(tmp_path / "imdb", 20, 10)
    base = fingerprint(str(src))
    (src / "README.md").write_text("notes\n")
    (src / "validation.parquet").write_bytes(b"not read")
    assert fingerprint(str(src)) == base


def test_csv_and_tsv_with_the_same_bytes_have_different_fingerprints(tmp_path):
    """The same bytes parse differently as CSV and as TSV: they must not share an ingest key."""
    data = b"text\tlabel\ngood, really\t1\nbad\t0\n"
    (tmp_path / "reviews.csv").write_bytes(data)
    (tmp_path / "reviews.tsv").write_bytes(data)
    as_csv, as_tsv = fingerprint(str(tmp_path / "reviews.csv")), fingerprint(str(tmp_path / "reviews.tsv"))
    assert as_csv.startswith("csv:") and as_tsv.startswith("tsv:")
    assert as_csv.split(":")[1] != as_tsv.split(":")[1]
    assert ingest_mod.plan(tmp_path, as_csv).key != ingest_mod.plan(tmp_path, as_tsv).key
    counts, t = run_ingest(tmp_path / "reviews.tsv", tmp_path / "out")
    assert col(t["train"], "text") == ["good, really", "bad"]


@pytest.mark.parametrize("make", FP_SOURCES, ids=lambda f: f.__name__[4:])
def test_fingerprint_needs_no_hashlib_file_digest(tmp_path, monkeypatch, make):
    """``hashlib.file_digest`` is Python 3.11+; the project supports 3.10. Same values without it."""
    src = make(tmp_path)
    expected = fingerprint(str(src))
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    assert fingerprint(str(src)) == expected


def test_ingest_key_follows_the_readers_in_sources(tmp_path, monkeypatch):
    """The readers live in sentiflow.tasks.data.sources: editing them must change ingest's key like editing
    sentiflow.tasks.data.ingest does."""
    before = ingest_mod.plan(tmp_path, "folder:abc").key
    edit_module_source(monkeypatch, "sentiflow.tasks.data.sources")
    after_sources = ingest_mod.plan(tmp_path, "folder:abc").key
    edit_module_source(monkeypatch, "sentiflow.tasks.data.ingest")
    after_both = ingest_mod.plan(tmp_path, "folder:abc").key
    assert len({before, after_sources, after_both}) == 3


def test_source_without_test_reviews_is_accepted_with_a_warning(tmp_path, data_root):
    src = write_parquet(tmp_path / "train_only.parquet", text=["good", "bad"], label=[1, 0])
    with capture_log("sentiflow.ingest") as records:
        ref = ingest_mod.run(str(src), data_root)
    assert ref.manifest()["rows"] == {"train-00000.parquet": 2, "test-00000.parquet": 0}
    assert any(r.levelno == logging.WARNING and "no test reviews" in r.getMessage()
               for r in records)


# -- 6. the real data ------------------------------------------------------------------------------


@pytest.mark.skipif(not (REAL_IMDB / "train.parquet").is_file(), reason="no shared IMDb copy")
def test_real_imdb_folder():
    fp = fingerprint(str(REAL_IMDB))
    assert fp.startswith("folder:") and len(fp) == len("folder:") + 64
    parts = read_source(str(REAL_IMDB))  # train comes first, in batches; test is not read
    batches = []
    for part in parts:
        if part.split != "train":
            break
        batches.append(normalize(part, sum(b.num_rows for b in batches)))
    train = pa.concat_tables(batches)
    assert train.schema.equals(SCHEMA)
    assert train.num_rows == 25_000
    labels = col(train, "label")
    assert labels.count(0) == 12_500 and labels.count(1) == 12_500
    ids = col(train, "id")
    assert ids[0] == "train/neg/0_3.txt"  # the file's own source_id: negative first
    assert ids[12_500] == "train/pos/0_9.txt"
    assert col(train, "text")[12_500].startswith("Bromwell High is a cartoon comedy.")
    assert len(set(ids)) == 25_000
