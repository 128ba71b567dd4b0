"""Reviews to score, read as a stream of small batches: every source ingest reads, and a plain
text file with one review per line.

Unlike ingest, which refuses a training source with a null or empty review, scoring keeps every
row: a review that cannot be scored is passed on with its raw value (UTF-8 bytes decoded, other
bytes kept), and ``sentiflow.tasks.core.rows.status_of`` says why (``null``, ``empty``,
``not_text``). Parquet, CSV and TSV files (alone or in a folder) and text files are read a batch
at a time, so memory does not grow with the file; a Parquet file is read a row group at a time,
so its row-group size bounds memory, and a CSV in 4 MB blocks. Hub datasets
and aclImdb folders or archives come whole through ``sentiflow.tasks.data.sources.read_source`` (their size
bounds memory) and are then cut into batches.

Long reviews (``max_chars``, the model's character budget: ``Scorer.max_chars``). A review is
handed on with at most ``max_chars`` + 1 characters, what ``sentiflow.tasks.core.text.cut_text``
looks at, so scoring gives what it gives for the whole review and never copies a long one into
Python: a text file's line is read ``LINE_CHUNK`` bytes at a time, its first characters kept and
the rest only checked to be UTF-8; a Parquet, CSV or TSV value is cut in Arrow. The reader still
holds what the format makes it hold: a Parquet page with the whole value, decompressed (about
3.6 times the value while Arrow decodes it), so a row group of such values is refused from the
file's footer before it is read (``refuse_long_values``); a CSV row of more than about two of its
4 MB blocks is refused (a ``SourceError``: Arrow's "straddling object"). A long value
that is not UTF-8 is handed on as ``NOT_UTF8`` (status ``not_text``, as the whole value gets).

Columns, ids, labels, parts and fingerprints follow ``sentiflow.tasks.data.reviews``, as ingest does;
unlike ingest, a missing label (null, -1, empty) is no label (``missing="none"``), and a null id is
replaced by ``<split>-<n>``. In a folder, a file's ``split`` column must agree with the file.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from sentiflow.tasks.core.rows import decoded
from sentiflow.tasks.core.text import kept_texts
from sentiflow.tasks.data import sources
from sentiflow.tasks.data.reviews import (
    ID_COLUMNS,
    LABEL_COLUMNS,
    SPLITS,
    TEXT_COLUMNS,
    SourceError,
    check_split,
    labels,
    line_id,
    make_ids,
    pick,
    source_kind,
    split_files,
)

Split = Literal["auto", "test", "train", "all"]
LINE_CHUNK = 1 << 20  # bytes of a text file's line read at a time (with max_chars)
# A Parquet row group's text past this size, of values averaging more than 4 bytes a character
# of the budget, is refused (``refuse_long_values``)
LONG_GROUP_BYTES = 64 << 20
NOT_UTF8 = b"\xff"  # stands for a long value that is not UTF-8: status not_text, its bytes never used


@dataclass
class ReviewBatch:
    ids: list[str]
    texts: list[Any]  # raw values: str for a review, or whatever the source held instead
    labels: list[int | None] | None  # None: the source has no labels


@dataclass
class ReviewStream:
    labeled: bool
    batches: Iterator[ReviewBatch]


# -- opening a source -----------------------------------------------------------------------------

def open_reviews(source: str, split: Split = "auto", batch_rows: int = 2048,
                 max_chars: int | None = None) -> ReviewStream:
    """The reviews of ``source`` (``auto``: its test part if it has one, else all of it); with
    ``max_chars``, each with at most ``max_chars`` + 1 characters (see the module docstring)."""
    found = _resolve(source, split)
    if found.kind == "text":
        return ReviewStream(False, _text_lines(Path(source).expanduser(), batch_rows, max_chars))
    if found.kind == "whole":
        return _whole(source, split, batch_rows, max_chars)
    return ReviewStream(found.labeled, _files(found.files, batch_rows, found.fill_labels, found.in_folder,
                                              max_chars=max_chars))


@dataclass
class _Resolved:
    """How a source is read: its (split, file) pairs in order (kind ``files``), or as a text file
    (``text``), or whole (``whole``: a hub dataset, an aclImdb folder or archive)."""

    kind: Literal["files", "text", "whole"]
    labeled: bool = False
    files: list[tuple[str, Path]] = field(default_factory=list)
    in_folder: bool = False

    @property
    def fill_labels(self) -> bool | None:
        """``_files``' ``labeled``: in a folder, a file without labels gets a list of Nones."""
        return self.labeled if self.in_folder else None


