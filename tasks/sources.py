"""Readers for every kind of review source, and a content fingerprint for each.

Kinds: a Hugging Face dataset id, a Parquet file, a CSV file, a TSV file, a folder of Parquet,
CSV or TSV files, an ``aclImdb`` folder (``train/pos``, ``train/neg``, ``test/...``) or its
``.tar.gz``. The kind is part of the fingerprint: a ``.csv`` and a ``.tsv`` with the same bytes
parse differently, so they must not share an ingest key. Each reader yields
``RawPart``s: one table of raw columns per file, named so that errors can point at it.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sentiflow.storage.store import file_sha256

SPLITS = ("train", "test")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
ACL_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


class SourceError(ValueError):
    """A source that cannot be read: the message names the file, row and column."""


@dataclass
class RawPart:
    split: str  # "train" or "test"
    table: pa.Table  # raw columns as found in the file
    origin: str  # file (or archive member) the rows came from, for error messages
    rows: list[int] | None = None  # the file's 0-based row of each table row, when not 0, 1, 2...


def source_kind(source: str) -> str:
    p = Path(source).expanduser()
    if p.is_dir():
        if _acl_root(p) is not None:
            return "aclimdb"
        return "folder"
    if p.is_file():
        name = p.name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return "aclimdb-tar"
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith(".csv"):
            return "csv"
        if name.endswith(".tsv"):
            return "tsv"
        raise SourceError(
            f"{p}: unsupported file type (expected .parquet, .csv, .tsv or an aclImdb .tar.gz)"
        )
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return "hub"
    raise SourceError(f"source {source!r}: no such file or folder")


def _acl_root(p: Path) -> Path | None:
    for root in (p, p / "aclImdb"):
        if any((root / s / lab).is_dir() for s in SPLITS for lab in ("pos", "neg")):
            return root
    return None


# -- fingerprints ---------------------------------------------------------------------------------


def fingerprint(source: str) -> str:
    """A content hash of a local source, or the dataset revision on the Hugging Face hub."""
    kind = source_kind(source)
    if kind == "hub":
        return f"hub:{source}@{_hub_revision(source)}"
    p = Path(source).expanduser()
    # paths relative to the aclImdb folder itself, whether it or its parent was given
    base = _acl_root(p) if kind == "aclimdb" else p
    digest = hashlib.sha256(kind.encode())
    for path in _local_files(p, kind):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
    return f"{kind}:{digest.hexdigest()}"


def _local_files(p: Path, kind: str) -> list[Path]:
    if p.is_file():
        return [p]
    if kind == "aclimdb":
        root = _acl_root(p)
        return sorted(f for s in SPLITS for lab in ("pos", "neg") for f in (root / s / lab).glob("*.txt"))
    return sorted(f for files in _split_files(p).values() for f in files)


# -- readers --------------------------------------------------------------------------------------


def read_source(source: str, strict: bool = True) -> Iterator[RawPart]:
    """``strict=False`` (scoring): an aclImdb review that is empty or not UTF-8 is kept, as
    bytes in a binary ``text`` column, for the caller to give it a status."""
    kind = source_kind(source)
    p = Path(source).expanduser()
    if kind == "hub":
        yield from _read_hub(source)
    elif kind in ("parquet", "csv", "tsv"):  # one file: _read_table goes by its suffix
        yield from _split_by_column(_read_table(p), str(p))
    elif kind == "folder":
        files = _split_files(p)
        if not files:
            raise SourceError(
                f"{p}: no train/test Parquet or CSV files found "
                "(expected e.g. train.parquet and test.parquet, or train.csv and test.csv)"
            )
        for split, paths in files.items():
            for f in paths:
                yield RawPart(split, _read_table(f), str(f))
    elif kind == "aclimdb":
        yield from _read_acl_folder(_acl_root(p), strict)
    else:
        yield from _read_acl_tar(p, strict)


def _split_files(folder: Path) -> dict[str, list[Path]]:
    """train/test files in a folder: ``train.parquet``, ``train-0000-of-0001.parquet``,
    ``train/*.parquet`` or Hugging Face's ``<config>/train-*.parquet``; CSV likewise."""
    found: dict[str, list[Path]] = {}
    for split in SPLITS:
        for ext in ("parquet", "csv", "tsv"):
            patterns = [f"{split}.{ext}", f"{split}-*.{ext}", f"{split}/*.{ext}", f"*/{split}-*.{ext}"]
            files = sorted({f for pat in patterns for f in folder.glob(pat) if f.is_file()})
            if files:
                found[split] = files
                break
    return found


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path)
        opts = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                                  newlines_in_values=True)
        # ids as written ("007" stays "007"), the same as scoring reads them
        ids = pacsv.ConvertOptions(column_types={c: pa.string() for c in ("id", "source_id")})
        return pacsv.read_csv(path, parse_options=opts, convert_options=ids)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path}: cannot be read: {e}") from e


def _split_by_column(table: pa.Table, origin: str) -> Iterator[RawPart]:
    """A single file: its ``split`` column decides, else every row is training data."""
    if "split" not in table.column_names:
        yield RawPart("train", table, origin)
        return
    splits = table.column("split").to_pylist()
    for i, s in enumerate(splits):
        if s not in SPLITS:
            raise SourceError(f"{origin}, row {i + 1}, column 'split': {s!r} is not 'train' or 'test'")
    for split in SPLITS:
        rows = [i for i, s in enumerate(splits) if s == split]
        if rows:
            yield RawPart(split, table.take(rows).drop_columns(["split"]), origin, rows)


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


def _hub_error(source: str, e: Exception) -> SourceError:
    return SourceError(
        f"source {source!r} is not a local file or folder, and the Hugging Face hub could not "
        f"be reached for it ({type(e).__name__}: {e}). Give a local copy instead: "
        "--source PATH or SENTIFLOW_SOURCE=PATH (Parquet file or folder, CSV, aclImdb folder "
        "or aclImdb_v1.tar.gz)"
    )


def _hub_revision(source: str) -> str:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source, timeout=10).sha
    except Exception as e:  # offline, unreachable, unknown id: one clear message
        raise _hub_error(source, e) from e


def _read_hub(source: str) -> Iterator[RawPart]:
    try:
        import datasets

        dd = datasets.load_dataset(source)
    except Exception as e:
        raise _hub_error(source, e) from e
    for split in SPLITS:
        if split in dd:
            yield RawPart(split, dd[split].data.table, f"{source}[{split}]")
