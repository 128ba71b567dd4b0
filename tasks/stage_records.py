"""The stage tasks' Prefect cache records, read by sentiflow alone.

A stage task's result is a ``StageRef``. Prefect keeps it in its result storage under the task's
cache key (``record_key``: ``sentiflow-<stage>-<key>-<hash of the folder's path>``) and serves it
on the next run (state "Cached"). That storage may be a volume that others write too, so a record
is data from outside, and Prefect's own reader trusts it: it decodes a record with the serializer
the record names in its own metadata (``pickle`` is unpickled), and its JSON decoder imports the
classes a record names (``__class__``, ``__exc_type__``) and calls them.

So a stage record is one file of plain JSON, the reference's three fields
(``{"key": …, "path": …, "stage": …}``), written by ``StageRefSerializer``, and its metadata is
kept nowhere: the stage tasks' cache policy names ``RecordIndex`` as its key storage, which is
where Prefect looks a record up. The index reads the record file, checks it, and answers fixed
metadata naming ``StageRefSerializer``; Prefect then decodes the file with that serializer, which
parses plain JSON into a ``StageRef``'s fields. Nothing a record says chooses a decoder, and
nothing it names is imported or called.

A record that is not exactly the reference its name was made from (another shape, stage, key or
folder; a pickle; a Prefect-format record, as sentiflow wrote before; a truncated write) counts as
absent: the task runs, reuses its folder when that is valid (else builds it), and Prefect writes a
good record over the bad one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from sentiflow.storage.store import StageRef, stable_hash

log = logging.getLogger("sentiflow.records")

SERIALIZER = "sentiflow-stageref"  # the only serializer a stage record is read with
FIELDS = ("key", "path", "stage")  # a record is a JSON object of exactly these strings
MAX_BYTES = 64 * 1024  # a record is a few hundred bytes; anything far larger is not one


def record_key(ref: StageRef) -> str:
    """The cache key, and record name, of a stage's reference. The folder's location is part of
    it: two data roots never share a record."""
    return f"sentiflow-{ref.stage}-{ref.key}-{stable_hash(str(ref.path))[:12]}"


def dump_record(ref: StageRef) -> bytes:
    """A reference as the bytes of its record: canonical JSON of its three fields."""
    fields = {"key": ref.key, "path": str(ref.path), "stage": ref.stage}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def parse_record(blob: bytes) -> StageRef:
    """A record's bytes as the reference they hold; ``ValueError`` saying what is wrong otherwise.

    Plain ``json.loads`` (no object hook: nothing a record names is imported), then a check of
    the shape before any model sees it."""
    if len(blob) > MAX_BYTES:
        raise ValueError(f"{len(blob)} bytes, more than a stage record's {MAX_BYTES}")
    try:
        data = json.loads(blob)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON ({type(e).__name__})") from None
    if not (isinstance(data, dict) and sorted(data) == list(FIELDS)
            and all(isinstance(data[f], str) for f in FIELDS)):
        shape = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a stage reference (an object of the strings {', '.join(FIELDS)}; "
                         f"found {shape})")
    if not Path(data["path"]).is_absolute():
        raise ValueError(f"its path {data['path']!r} is not absolute")
    return StageRef(stage=data["stage"], key=data["key"], path=Path(data["path"]))


def check_record(blob: bytes, key: str) -> StageRef:
    """The reference stored under ``key``: the record must parse and be the one reference whose
    ``record_key`` is ``key`` (its stage, its key, its folder)."""
    ref = parse_record(blob)
    if record_key(ref) != key:
        raise ValueError(f"it holds {ref.stage} {ref.key} at {ref.path}, not the stage this "
                         "record's name was made from")
    return ref


class StageRefSerializer(Serializer):
    """The serializer of stage records: a ``StageRef`` to plain JSON and back (``dump_record``,
    ``parse_record``). Registered with Prefect under ``SERIALIZER``."""

    type: str = Field(default=SERIALIZER, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, StageRef):  # Prefect reports it and keeps no record
            raise TypeError(f"a stage task returned a {type(obj).__name__}, not a StageRef")
        return dump_record(obj)

    def loads(self, blob: bytes) -> StageRef:
        return parse_record(blob)


def _result_storage() -> Any:
    """The result storage the running task reads and writes its record in (Prefect's default
    outside a run)."""
    from prefect.results import get_default_result_storage, get_result_store

    storage = get_result_store().result_storage
    return storage if storage is not None else get_default_result_storage(_sync=True)


def read_record(key: str) -> StageRef | None:
    """The reference in the record ``key`` of the result storage; None when there is none, or
    when the file there is not a good record (logged: it is ignored and will be rewritten)."""
    try:
        blob = _result_storage().read_path(key, _sync=True)
    except Exception as e:  # missing (LocalFileSystem: ValueError), or unreadable: no record
        log.debug("cache record %s: none (%s)", key, e)
        return None
    try:
        return check_record(blob, key)
    except ValueError as e:
        log.warning("cache record %s is not a good stage record: %s; ignored, the task runs "
                    "and rewrites it", key, e)
        return None


def metadata_of(key: str) -> bytes:
    """The metadata of every stage record, as Prefect reads it: where the record is, and that
    ``StageRefSerializer`` reads it."""
    return json.dumps({"storage_key": key, "serializer": {"type": SERIALIZER}}).encode()


class RecordIndex(WritableFileSystem):
    """The stage tasks' cache key storage: where Prefect asks whether a record exists and how to
    read it. A record's metadata is fixed, so none is stored: a lookup reads and checks the record
    itself (``read_record``) and answers ``metadata_of`` the key, or fails (Prefect: no record);
    a write of metadata keeps nothing. Never saved as a block: a cache policy takes it as it is."""

    _block_type_name = "Sentiflow stage record index"

    def read_path(self, path: str, **_: Any) -> bytes:
        if read_record(path) is None:
            raise ValueError(f"no good stage record {path}")
        return metadata_of(path)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:
        return path

    async def awrite_path(self, path: str, content: bytes) -> str:
        return path


def task_options(key_fn: Callable[[Any, dict[str, Any]], str | None]) -> dict[str, Any]:
    """A stage task's caching options: cached by ``key_fn``, its record read through
    ``RecordIndex`` and written and read by ``StageRefSerializer``."""
    return {"cache_policy": CacheKeyFnPolicy(cache_key_fn=key_fn, key_storage=RecordIndex()),
            "result_serializer": StageRefSerializer()}