def _resolve(source: str, split: Split) -> _Resolved:
    k = source_kind(source, text=True)
    p = Path(source).expanduser()
    if k == "text":
        if split == "test":
            raise SourceError(f"{p}: no test reviews (a text file is one part; use --split auto or all)")
        return _Resolved("text")
    if k in ("parquet", "csv", "tsv"):
        return _single_file(p, split)
    if k == "folder":
        found = split_files(p)
        if not found:
            raise SourceError(f"{p}: no train/test Parquet, CSV or TSV files found")
        chosen = _choose(split, [s for s in SPLITS if s in found], str(p))
        files = [(s, f) for s in chosen for f in found[s]]
        labeled = any(_columns(f) & set(LABEL_COLUMNS) for _, f in files)
        return _Resolved("files", labeled, files, in_folder=True)
    return _Resolved("whole")  # hub, aclImdb folder or archive


def _choose(split: Split, present: list[str], origin: str) -> list[str]:
    if split == "auto":
        return ["test"] if "test" in present else present
    if split == "all":
        return present
    if split not in present:
        raise SourceError(f"{origin}: no {split} reviews (it has: {', '.join(present) or 'none'})")
    return [split]


def _columns(path: Path) -> set[str]:
    if path.suffix.lower() == ".parquet":
        try:
            return set(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"{path}: cannot be read: {e}") from e
    try:
        return set(_csv_reader(path).schema.names)
    except UnicodeDecodeError as e:  # a header that is not UTF-8
        raise SourceError(f"{path}: cannot be read: {e}") from e


def _csv_reader(path: Path, include: list[str] | None = None) -> pacsv.CSVStreamingReader:
    tsv = path.suffix.lower() == ".tsv"
    try:
        return pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ",", newlines_in_values=True),
            # reviews and ids stay text even when a column happens to hold only numbers
            convert_options=pacsv.ConvertOptions(
                # reviews as bytes: one that is not UTF-8 gets status not_text, not a failed file
                column_types={**{c: pa.string() for c in (*ID_COLUMNS, "split")},
                              **{c: pa.binary() for c in TEXT_COLUMNS}},
                include_columns=include))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path}: cannot be read: {e}") from e


def _record_batches(path: Path, batch_rows: int, columns: list[str],
                    span: tuple[int, int] | None = None) -> Iterator[pa.RecordBatch]:
    """A file's rows in batches; ``span``: only rows [start, stop) of a Parquet file, reading
    only the row groups that hold them."""
    try:
        if path.suffix.lower() != ".parquet":  # read in 4 MB blocks, handed on in batches of batch_rows
            for block in _csv_reader(path, columns):
                for start in range(0, block.num_rows, batch_rows):
                    yield block.slice(start, batch_rows)
            return
        # pre_buffer off: a pre-buffering reader keeps every row group it read until it is
        # closed, so memory grew with the file (pyarrow 25: 38 -> 84 MB of Arrow memory over
        # 100,000 reviews, 2-11 MB without)
        f = pq.ParquetFile(path, pre_buffer=False)
        if span is None:
            yield from f.iter_batches(batch_size=batch_rows, columns=columns)
            return
        start, stop = span
        bounds = _group_bounds(f)
        groups = [g for g, (a, b) in enumerate(bounds) if b > start and a < stop]
        pos = bounds[groups[0]][0] if groups else stop
        for rb in (f.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns) if groups else ()):
            a, b = max(start - pos, 0), min(stop - pos, rb.num_rows)
            pos += rb.num_rows
            if b > a:
                yield rb.slice(a, b - a)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path}: cannot be read: {e}") from e


