"""Stage 1, ingest: any source → shards ``train-NNNNN.parquet`` and ``test-NNNNN.parquet`` of
``shard_rows`` reviews each, with ``id``, ``text``, ``label`` (int8, 0 = negative, 1 = positive).

The source is read a batch at a time and written as it goes: memory holds one shard and 8 bytes
of id hash a review (to find a duplicate id; the rows of both are found by a second pass when
there is one). Shards are cut at fixed row counts from the start of each part, so reviews
appended to a source leave the earlier shards byte for byte as they were: downstream stages, keyed
by shard content, reuse them.

The key is the source's fingerprint (a content hash, or the hub revision), so changed data reruns
everything downstream and unchanged data, wherever it lies, never does. The flow computes the
fingerprint with a plain call (``sentiflow.tasks.data.reviews.fingerprint``) and passes it in. A source
without test reviews is accepted, with a warning. What a source's columns, labels and ids are is
in ``sentiflow.tasks.data.reviews``; here a missing label is an error (``missing="error"``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.data.reviews import (
    ID_COLUMNS,
    LABEL_COLUMNS,
    SPLITS,
    TEXT_COLUMNS,
    SourceError,
    fingerprint,
    labels,
    make_ids,
    pick,
)
from sentiflow.tasks.data.sources import RawPart, read_source

STAGE = "ingest"
log = logging.getLogger("sentiflow.ingest")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int8())])


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_rows: int = Field(5000, ge=1, description="Reviews per shard: the unit of caching, of parallel "
                                                    "work, and of reuse when reviews are appended")


def normalize(part: RawPart, start: int = 0) -> pa.Table:
    """Raw columns → the ingest schema, or a ``SourceError`` naming file, row and column.
    ``start``: the part's rows before this table (for ids made from the position)."""
    t = part.table
    text_col = pick(t.column_names, TEXT_COLUMNS, part.origin, "text")
    label_col = pick(t.column_names, LABEL_COLUMNS, part.origin, "label")
    text = t.column(text_col)
    if pa.types.is_null(text.type):  # a column with no value at all: every row is missing
        text = text.cast(pa.string())
    if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):  # a CSV's bytes
        try:
            text = text.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8 somewhere: name the row
            _check_utf8(text, part, text_col)
            raise
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise SourceError(f"{part.origin}, column {text_col!r}: expected text, found {text.type}")
    text = text.cast(pa.string())
    bad = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        what = "null" if text[row].as_py() is None else "empty"
        raise SourceError(f"{part.origin}, row {part.row(row)}, column {text_col!r}: {what} review text")
    id_col = pick(t.column_names, ID_COLUMNS)
    if id_col is not None:
        ids = t.column(id_col).cast(pa.string())
        if ids.null_count:
            row = pc.index(pc.is_null(ids), True).as_py()
            raise SourceError(f"{part.origin}, row {part.row(row)}, column {id_col!r}: null id")
    else:
        ids = pa.array(make_ids(None, [part.split] * t.num_rows, {part.split: start}), pa.string())
    # a training review needs its label: a missing one is refused like any other bad value
    rows = [part.row(i) - 1 for i in range(t.num_rows)]
    label = labels(t.column(label_col).to_pylist(), label_col, part.origin, rows, missing="error")
    return pa.Table.from_arrays([ids, text, pa.array(label, pa.int8())], schema=SCHEMA)


def _check_utf8(column: pa.ChunkedArray, part: RawPart, name: str) -> None:
    """The first value of a binary column that is not UTF-8, named by file, row and column."""
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{part.origin}, row {part.row(i)}, column {name!r}: not valid UTF-8 "
                              f"(byte {e.start}: {value[e.start:e.start + 1]!r})") from None


