"""The stage store: atomic folders, manifests, validity."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.store import MANIFEST, Store, stage_key


def _build(store: Store, key: str = "k1", rows: int = 3):
    ref = store.ref("demo", key)
    with store.build(ref, {"p": 1}, ["up/abc"]) as tmp:
        pq.write_table(pa.table({"x": list(range(rows))}), tmp / "part-00000.parquet")
    return ref


def test_build_publishes_folder_with_manifest_written_last(tmp_path: Path):
    store = Store(tmp_path)
    ref = _build(store)
    m = json.loads((ref.path / MANIFEST).read_text())
    assert m["key"] == "k1" and m["params"] == {"p": 1} and m["inputs"] == ["up/abc"]
    assert m["rows"] == {"part-00000.parquet": 3} and m["total_rows"] == 3
    assert set(m["files"]) == {"part-00000.parquet"}
    assert store.is_valid(ref)
    assert not list((tmp_path / "demo").glob(".tmp-*"))


def test_failed_build_leaves_nothing_and_keeps_previous(tmp_path: Path):
    store = Store(tmp_path)
    ref = _build(store)
    before = (ref.path / "part-00000.parquet").read_bytes()
    with pytest.raises(RuntimeError):
        with store.build(ref, {}, []) as tmp:
            (tmp / "part-00000.parquet").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (ref.path / "part-00000.parquet").read_bytes() == before
    assert store.is_valid(ref)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["k1"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: (p / MANIFEST).unlink(), "no manifest"),
        (lambda p: (p / "part-00000.parquet").write_bytes(b"x"), "checksum mismatch"),
        (lambda p: (p / "extra.parquet").write_bytes(b"x"), "files differ"),
        (lambda p: (p / "part-00000.parquet").unlink(), "files differ"),
        (lambda p: (p / MANIFEST).write_text("{not json"), "unreadable manifest"),
    ],
)
def test_damaged_folder_is_invalid(tmp_path: Path, damage, problem):
    store = Store(tmp_path)
    ref = _build(store)
    damage(ref.path)
    assert problem in store.problem(ref)


def test_flipped_byte_same_size_is_detected(tmp_path: Path):
    store = Store(tmp_path)
    ref = _build(store)
    shard = ref.path / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert store.problem(ref).startswith("checksum mismatch")


def test_rebuild_replaces_invalid_folder(tmp_path: Path):
    store = Store(tmp_path)
    ref = _build(store, rows=3)
    (ref.path / MANIFEST).unlink()
    _build(store, rows=5)
    assert store.is_valid(ref) and ref.manifest()["total_rows"] == 5
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["k1"]


def test_key_depends_on_every_part():
    base = stage_key("s", {"a": 1}, ["x"], "c1")
    assert stage_key("s", {"a": 1}, ["x"], "c1") == base
    assert len({base, stage_key("t", {"a": 1}, ["x"], "c1"), stage_key("s", {"a": 2}, ["x"], "c1"),
                stage_key("s", {"a": 1}, ["y"], "c1"), stage_key("s", {"a": 1}, ["x"], "c2")}) == 5


def test_list_reports_stages(tmp_path: Path):
    store = Store(tmp_path)
    _build(store, "k1", 3)
    _build(store, "k2", 4)
    rows = store.list()
    assert [(r["stage"], r["key"], r["rows"]) for r in rows] == [("demo", "k1", 3), ("demo", "k2", 4)]
    assert all(r["bytes"] > 0 and r["created"] for r in rows)