def refuse_long_values(path: Path, column: str, max_chars: int, span: tuple[int, int] | None = None) -> None:
    """A ``SourceError`` for a Parquet row group (of ``span``'s, or any) whose ``column`` holds
    more than ``LONG_GROUP_BYTES`` uncompressed at more than 4 bytes a character of the budget
    (``max_chars`` + 1) a value on average: reviews that long would be decoded whole, at about
    3.6 times their size (see the module docstring), to be cut to ``max_chars``. Read from the
    file's footer, before any row is. A long value among many ordinary ones in a row group is not
    seen here (the footer has no value's size) and is read."""
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.names.index(column) if column in meta.schema.names else None
    if index is None:
        return
    limit = 4 * (max_chars + 1)
    for g, (start, stop) in enumerate(_group_bounds_of(meta)):
        if span is not None and not (stop > span[0] and start < span[1]):
            continue
        chunk = meta.row_group(g).column(index)
        size, values = chunk.total_uncompressed_size, max(chunk.num_values, 1)
        if size > LONG_GROUP_BYTES and size / values > limit:
            raise SourceError(
                f"{path}: row group {g} (rows {start + 1:,} to {stop:,}), column {column!r}: "
                f"{size / (1 << 20):,.0f} MB of text in {chunk.num_values:,} "
                f"value{'s' if chunk.num_values != 1 else ''}, "
                f"{size / values / (1 << 20):,.1f} MB a review; a review is scored on its first "
                f"{max_chars:,} characters, and Parquet values this long would be read whole. "
                f"Cut the reviews before writing the file, or give them as a text file (one review "
                f"a line), which is read in bounded chunks")


def _group_bounds(f: pq.ParquetFile) -> list[tuple[int, int]]:
    """Each row group's rows [start, stop) in the file."""
    return _group_bounds_of(f.metadata)


def _group_bounds_of(meta: pq.FileMetaData) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(meta.row_group(g).num_rows for g in range(meta.num_row_groups)))
    return list(zip([0, *ends[:-1]], ends))


def _split_column(path: Path) -> pa.ChunkedArray:
    """A file's ``split`` column, every value checked to be train or test (else a SourceError)."""
    column = pa.chunked_array([b.column(0).cast(pa.string()) for b in _record_batches(path, 1 << 16, ["split"])],
                              pa.string())
    bad = pc.invert(pc.fill_null(pc.is_in(column, pa.array(SPLITS)), False))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise SourceError(f"{path}, row {row + 1}, column 'split': {column[row].as_py()!r} is not 'train' or 'test'")
    return column


def _single_file(path: Path, split: Split) -> _Resolved:
    names = _columns(path)
    labeled = bool(names & set(LABEL_COLUMNS))
    if "split" not in names:  # every row is one part: "train", as ingest sees it
        if split == "test":
            raise SourceError(f"{path}: no test reviews (no 'split' column)")
        return _Resolved("files", labeled, [("train", path)])
    column = _split_column(path)
    present = [s for s in SPLITS if pc.any(pc.equal(column, s)).as_py()]
    chosen = _choose(split, present, str(path))
    # both parts: one pass in file order ("*"), not all train rows then all test rows
    return _Resolved("files", labeled, [("*", path)] if len(chosen) > 1 else [(chosen[0], path)])


