"""Stage 1, ingest: any source → ``train.parquet`` and ``test.parquet`` with ``id``, ``text``,
``label`` (int8, 0 = negative, 1 = positive).

The key is the source's fingerprint (a content hash, or the hub revision), so changed data reruns
everything downstream and unchanged data, wherever it lies, never does. The flow computes the
fingerprint with a plain call (``sentiflow.tasks.reviews.fingerprint``) and passes it in. A source
without test reviews is accepted, with a warning. What a source's columns, labels and ids are is
in ``sentiflow.tasks.reviews``; here a missing label is an error (``missing="error"``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.reviews import (
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
from sentiflow.tasks.sources import RawPart, read_source

STAGE = "ingest"
log = logging.getLogger("sentiflow.ingest")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int8())])


def _row(part: RawPart, i: int) -> int:
    """The 1-based row of the file that row ``i`` of the part's table came from."""
    return (part.rows[i] if part.rows is not None else i) + 1


def normalize(part: RawPart, start: int = 0) -> pa.Table:
    """Raw columns → the ingest schema, or a ``SourceError`` naming file, row and column."""
    t = part.table
    text_col = pick(t.column_names, TEXT_COLUMNS, part.origin, "text")
    label_col = pick(t.column_names, LABEL_COLUMNS, part.origin, "label")
    text = t.column(text_col)
    if pa.types.is_null(text.type):  # a CSV column with no value at all: every row is missing
        text = text.cast(pa.string())
    if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):  # a CSV with bytes that are not UTF-8
        _check_utf8(text, part, text_col)
        text = text.cast(pa.string())
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise SourceError(f"{part.origin}, column {text_col!r}: expected text, found {text.type}")
    text = text.cast(pa.string())
    bad = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        what = "null" if text[row].as_py() is None else "empty"
        raise SourceError(
            f"{part.origin}, row {_row(part, row)}, column {text_col!r}: {what} review text"
        )
    id_col = pick(t.column_names, ID_COLUMNS)
    if id_col is not None:
        ids = t.column(id_col).cast(pa.string())
        if ids.null_count:
            row = pc.index(pc.is_null(ids), True).as_py()
            raise SourceError(f"{part.origin}, row {_row(part, row)}, column {id_col!r}: null id")
    else:
        ids = pa.array(make_ids(None, [part.split] * t.num_rows, {part.split: start}), pa.string())
    # a training review needs its label: a missing one is refused like any other bad value
    label = labels(t.column(label_col).to_pylist(), label_col, part.origin, part.rows, missing="error")
    return pa.Table.from_arrays([ids, text, pa.array(label, pa.int8())], schema=SCHEMA)


def _check_utf8(column: pa.ChunkedArray, part: RawPart, name: str) -> None:
    """The first value of a binary column that is not UTF-8, named by file, row and column."""
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{part.origin}, row {_row(part, i)}, column {name!r}: not valid UTF-8 "
                              f"(byte {e.start}: {value[e.start:e.start + 1]!r})") from None


def _duplicate(source: str, split: str, table: pa.Table, parts: list[RawPart]) -> SourceError | None:
    """A ``SourceError`` naming an id that occurs twice and the file and row of both, or None."""
    ids = table.column("id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return None
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    first, second = pc.indices_nonzero(pc.equal(ids, dup)).to_pylist()[:2]

    def where(i: int) -> str:
        for part in parts:
            if i < part.table.num_rows:
                return f"{part.origin}, row {_row(part, i)}"
            i -= part.table.num_rows
        return "?"

    return SourceError(f"source {source!r}, {split}: duplicate id {dup!r} ({where(first)} and {where(second)})")


def ingest(source: str, out_dir: Path) -> dict[str, int]:
    """Read ``source`` and write ``train.parquet`` and ``test.parquet`` into ``out_dir``."""
    tables: dict[str, list[pa.Table]] = {s: [] for s in SPLITS}
    parts: dict[str, list[RawPart]] = {s: [] for s in SPLITS}
    for part in read_source(source):
        tables[part.split].append(normalize(part, sum(t.num_rows for t in tables[part.split])))
        parts[part.split].append(part)
    counts = {s: sum(t.num_rows for t in tables[s]) for s in SPLITS}
    if counts["train"] == 0:
        raise SourceError(f"source {source!r}: no training reviews found (empty source)")
    for split in SPLITS:
        table = pa.concat_tables(tables[split]) if tables[split] else SCHEMA.empty_table()
        error = _duplicate(source, split, table, parts[split])
        if error is not None:
            raise error
        pq.write_table(table, out_dir / f"{split}.parquet", compression="zstd")
    if counts["test"] == 0:
        log.warning("source %r has no test reviews: its test part is empty", source)
    return counts


# -- stage and task ------------------------------------------------------------------------------

def spec(fingerprint: str) -> stage.StageSpec:
    # the readers in tasks.sources and the rules in tasks.reviews decide what ingest writes as
    # much as this module does
    modules = [__name__, "sentiflow.tasks.sources", "sentiflow.tasks.reviews"]
    return stage.StageSpec(STAGE, None, (fingerprint,), stage.code_version(modules))


def plan(root: Path | str, fingerprint: str) -> StageRef:
    return spec(fingerprint).ref(root)


def run(source: str, root: Path | str, source_fingerprint: str | None = None,
        force: bool = False) -> StageRef:
    fp = source_fingerprint or fingerprint(source)
    return stage.run_stage(root, spec(fp), lambda out: ingest(source, out), force)


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["source_fingerprint"])


@stage.stage_task("ingest", _planner)
def ingest_task(source: str, root: str, source_fingerprint: str, force: bool = False) -> StageRef:
    return run(source, root, source_fingerprint, force)
