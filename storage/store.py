"""The stage store: content-addressed folders ``<root>/<stage>/<key>/`` with a manifest.

A folder is built under a temporary name, ``manifest.json`` is written last, and the folder is
renamed into place. A folder is trusted only when its manifest names its key and every file's
size and SHA-256 match; anything else is treated as absent and rebuilt.

Builders of one key serialize on ``<root>/<stage>/.lock-<key>`` (``Store.lock``, an ``fcntl``
lock, so Linux and macOS). ``.tmp-*`` and ``.trash-*`` folders left by a killed process are
swept by the next build in the same stage folder once they are an hour old.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

MANIFEST = "manifest.json"
STALE_SECONDS = 3600  # a .tmp-*/.trash-*/.lock-* entry untouched this long belongs to a dead process


_LOCK_ATTEMPTS = 100  # tries to create a lock file whose folder another process removes meanwhile
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a stage name or key: one plain path segment


class LockError(RuntimeError):
    """A lock file that cannot be created."""


class StageError(RuntimeError):
    """A stage folder that cannot be read as its manifest describes it."""


class StageRef(BaseModel):
    """What tasks pass each other: a stage's name, key and folder. Never the data itself."""

    stage: str
    key: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def shards(self, prefix: str = "part-") -> list[Path]:
        """The ``<prefix>*.parquet`` shards the manifest lists, in order, each checked present
        with the manifest's row count: a stage is read whole or not at all, never as the part of
        it a glob would find while it is written, replaced or damaged."""
        try:
            manifest = self.manifest()
        except (OSError, ValueError) as e:
            raise StageError(f"{self.stage} {self.key}: no readable manifest in {self.path} "
                             "(missing, still being written, or damaged)") from e
        names = sorted(n for n in manifest.get("files", {}) if n.startswith(prefix) and n.endswith(".parquet"))
        rows = manifest.get("rows", {})
        for name in names:
            try:
                found = pq.ParquetFile(self.path / name).metadata.num_rows
            except (OSError, pa.ArrowInvalid) as e:
                raise StageError(f"{self.stage} {self.key}: shard {name} cannot be read ({e})") from e
            if name in rows and found != rows[name]:
                raise StageError(f"{self.stage} {self.key}: shard {name} has {found} rows, "
                                 f"its manifest says {rows[name]}")
        return [self.path / n for n in names]

    def read_shards(self, columns: list[str] | None = None) -> pa.Table:
        """All ``part-*.parquet`` shards, in order, as one table."""
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in self.shards())

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def stage_key(stage: str, params: dict[str, Any], inputs: list[str], code: str) -> str:
    """The stage key: a hash of the stage name, its parameters, its input keys and its code."""
    return stable_hash({"stage": stage, "params": params, "inputs": inputs, "code": code})[:20]