def _files(files: list[tuple[str, Path]], batch_rows: int, labeled: bool | None,
           in_folder: bool = False, counters: dict[str, int] | None = None,
           span: tuple[int, int] | None = None, max_chars: int | None = None) -> Iterator[ReviewBatch]:
    """Batches of the given (split, file) pairs. A file with a ``split`` column: in a folder
    (``in_folder``) it must agree with the file's split; alone, it gives only the rows of that
    split, or all its rows for split ``*``. ``labeled``: give every batch a label list (None where
    a file has none). For a part of a source (``SourcePart``): ``counters``, each split's rows
    before it (for ``<split>-<n>`` ids), and ``span``, its rows [start, stop) of its one file."""
    counters = dict(counters) if counters else dict.fromkeys(SPLITS, 0)
    for split, path in files:
        names = sorted(_columns(path))
        text_col = pick(names, TEXT_COLUMNS, str(path), "text")
        id_col, label_col = pick(names, ID_COLUMNS), pick(names, LABEL_COLUMNS)
        wanted = [c for c in (id_col, text_col, label_col, "split" if "split" in names else None) if c]
        if max_chars is not None and path.suffix.lower() == ".parquet":
            refuse_long_values(path, text_col, max_chars, span)
        row = span[0] if span else 0  # rows of the file read so far, for error messages
        for rb in _record_batches(path, batch_rows, wanted, span):
            table = pa.Table.from_batches([rb])
            rows = list(range(row, row + table.num_rows))
            row += table.num_rows
            if "split" in names and in_folder:
                check_split(table.column("split"), split, str(path), rows[0] if rows else 0)
            elif "split" in names and split != "*":
                keep = pc.fill_null(pc.equal(table.column("split").cast(pa.string()), split), False)
                rows = [r for r, k in zip(rows, keep.to_pylist()) if k]
                table = table.filter(keep)
            if table.num_rows == 0:
                continue
            row_splits = (table.column("split").cast(pa.string()).to_pylist() if split == "*"
                          else [split] * table.num_rows)
            yield _batch(table, (text_col, id_col, label_col), row_splits, rows, counters, bool(labeled), path,
                         max_chars)


def _batch(table: pa.Table, columns: tuple[str, str | None, str | None], row_splits: list[str],
           rows: list[int], counters: dict[str, int], labeled: bool, origin: Path | str,
           max_chars: int | None = None) -> ReviewBatch:
    """One batch of a source's rows: ids (the source's, else ingest's ``<split>-<n>``, n counted
    per split in ``counters``), raw texts (UTF-8 bytes decoded; cut to ``max_chars`` + 1
    characters, ``_texts``), labels (None without a label column, or a list of Nones when another
    file of the source has labels)."""
    text_col, id_col, label_col = columns
    ids = make_ids(table.column(id_col).cast(pa.string()).to_pylist() if id_col else None,
                   row_splits, counters)
    found = (labels(table.column(label_col).to_pylist(), label_col, str(origin), rows, missing="none")
             if label_col else ([None] * table.num_rows if labeled else None))
    return ReviewBatch(ids, _texts(table.column(text_col), max_chars), found)


def _decoded(values: list[Any]) -> list[Any]:
    return [decoded(v) for v in values]


def _texts(column: pa.ChunkedArray, max_chars: int | None) -> list[Any]:
    """A text column as raw Python values, UTF-8 bytes decoded; with ``max_chars``, a value
    longer than ``max_chars`` + 1 characters cut to that in Arrow before Python copies it."""
    if max_chars is None:
        return _decoded(column.to_pylist())
    out: list[Any] = []
    for chunk in column.chunks:
        binary = pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)
        out += _binary_texts(chunk, max_chars) if binary else _decoded(kept_texts(chunk, max_chars))
    return out


def _binary_texts(chunk: pa.Array, max_chars: int) -> list[Any]:
    """Binary values (a CSV's reviews) decoded; one of more than ``max_chars`` + 1 bytes checked
    to be UTF-8 whole where it lies (a string view of its bytes, no copy), then cut as text, or
    ``NOT_UTF8``."""
    long = pc.fill_null(pc.greater(pc.binary_length(chunk), max_chars + 1), False)
    if not pc.any(long).as_py():
        return _decoded(chunk.to_pylist())
    out = _decoded(pc.if_else(long, pa.scalar(None, chunk.type), chunk).to_pylist())
    text = chunk.view(pa.large_string() if pa.types.is_large_binary(chunk.type) else pa.string())
    for i in np.flatnonzero(long.to_numpy(zero_copy_only=False)):
        value = text.slice(int(i), 1)
        try:
            value.validate(full=True)
        except pa.ArrowInvalid:
            out[i] = NOT_UTF8
            continue
        out[i] = kept_texts(value, max_chars)[0]
    return out


# -- parts: contiguous rows scored on their own (one Dask task each) --------------------------------

