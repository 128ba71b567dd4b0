"""Readers for every kind of review source: each yields ``RawPart``s, tables of raw columns named
by the file (and first row) they came from, so that errors can point at it. Parquet, CSV/TSV and
hub sources stream in batches of ``batch_rows`` (a Parquet file a batch at a time, a CSV in 4 MB
blocks), so a source of any size is read in bounded memory; aclImdb folders and archives (25,000
small files a part at most) come a part at a time. What a source is (its kind, its files, its columns,
its parts, its fingerprint) is in ``sentiflow.tasks.data.reviews``; ``SourceError`` and ``SPLITS`` are
re-exported from there.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sentiflow.tasks.data.reviews import (
    ID_COLUMNS,
    SPLITS,
    TEXT_COLUMNS,
    SourceError,
    acl_root,
    check_split,
    hub_error,
    source_kind,
    split_files,
    with_retries,
)

ACL_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


@dataclass
class RawPart:
    split: str  # "train" or "test"
    table: pa.Table  # raw columns as found in the file
    origin: str  # file (or archive member) the rows came from, for error messages
    rows: list[int] | None = None  # the file's 0-based row of each table row, when not consecutive
    first_row: int = 0  # else: the file's 0-based row of the table's first row

    def row(self, i: int) -> int:
        """The 1-based row of the file that row ``i`` of the table came from."""
        return (self.rows[i] if self.rows is not None else self.first_row + i) + 1


# -- readers --------------------------------------------------------------------------------------


BATCH_ROWS = 8192


def read_source(source: str, strict: bool = True, batch_rows: int = BATCH_ROWS) -> Iterator[RawPart]:
    """``strict=False`` (scoring): an aclImdb review that is empty or not UTF-8 is kept, as
    bytes in a binary ``text`` column, for the caller to give it a status."""
    kind = source_kind(source)
    p = Path(source).expanduser()
    if kind == "hub":
        yield from _read_hub(source, batch_rows)
    elif kind in ("parquet", "csv", "tsv"):  # one file: _read_batches goes by its suffix
        for table, first in _read_batches(p, batch_rows):
            yield from _split_by_column(table, str(p), first)
    elif kind == "folder":
        files = split_files(p)
        if not files:
            raise SourceError(
                f"{p}: no train/test Parquet or CSV files found "
                "(expected e.g. train.parquet and test.parquet, or train.csv and test.csv)"
            )
        for split, paths in files.items():
            for f in paths:
                for table, first in _read_batches(f, batch_rows):
                    if "split" in table.column_names:  # the file decides; the column must agree
                        check_split(table.column("split"), split, str(f), first)
                    yield RawPart(split, table, str(f), first_row=first)
    elif kind == "aclimdb":
        yield from _read_acl_folder(acl_root(p), strict)
    else:
        yield from _read_acl_tar(p, strict)


def _read_batches(path: Path, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    """A Parquet or CSV/TSV file as tables of at most ``batch_rows`` rows, each with the file's
    0-based row of its first row."""
    first = 0
    try:
        if path.suffix.lower() == ".parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        else:
            batches = _csv_batches(path, batch_rows)
        for batch in batches:
            yield pa.Table.from_batches([batch]), first
            first += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path}: cannot be read: {e}") from e


def _csv_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    opts = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                              newlines_in_values=True)
    # ids as written ("007" stays "007"), the same as scoring reads them; reviews as bytes, so that
    # one that is not UTF-8 is named by its row (ingest.normalize), not a failed block
    types = pacsv.ConvertOptions(column_types={**{c: pa.string() for c in ID_COLUMNS},
                                               **{c: pa.binary() for c in TEXT_COLUMNS}})
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 22),
                            parse_options=opts, convert_options=types)
    for block in reader:
        for start in range(0, block.num_rows, batch_rows):
            yield block.slice(start, batch_rows)


def _split_by_column(table: pa.Table, origin: str, first: int = 0) -> Iterator[RawPart]:
    """A single file: its ``split`` column decides, else every row is training data. ``first``:
    the file's 0-based row of the table's first row."""
    if "split" not in table.column_names:
        yield RawPart("train", table, origin, first_row=first)
        return
    splits = table.column("split").to_pylist()
    for i, s in enumerate(splits):
        if s not in SPLITS:
            raise SourceError(f"{origin}, row {first + i + 1}, column 'split': {s!r} is not 'train' or 'test'")
    for split in SPLITS:
        rows = [i for i, s in enumerate(splits) if s == split]
        if rows:
            yield RawPart(split, table.take(rows).drop_columns(["split"]), origin,
                          [first + i for i in rows])


def _acl_table(items: list[tuple[int, str, str, bytes]], origin: str, strict: bool = True) -> pa.Table:
    """Rows of the aclImdb layout, sorted negative first, then by numeric file id."""
    items.sort(key=lambda r: (r[1] == "pos", r[0]))
    if not strict:
        return pa.table({"id": [r[2] for r in items], "text": pa.array([r[3] for r in items], pa.binary()),
                         "label": [r[1] for r in items]})
    texts = []
    for _, _, name, data in items:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(
                f"{origin}{name}: not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})"
            ) from e
        if not text.strip():  # caught here, where the file is known, not as "row N" later
            raise SourceError(f"{origin}{name}: empty review text")
        texts.append(text)
    return pa.table(
        {"id": [r[2] for r in items], "text": texts, "label": [r[1] for r in items]}
    )


def _read_acl_folder(root: Path, strict: bool = True) -> Iterator[RawPart]:
    for split in SPLITS:
        items = []
        for label in ("neg", "pos"):
            for f in (root / split / label).glob("*.txt"):
                m = ACL_MEMBER.search(f.as_posix())
                if m:
                    items.append((int(m.group(3)), label, f"{split}/{label}/{f.name}", f.read_bytes()))
        if items:
            yield RawPart(split, _acl_table(items, f"{root}/", strict), str(root / split))


def _read_acl_tar(path: Path, strict: bool = True) -> Iterator[RawPart]:
    items: dict[str, list] = {s: [] for s in SPLITS}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                m = ACL_MEMBER.search(member.name)
                if not (member.isfile() and m):
                    continue
                split, label = m.group(1), m.group(2)
                data = tar.extractfile(member).read()
                items[split].append((int(m.group(3)), label, f"{split}/{label}/{Path(member.name).name}", data))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{path}: cannot be read as a tar archive: {e}") from e
    for split in SPLITS:
        if items[split]:
            yield RawPart(split, _acl_table(items[split], f"{path}:", strict), f"{path}:{split}")


# -- Hugging Face hub -----------------------------------------------------------------------------


def _read_hub(source: str, batch_rows: int = BATCH_ROWS) -> Iterator[RawPart]:
    try:
        import datasets

        dd = with_retries(lambda: datasets.load_dataset(source), f"loading {source} from the hub")
    except Exception as e:
        raise hub_error(source, e) from e
    for split in SPLITS:
        if split in dd:  # a memory-mapped Arrow table: handed on a batch at a time
            first = 0
            for batch in dd[split].data.table.to_batches(max_chunksize=batch_rows):
                yield RawPart(split, pa.Table.from_batches([batch]), f"{source}[{split}]", first_row=first)
                first += batch.num_rows