def id_hashes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """64 bits of a hash of each id: what ``ingest`` keeps to find a duplicate id in bounded memory
    (8 bytes a review, not the ids themselves)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids.to_pylist()), np.uint64, len(ids))


class ShardWriter:
    """Writes one part's reviews as ``<part>-NNNNN.parquet`` shards of exactly ``shard_rows`` rows
    (the last one fewer), cut from the start of the part: appending reviews to a source leaves
    every full shard as it was, byte for byte. A part with no reviews gets one empty shard."""

    def __init__(self, out_dir: Path, part: str, shard_rows: int):
        self.out_dir, self.part, self.shard_rows = out_dir, part, shard_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0  # written or pending
        self.shards = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= self.shard_rows:
            rest = pa.concat_tables(self.pending)
            while rest.num_rows >= self.shard_rows:
                self._flush(rest.slice(0, self.shard_rows))
                rest = rest.slice(self.shard_rows)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        if self.pending_rows or not self.shards:
            self._flush(pa.concat_tables(self.pending) if self.pending else SCHEMA.empty_table())
        self.pending, self.pending_rows = [], 0

    def _flush(self, table: pa.Table) -> None:
        # combined first, so that a shard's bytes do not depend on the batches it was read in
        pq.write_table(table.combine_chunks(), self.out_dir / shard_name(self.part, self.shards),
                       compression="zstd")
        self.shards += 1


def shard_name(part: str, i: int) -> str:
    return f"{part}-{i:05d}.parquet"


def part_files(folder: Path, part: str) -> list[Path]:
    """A part's shards in an ingest (or split) folder, in order."""
    return sorted(folder.glob(f"{part}-[0-9]*.parquet"))


def read_part(folder: Path, part: str) -> pa.Table:
    """A part's shards as one table (for tests and small sources)."""
    return pa.concat_tables(pq.read_table(f) for f in part_files(folder, part))


def ingest(source: str, out_dir: Path, params: IngestParams = IngestParams()) -> dict[str, int]:
    """Read ``source`` a batch at a time and write each part's shards into ``out_dir``."""
    writers = {s: ShardWriter(out_dir, s, params.shard_rows) for s in SPLITS}
    hashes: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for part in read_source(source):
        table = normalize(part, writers[part.split].rows)
        hashes[part.split].append(id_hashes(table.column("id")))
        writers[part.split].write(table)
    counts = {s: w.rows for s, w in writers.items()}
    if counts["train"] == 0:
        raise SourceError(f"source {source!r}: no training reviews found (empty source)")
    for split in SPLITS:
        all_hashes = np.concatenate(hashes[split]) if hashes[split] else np.zeros(0, np.uint64)
        if len(np.unique(all_hashes)) != len(all_hashes):
            error = _duplicate(source, split, all_hashes)
            if error is not None:
                raise error
        writers[split].close()
    if counts["test"] == 0:
        log.warning("source %r has no test reviews: its test part is empty", source)
    return counts


def _duplicate(source: str, split: str, hashes: np.ndarray) -> SourceError | None:
    """A second pass over the source, looking for the ids behind a repeated hash: a
    ``SourceError`` naming the first duplicate id and the file and row of its first two
    occurrences, or None (two ids that only share a hash)."""
    values, counts = np.unique(hashes, return_counts=True)
    repeated = set(values[counts > 1].tolist())
    seen: dict[str, str] = {}
    start = 0
    for part in read_source(source):
        if part.split != split:
            continue
        table = normalize(part, start)
        start += table.num_rows
        for i, (h, id_) in enumerate(zip(id_hashes(table.column("id")).tolist(),
                                         table.column("id").to_pylist())):
            if h not in repeated:
                continue
            where = f"{part.origin}, row {part.row(i)}"
            if id_ in seen:
                return SourceError(f"source {source!r}, {split}: duplicate id {id_!r} ({seen[id_]} and {where})")
            seen[id_] = where
    return None


# -- stage and task ------------------------------------------------------------------------------

def spec(fingerprint: str, params: IngestParams = IngestParams()) -> stage.StageSpec:
    # the readers in tasks.sources and the rules in tasks.reviews decide what ingest writes as
    # much as this module does
    modules = [__name__, "sentiflow.tasks.data.sources", "sentiflow.tasks.data.reviews"]
    return stage.StageSpec(STAGE, params, (fingerprint,), stage.code_version(modules))


def plan(root: Path | str, fingerprint: str, params: IngestParams = IngestParams()) -> StageRef:
    return spec(fingerprint, params).ref(root)


def run(source: str, root: Path | str, source_fingerprint: str | None = None,
        force: bool = False, params: IngestParams = IngestParams()) -> StageRef:
    fp = source_fingerprint or fingerprint(source)
    return stage.run_stage(root, spec(fp, params), lambda out: ingest(source, out, params), force)


@stage.stage_task(
    "ingest", lambda p: plan(p["root"], p["source_fingerprint"], p.get("params") or IngestParams()))
def ingest_task(source: str, root: str, source_fingerprint: str, params: IngestParams = IngestParams(),
                force: bool = False) -> StageRef:
    return run(source, root, source_fingerprint, force, params)