class SourcePart(BaseModel):
    """Contiguous rows of a source: a file, or rows [start, stop) of a Parquet file (``span``),
    or a source read as one (kind ``text``: a text file; ``whole``: hub, aclImdb). Its batches,
    in order, are the source's batches from where it starts (the same ids, labels and errors)."""

    kind: Literal["file", "text", "whole"]
    source: str
    split: str  # as asked (text, whole); the file's split (train, test or * for both) for a file
    path: str | None = None
    span: tuple[int, int] | None = None
    counters: dict[str, int] = Field(default_factory=dict)  # rows of each split before this part
    in_folder: bool = False
    fill_labels: bool | None = None


def plan_parts(source: str, split: Split = "auto", part_rows: int = 10_000) -> tuple[bool, list[SourcePart]]:
    """(labeled, the parts of ``source`` in order): contiguous ranges of at least ``part_rows``
    rows of a Parquet file, cut at row-group boundaries (a row group larger than ``part_rows`` is
    cut into equal slices); one part per CSV/TSV file; one for a text file or a source read
    whole (a hub dataset, an aclImdb folder or archive: read here once, and again by its part).
    The whole source's errors that ``open_reviews`` raises at once are raised here."""
    if source_kind(source, text=True) != "hub":
        source = str(Path(source).expanduser().resolve())
    found = _resolve(source, split)
    if found.kind == "text":
        return False, [SourcePart(kind="text", source=source, split=split)]
    if found.kind == "whole":  # whether it has labels is known once it is read (here, then by the part)
        return _whole(source, split, 1).labeled, [SourcePart(kind="whole", source=source, split=split)]
    parts: list[SourcePart] = []
    counters = dict.fromkeys(SPLITS, 0)
    for n, (file_split, path) in enumerate(found.files):
        last = n == len(found.files) - 1
        for span, counts in _file_spans(path, file_split, found.in_folder, part_rows, need_counts=not last):
            parts.append(SourcePart(kind="file", source=source, split=file_split, path=str(path), span=span,
                                    counters=dict(counters), in_folder=found.in_folder,
                                    fill_labels=found.fill_labels))
            for k, v in counts.items():
                counters[k] += v
    return found.labeled, parts


def part_batches(part: SourcePart, batch_rows: int, max_chars: int | None = None) -> Iterator[ReviewBatch]:
    if part.kind == "text":
        return _text_lines(Path(part.source), batch_rows, max_chars)
    if part.kind == "whole":
        return _whole(part.source, part.split, batch_rows, max_chars).batches  # type: ignore[arg-type]
    return _files([(part.split, Path(part.path))], batch_rows, part.fill_labels, part.in_folder,  # type: ignore[arg-type]
                  part.counters, part.span, max_chars)


