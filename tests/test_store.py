"""The stage store: atomic folders, manifests, validity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.storage.store import MANIFEST, Store, file_sha256, stage_key


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


# -- review fixes: 3.10 hashing, malformed manifests, subfolders, races, leftovers ---------------


def test_file_sha256_reads_in_chunks_without_hashlib_file_digest(tmp_path: Path, monkeypatch):
    """``hashlib.file_digest`` is Python 3.11+; the project supports 3.10."""
    data = bytes(range(256)) * 20_000  # 5 MB: several chunks
    (tmp_path / "f").write_bytes(data)
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "f", chunk_size=7) == hashlib.sha256(data).hexdigest()
    ref = _build(Store(tmp_path))  # build and check use it too
    assert Store(tmp_path).is_valid(ref)


def _entry_without_bytes(m: dict) -> dict:
    del m["files"]["part-00000.parquet"]["bytes"]
    return m


@pytest.mark.parametrize("rewrite", [
    lambda m: [],
    lambda m: None,
    lambda m: "manifest",
    lambda m: {**m, "files": ["part-00000.parquet"]},
    lambda m: {**m, "files": None},
    lambda m: {k: v for k, v in m.items() if k != "files"},
    _entry_without_bytes,
    lambda m: {**m, "files": {"part-00000.parquet": "abc"}},
], ids=["list", "null", "string", "files-list", "files-null", "no-files", "no-bytes", "entry-str"])
def test_manifest_of_the_wrong_shape_is_invalid_and_not_listed(tmp_path: Path, rewrite):
    store = Store(tmp_path)
    good = _build(store, "good")
    bad = _build(store, "bad")
    manifest = json.loads((bad.path / MANIFEST).read_text())
    (bad.path / MANIFEST).write_text(json.dumps(rewrite(manifest)))
    assert "malformed manifest" in store.problem(bad)
    assert [r["key"] for r in store.list()] == ["good"]
    assert store.is_valid(good)
    _build(store, "bad")  # and it is rebuilt
    assert store.is_valid(bad)


def test_build_with_a_subfolder_is_refused_and_leaves_nothing(tmp_path: Path):
    store = Store(tmp_path)
    ref = store.ref("demo", "k1")
    with pytest.raises(ValueError, match="'nested'.*not a plain file"):
        with store.build(ref, {}, []) as tmp:
            pq.write_table(pa.table({"x": [1]}), tmp / "part-00000.parquet")
            (tmp / "nested").mkdir()
            (tmp / "nested" / "part-00001.parquet").write_bytes(b"x")
    assert not (tmp_path / "demo").exists()


def test_failed_build_in_a_new_stage_folder_removes_it(tmp_path: Path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.build(store.ref("demo", "k1"), {}, []):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _race_publish(monkeypatch, other_publisher) -> list[bool]:
    """Run ``other_publisher(target)`` just before our first rename of a temp folder into place.
    Returns a list that holds True once the race has happened."""
    real_replace = os.replace
    raced: list[bool] = []

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-") and not raced:
            raced.append(True)
            other_publisher(Path(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return raced


def test_publish_race_enotempty_keeps_the_valid_folder(tmp_path: Path, monkeypatch):
    """Another publisher renames its complete folder into place between our check and our
    rename: the rename fails with ENOTEMPTY; theirs is kept, ours dropped, nothing left over."""
    store = Store(tmp_path)
    ref = store.ref("demo", "k1")
    raced = _race_publish(monkeypatch, lambda dst: _build(store, "k1", rows=3))  # the other wins
    with store.build(ref, {"p": 1}, ["up/abc"]) as tmp:
        pq.write_table(pa.table({"x": list(range(5))}), tmp / "part-00000.parquet")
    assert raced and store.is_valid(ref)
    assert ref.manifest()["total_rows"] == 3  # the first complete folder stayed
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["k1"]


def test_publish_race_with_an_invalid_folder_retries(tmp_path: Path, monkeypatch):
    store = Store(tmp_path)
    ref = store.ref("demo", "k1")

    def half_written(dst: Path) -> None:
        dst.mkdir(parents=True)
        (dst / "junk").write_bytes(b"half-written by someone")

    raced = _race_publish(monkeypatch, half_written)
    with store.build(ref, {}, []) as tmp:
        pq.write_table(pa.table({"x": list(range(5))}), tmp / "part-00000.parquet")
    assert raced and store.is_valid(ref) and ref.manifest()["total_rows"] == 5
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["k1"]


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def test_build_sweeps_stale_temporary_and_trash_folders(tmp_path: Path):
    store = Store(tmp_path)
    stage_dir = tmp_path / "demo"
    stale = [stage_dir / ".tmp-k0-deadbeef", stage_dir / ".trash-k0-cafebabe"]
    fresh = [stage_dir / ".tmp-k9-12345678", stage_dir / ".trash-k9-87654321"]
    for d in stale + fresh:
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(b"left by a killed process")
    for d in stale:
        _age(d, 2 * 3600)
    old_lock = stage_dir / ".lock-k0"
    old_lock.touch()
    _age(old_lock, 2 * 3600)
    ref = _build(store)
    assert store.is_valid(ref)
    assert sorted(p.name for p in stage_dir.iterdir()) == sorted(["k1", *(d.name for d in fresh)])


def test_sweep_keeps_a_stale_looking_folder_still_being_written(tmp_path: Path):
    stage_dir = tmp_path / "demo"
    busy = stage_dir / ".tmp-k0-deadbeef"
    busy.mkdir(parents=True)
    (busy / "part-00000.parquet").write_bytes(b"x")
    _age(busy, 2 * 3600)
    (busy / "part-00001.parquet").write_bytes(b"just written")
    os.utime(busy, (time.time() - 7200, time.time() - 7200))
    assert Store(tmp_path).sweep(stage_dir) == []
    assert busy.exists()


def test_sweep_leaves_a_held_lock(tmp_path: Path):
    store = Store(tmp_path)
    ref = store.ref("demo", "k1")
    with store.lock(ref):
        lock = tmp_path / "demo" / ".lock-k1"
        _age(lock, 2 * 3600)
        assert store.sweep(tmp_path / "demo") == [] and lock.exists()
    assert not (tmp_path / "demo").exists()  # released: lock file and empty folder removed


def test_lock_excludes_across_processes(tmp_path: Path):
    """``flock`` between processes: the child waits until the parent releases."""
    import subprocess
    import sys

    store = Store(tmp_path)
    ref = store.ref("demo", "k1")
    child = (
        "import sys, time; from sentiflow.storage.store import Store; s = Store(sys.argv[1]); "
        "print('ready', flush=True); t = time.time(); ctx = s.lock(s.ref('demo', 'k1')); "
        "ctx.__enter__(); print(round(time.time() - t, 2), flush=True); ctx.__exit__(None, None, None)"
    )
    with store.lock(ref):
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting for our lock
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and float(out) >= 0.9
    assert not (tmp_path / "demo").exists()


def test_two_runs_building_the_same_key_build_it_once(tmp_path: Path):
    """Two runs on one data root: the second waits for the first's lock, then finds the folder
    valid and reuses it (before the lock it built again and moved the first's folder to trash)."""
    import threading

    from sentiflow.tasks.stage import StageSpec, run_stage

    spec = StageSpec("demo", None, ("up/abc",), "code-1")
    builds, results, errors = [], [], []
    start = threading.Barrier(2)

    def build(out: Path) -> None:
        builds.append(out)
        time.sleep(0.5)
        pq.write_table(pa.table({"x": [1, 2, 3]}), out / "part-00000.parquet")

    def one_run() -> None:
        try:
            start.wait()
            ref = run_stage(tmp_path, spec, build)
            results.append((ref, ref.path.stat().st_ino, ref.manifest()["created"]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(builds) == 1
    (ref1, ino1, created1), (ref2, ino2, created2) = results
    assert ref1 == ref2 == spec.ref(tmp_path) and Store(tmp_path).is_valid(ref1)
    assert (ino1, created1) == (ino2, created2)  # the same folder, not a second build
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [ref1.key]


def test_spec_gives_the_key_and_the_manifest(tmp_path: Path):
    """Key and manifest come from one spec: its inputs and params are what the manifest records."""
    from pydantic import BaseModel

    from sentiflow.tasks.stage import StageSpec, run_stage

    class P(BaseModel):
        a: int = 1

    spec = StageSpec("demo", P(a=2), ["up/abc", "up/def:train"], "code-1")
    ref = run_stage(tmp_path, spec, lambda out: (out / "x.txt").write_text("x"))
    assert ref.key == stage_key("demo", {"a": 2}, ["up/abc", "up/def:train"], "code-1")
    m = ref.manifest()
    assert m["params"] == {"a": 2} and m["inputs"] == ["up/abc", "up/def:train"]


# -- readers see a stage whole or not at all --------------------------------------------------------

def test_shards_come_from_the_manifest_with_row_counts_checked(tmp_path: Path):
    from sentiflow.storage.store import StageError

    store = Store(tmp_path)
    ref = store.ref("demo", "k1")
    with store.build(ref, {}, []) as tmp:
        for i, n in enumerate((3, 4)):
            pq.write_table(pa.table({"x": list(range(n))}), tmp / f"part-{i:05d}.parquet")
    assert [p.name for p in ref.shards()] == ["part-00000.parquet", "part-00001.parquet"]
    # a stray shard that the manifest does not list is not read
    pq.write_table(pa.table({"x": [9]}), ref.path / "part-00002.parquet")
    assert [p.name for p in ref.shards()] == ["part-00000.parquet", "part-00001.parquet"]
    # a shard with other rows than the manifest says: refused, named
    pq.write_table(pa.table({"x": [1]}), ref.path / "part-00001.parquet")
    with pytest.raises(StageError, match="part-00001.parquet has 1 rows, its manifest says 4"):
        ref.shards()
    # no manifest (a folder being written, or gone): refused, not an empty list
    (ref.path / MANIFEST).unlink()
    with pytest.raises(StageError, match="no readable manifest"):
        ref.shards()
    with pytest.raises(StageError):
        store.ref("demo", "never-built").shards()


def _poll_while_rebuilding(store: Store, ref, rows) -> tuple[int, list[str]]:
    """Rebuild ``ref`` 150 times (forced) while another thread lists its shards; returns the
    reads that succeeded and the errors seen."""
    import threading

    stop, errors, reads = threading.Event(), [], [0]

    def read() -> None:
        while not stop.is_set():
            try:
                assert len(ref.shards()) == 1
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(150):
            with store.build(ref, {"p": 1}, ["up/abc"]) as tmp:
                pq.write_table(pa.table({"x": list(range(rows(i)))}), tmp / "part-00000.parquet")
    finally:
        stop.set()
        reader.join()
    return reads[0], errors


def test_replacing_a_stage_never_opens_a_gap(tmp_path: Path):
    """A reader polling a stage while it is rebuilt again and again always finds a whole folder:
    the new one is swapped in atomically. (A stage's key names its content, so a rebuild writes
    the same rows.)"""
    store = Store(tmp_path)
    ref = _build(store)
    reads, errors = _poll_while_rebuilding(store, ref, lambda i: 3)
    assert reads > 50 and errors == []
    assert store.is_valid(ref) and not list((tmp_path / "demo").glob(".t*"))


def _no_exchange(monkeypatch, how: str) -> list[str]:
    """Make ``renameat2(RENAME_EXCHANGE)`` unavailable as ``how`` says: ``missing`` (no such
    function: macOS, an old C library) or ``einval`` (the call fails with EINVAL: NFS, and other
    filesystems without the flag). Returns a list that gets an entry each time it is asked."""
    import ctypes
    import errno
    from types import SimpleNamespace

    real, asked = ctypes.CDLL, []

    def renameat2(*args) -> int:
        asked.append("renameat2")
        ctypes.set_errno(errno.EINVAL)
        return -1

    def cdll(name, *args, **kwargs):
        if name is not None:  # another library: the real one
            return real(name, *args, **kwargs)
        asked.append("libc")
        return SimpleNamespace() if how == "missing" else SimpleNamespace(renameat2=renameat2)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    return asked


@pytest.mark.parametrize("how", ["missing", "einval"])
def test_without_rename_exchange_a_reader_meets_a_gap_never_a_part(tmp_path: Path, monkeypatch, how):
    """Where the system cannot swap two folders, the old folder is moved aside, the new one renamed
    into place, and only then the old one removed: between the two renames the stage is absent. A
    reader polling it then is refused (StageError: no manifest, or a listed shard gone), never
    handed a part of a folder or an empty list; every other read finds a whole folder, and the
    stage ends whole with nothing left beside it."""
    store = Store(tmp_path)
    ref = _build(store)
    asked = _no_exchange(monkeypatch, how)
    real_replace, moved_aside, in_gap = os.replace, [], []

    def replace(src, dst):  # the fallback's first rename: the old folder to .trash-*
        real_replace(src, dst)
        if Path(dst).name.startswith(".trash-"):
            moved_aside.append(dst)
            if len(moved_aside) == 1:  # in the gap now: what a reader gets there
                try:
                    ref.shards()
                except Exception as e:  # noqa: BLE001 - checked below
                    in_gap.append(e)

    monkeypatch.setattr(os, "replace", replace)
    reads, errors = _poll_while_rebuilding(store, ref, lambda i: 3)
    assert len(moved_aside) == 150 and len(asked) >= 150  # every rebuild took the fallback
    assert [type(e).__name__ for e in in_gap] == ["StageError"] and "no readable manifest" in str(in_gap[0])
    gap = re.compile(r"StageError\(.*(no readable manifest|cannot be read \(.*No such file or directory)")
    assert reads > 50 and all(gap.search(e) for e in errors), [e for e in errors if not gap.search(e)][:3]
    assert store.is_valid(ref) and ref.manifest()["total_rows"] == 3
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["k1"]


def test_a_reader_caught_between_two_different_builds_is_refused_not_misled(tmp_path: Path):
    """Were a rebuild to write other rows, a reader that read the old manifest and then meets
    the new shard gets a StageError naming the mismatch: never a wrong read, never no stage."""
    store = Store(tmp_path)
    ref = _build(store)
    reads, errors = _poll_while_rebuilding(store, ref, lambda i: 3 + i % 2)
    assert reads > 50
    assert all("StageError" in e and "its manifest says" in e for e in errors), errors[:3]


def test_disk_full_names_the_stage_and_keeps_the_previous_output(tmp_path: Path, monkeypatch):
    """ENOSPC injected where Arrow writes a shard: the error names the stage, the partial
    folder is removed, and the previous good folder is untouched."""
    import errno

    store = Store(tmp_path)
    ref = _build(store)
    before = {p.name: p.read_bytes() for p in ref.path.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OSError, match=r"stage demo k1: no space left on the device .* previous output") as e:
        with store.build(ref, {"p": 1}, ["up/abc"]) as tmp:
            pq.write_table(pa.table({"x": [1]}), tmp / "part-00000.parquet")
    assert e.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in ref.path.iterdir()} == before and store.is_valid(ref)
    assert not list((tmp_path / "demo").glob(".tmp-*"))
    # Arrow's own error text, no errno
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(
        OSError("IOError: error writing bytes to file. Detail: [errno 28] No space left on device")))
    with pytest.raises(OSError, match="stage demo k1: no space left"):
        with store.build(ref, {"p": 1}, ["up/abc"]) as tmp:
            pq.write_table(pa.table({"x": [1]}), tmp / "part-00000.parquet")