def file_sha256(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_manifest(manifest: Any) -> str | None:
    """What is wrong with a parsed manifest's shape, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "'files' is not an object"
    for name, meta in files.items():
        if not (isinstance(meta, dict) and type(meta.get("bytes")) is int
                and isinstance(meta.get("sha256"), str)):
            return f"entry {name!r} lacks 'bytes' or 'sha256'"
    return None


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of a folder or anything directly in it."""
    newest = folder.lstat().st_mtime
    for p in folder.iterdir():
        newest = max(newest, p.lstat().st_mtime)
    return newest


def _disk_full(e: BaseException) -> bool:
    """An error of a full disk, from the OS or from Arrow (whose IOError may carry no errno)."""
    return isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT)
                                       or "No space left on device" in str(e))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``). False where the
    system or filesystem cannot, or ``b`` is gone; the caller then renames the usual way."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (the usual case), or already gone
        pass


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def ref(self, stage: str, key: str) -> StageRef:
        """The folder of ``stage``'s ``key``: both must be one plain path segment (a key is a
        hash; a name a user gives is hashed first: ``sentiflow.storage.names.name_key``)."""
        for part in (stage, key):
            if not _SEGMENT.match(part) or ".." in part:
                raise ValueError(f"stage folder name {part!r}: not one plain path segment")
        return StageRef(stage=stage, key=key, path=(self.root / stage / key).resolve())

    # -- validity -------------------------------------------------------------------------------
    def is_valid(self, ref: StageRef) -> bool:
        return self.problem(ref) is None

    def problem(self, ref: StageRef, checksums: bool = True,
                digest: Callable[[Path], str] = file_sha256) -> str | None:
        """Why the folder cannot be trusted, or None when it can. ``checksums=False``: a quick
        look (the files present with their recorded sizes), for reports, never to trust a folder.
        ``digest``: how a file's SHA-256 is had (``file_sha256``, or one that remembers files
        seen already: a gathered folder's files are hard links to its shards')."""
        manifest_path = ref.path / MANIFEST
        if not manifest_path.is_file():
            return "missing" if not ref.path.exists() else "no manifest"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, OSError):
            return "unreadable manifest"
        shape = _check_manifest(manifest)
        if shape is not None:
            return f"malformed manifest: {shape}"
        if manifest.get("key") != ref.key:
            return "manifest names another key"
        files = manifest["files"]
        try:
            present = {p.name for p in ref.path.iterdir() if p.name != MANIFEST}
            if present != set(files):
                return "files differ from manifest"
            for name, meta in files.items():
                p = ref.path / name
                if not p.is_file():
                    return f"{name} is not a file"
                if p.stat().st_size != meta["bytes"] or (checksums and digest(p) != meta["sha256"]):
                    return f"checksum mismatch in {name}"
        except OSError as e:  # e.g. the folder was replaced while being checked
            return f"unreadable folder ({e.strerror or e})"
        return None

    # -- writing --------------------------------------------------------------------------------
    @contextmanager
    def lock(self, ref: StageRef, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the exclusive lock of ``ref``'s key: ``<root>/<stage>/.lock-<key>``.

        The lock file is removed on release (while still held). A waiter that then gets the lock
        of the removed file sees that the path no longer names it and locks the new one.
        ``on_wait`` is called once when another process holds the lock, before waiting for it.
        """
        parent = ref.path.parent
        path = parent / f".lock-{ref.key}"
        for attempt in itertools.count():
            parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the stage folder was removed as empty meanwhile: again,
                if attempt < _LOCK_ATTEMPTS:  # a few times (a race is over in microseconds)
                    continue
                raise LockError(f"cannot create the lock file {path}: its folder keeps disappearing") from None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # we locked a file its holder has removed: try again
        try:
            yield
        finally:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            os.close(fd)
            _rmdir_if_empty(parent)

    @contextmanager
    def build(
        self, ref: StageRef, params: dict[str, Any], inputs: list[str]
    ) -> Iterator[Path]:
        """Yield a temporary folder; on success write the manifest and rename it into place.

        The folder may hold files only. On any error the temporary folder is removed, an existing
        folder is left as it was, and a stage folder left empty is removed.
        """
        parent = ref.path.parent
        self.sweep(parent)
        tmp = parent / f".tmp-{ref.key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            yield tmp
            files = {}
            rows = {}
            for p in sorted(tmp.iterdir()):
                if p.is_symlink() or not p.is_file():
                    raise ValueError(
                        f"stage {ref.stage} {ref.key}: the build left {p.name!r}, which is not a "
                        "plain file (a stage folder holds files only, no subfolders or links)"
                    )
                files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                if p.suffix == ".parquet":
                    rows[p.name] = pq.ParquetFile(p).metadata.num_rows
            manifest = {
                "stage": ref.stage,
                "key": ref.key,
                "params": params,
                "inputs": inputs,
                "rows": rows,
                "total_rows": sum(rows.values()),
                "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 3),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            self._replace(tmp, ref)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _rmdir_if_empty(parent)
            if _disk_full(e):
                raise OSError(errno.ENOSPC, f"stage {ref.stage} {ref.key}: no space left on the device "
                              f"of {parent} while writing it; its previous output, if any, is "
                              "untouched and the partial one removed") from e
            raise

    def _replace(self, tmp: Path, ref: StageRef) -> None:
        """Rename ``tmp`` to ``ref.path``. A folder already there (invalid, or forced) is swapped
        out in one atomic step where the system can (Linux ``renameat2(RENAME_EXCHANGE)``), so a
        reader finds the old folder or the new one, never none; elsewhere it is moved aside first.

        If another publisher renames its folder into place between the two steps (the rename
        then fails with ENOTEMPTY or EEXIST), a valid folder of theirs is kept and ours dropped;
        an invalid one is moved aside in turn.
        """
        target = ref.path
        if target.exists() and _exchange(tmp, target):  # tmp now holds the old folder
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trashed: list[Path] = []  # removed once the new folder is in: the gap is two renames long
        try:
            for _ in range(10):
                if target.exists():  # invalid, or forced: move it aside
                    trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
                    try:
                        os.replace(target, trash)
                        trashed.append(trash)
                    except FileNotFoundError:  # someone else moved it meanwhile
                        pass
                try:
                    os.replace(tmp, target)
                    return
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                if self.is_valid(ref):  # another publisher's complete folder: keep it
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
            raise OSError(errno.EBUSY, f"{target}: could not be replaced (other writers keep publishing)")
        finally:
            for trash in trashed:
                shutil.rmtree(trash, ignore_errors=True)

    def sweep(self, stage_dir: Path, older_than: float = STALE_SECONDS) -> list[Path]:
        """Remove ``.tmp-*``/``.trash-*`` folders and free ``.lock-*`` files untouched for
        ``older_than`` seconds: what a killed process left behind. Returns what was removed."""
        if not stage_dir.is_dir():
            return []
        cutoff = time.time() - older_than
        removed = []
        for p in stage_dir.iterdir():
            try:
                if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
                    if _newest_mtime(p) < cutoff:
                        shutil.rmtree(p, ignore_errors=True)
                        removed.append(p)
                elif p.name.startswith(".lock-") and p.lstat().st_mtime < cutoff:
                    fd = os.open(p, os.O_RDWR)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: leave it
                        if os.fstat(fd).st_ino == os.stat(p).st_ino:
                            p.unlink()
                            removed.append(p)
                    except OSError:
                        pass
                    finally:
                        os.close(fd)
            except OSError:  # gone meanwhile
                continue
        return removed

    # -- listing --------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every stage folder with a well-formed manifest (not checksummed); others are skipped."""
        out = []
        if not self.root.is_dir():
            return out
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest_path.parent
            if folder.name.startswith("."):
                continue
            try:
                m = json.loads(manifest_path.read_text())
            except (ValueError, OSError):
                continue
            if _check_manifest(m) is not None:
                continue
            created = m.get("created")
            out.append(
                {
                    "stage": m.get("stage", folder.parent.name),
                    "key": m.get("key", folder.name),
                    "rows": m.get("total_rows", 0),
                    "bytes": sum(f["bytes"] for f in m["files"].values()),
                    "created": created if isinstance(created, str) else None,
                    "path": str(folder),
                    "inputs": [i for i in m.get("inputs", []) if isinstance(i, str)],
                }
            )
        out.sort(key=lambda r: (r["created"] or "", str(r["stage"])))
        return out