def _file_spans(path: Path, split: str, in_folder: bool, part_rows: int, need_counts: bool,
                ) -> Iterator[tuple[tuple[int, int] | None, dict[str, int]]]:
    """(span, rows of each split in it: how far it advances the id counters) of one file."""
    split_column = "split" in _columns(path) and not in_folder

    def counts(column: pa.ChunkedArray | None, rows: int) -> dict[str, int]:
        if column is None:
            return {split: rows}
        values = column.cast(pa.string())
        return {s: pc.sum(pc.equal(values, s)).as_py() or 0 for s in (SPLITS if split == "*" else [split])}

    if path.suffix.lower() != ".parquet":  # a CSV or TSV: one part
        if not need_counts:
            yield None, {}
            return
        names = sorted(_columns(path))
        col = "split" if split_column else pick(names, TEXT_COLUMNS, str(path), "text")
        batches = list(_record_batches(path, 1 << 16, [col]))
        column = pa.chunked_array([b.column(0) for b in batches], pa.string()) if split_column else None
        yield None, counts(column, sum(b.num_rows for b in batches))
        return
    try:
        bounds = _group_bounds(pq.ParquetFile(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path}: cannot be read: {e}") from e
    column = _split_column(path) if split_column else None
    for start, stop in _spans(bounds, part_rows):
        yield (start, stop), counts(column.slice(start, stop - start) if column is not None else None, stop - start)


def _spans(bounds: list[tuple[int, int]], part_rows: int) -> list[tuple[int, int]]:
    """Row ranges of at least ``part_rows`` rows cut at row-group boundaries (the last one may be
    shorter); a row group of more than ``part_rows`` rows cut into equal slices."""
    spans: list[tuple[int, int]] = []
    start = 0
    for a, b in bounds:
        if b - a > part_rows:
            if a > start:
                spans.append((start, a))
            k = -(-(b - a) // part_rows)
            cuts = [a + (b - a) * i // k for i in range(k + 1)]
            spans += list(itertools.pairwise(cuts))
            start = b
        elif b - start >= part_rows:
            spans.append((start, b))
            start = b
    end = bounds[-1][1] if bounds else 0
    if end > start:
        spans.append((start, end))
    return spans


def _text_lines(path: Path, batch_rows: int, max_chars: int | None = None) -> Iterator[ReviewBatch]:
    """One review per line (``\\n`` or ``\\r\\n``); a line that is not UTF-8 is kept as bytes.
    With ``max_chars``, a line is read ``LINE_CHUNK`` bytes at a time; a longer one is kept to its
    first ``max_chars`` + 1 characters (``_long_line``)."""
    ids, texts, n = [], [], 0
    with open(path, "rb") as f:
        while raw := (f.readline() if max_chars is None else f.readline(LINE_CHUNK)):
            n += 1
            if max_chars is not None and len(raw) == LINE_CHUNK and not raw.endswith(b"\n"):
                texts.append(_long_line(f, raw, max_chars + 1))
            else:
                texts.append(decoded(raw.rstrip(b"\r\n")))  # not UTF-8: kept as bytes, status not_text
            ids.append(line_id(n))
            if len(texts) == batch_rows:
                yield ReviewBatch(ids, texts, None)
                ids, texts = [], []
    if texts:
        yield ReviewBatch(ids, texts, None)


def _long_line(f: Any, chunk: bytes, keep: int) -> Any:
    """The rest of a line whose first ``LINE_CHUNK`` bytes (``chunk``) hold no newline, read a
    chunk at a time: its first ``keep`` characters (less the ``\\r\\n`` that end it, as a short
    line), or ``NOT_UTF8`` when any of it is not UTF-8. Memory: a chunk and ``keep`` characters."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    kept: list[str] = []
    room, valid, held = keep, True, 0  # held: b"\r" read last, the line's end if only \r\n follow

    def feed(data: bytes, final: bool = False) -> None:
        nonlocal room, valid
        if valid:
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError:
                valid = False
                return
            if room > 0:
                kept.append(text[:room])
                room -= len(kept[-1])

    while True:
        end = chunk.endswith(b"\n") or len(chunk) < LINE_CHUNK  # the line's last piece (or the file's)
        body = chunk.rstrip(b"\r\n") if end else chunk.rstrip(b"\r")
        if body:  # the held \r's were inside the line: one is enough to check, room's worth to keep
            if held:
                feed(b"\r" * max(1, min(held, room)))
            feed(body)
            held = 0
        if end:
            feed(b"", final=True)
            return "".join(kept) if valid else NOT_UTF8
        held += len(chunk) - len(body)
        chunk = f.readline(LINE_CHUNK)


def _whole(source: str, split: Split, batch_rows: int, max_chars: int | None = None) -> ReviewStream:
    parts = list(sources.read_source(source, strict=False))
    chosen = _choose(split, [s for s in SPLITS if any(p.split == s for p in parts)], source)
    parts = [p for p in parts if p.split in chosen]
    labeled = any(set(p.table.column_names) & set(LABEL_COLUMNS) for p in parts)

    def batches() -> Iterator[ReviewBatch]:
        counters = dict.fromkeys(SPLITS, 0)
        for part in parts:
            names = part.table.column_names
            text_col = pick(names, TEXT_COLUMNS, part.origin, "text")
            id_col, label_col = pick(names, ID_COLUMNS), pick(names, LABEL_COLUMNS)
            for start in range(0, part.table.num_rows, batch_rows):
                t = part.table.slice(start, batch_rows)
                rows = [(part.rows[start + j] if part.rows else start + j) for j in range(t.num_rows)]
                yield _batch(t, (text_col, id_col, label_col), [part.split] * t.num_rows, rows, counters,
                             labeled, part.origin, max_chars)

    return ReviewStream(labeled, batches())
