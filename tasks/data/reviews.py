"""What a review source is, in one place: its kind, the files that hold it, the columns of a
review, how its labels, ids and parts are read, and the fingerprint that names its content.
Ingest (``sentiflow.tasks.data.sources`` reads, ``sentiflow.tasks.data.ingest`` writes) and scoring
(``sentiflow.tasks.scoring.score_sources``) both follow these rules. No Prefect here.

Kinds: a Hugging Face dataset id (``hub``), a ``parquet``, ``csv`` or ``tsv`` file, a ``folder``
of such files, an ``aclimdb`` folder (``train/pos``, ``train/neg``, ``test/...``) or its
``.tar.gz`` (``aclimdb-tar``); for scoring only, a ``text`` file (``.txt``, one review a line).

Parts: a review is in ``train`` or ``test``. In a single file, its ``split`` column decides (no
such column: every row is train). In a folder, the file decides (``train.parquet``,
``train-*.csv``, ``train/*.parquet``, ...), and a ``split`` column in that file, if it has one,
must name the same part on every row (null included), else a ``SourceError`` names the file, row
and column: a ``test`` row inside ``train.parquet`` is a contradiction, neither moved nor dropped.
Ingest and scoring apply the same rule (``check_split``).

Columns (``pick``): the review is the first of ``TEXT_COLUMNS``, the label the first of
``LABEL_COLUMNS``, the id the first of ``ID_COLUMNS``.

Labels (``labels``): 0/1, a bool, a whole float, or pos/neg/positive/negative (any case, spaces
trimmed). A missing label is null, NaN, -1 (the hub's "unlabeled"), or a text cell that is empty
or ``-1``; the caller says what it means with ``missing``: ``"error"`` (ingest: a training review
needs its label, so it is refused like any other bad value) or ``"none"`` (scoring: the review is
still scored, its label is None). Any other value is a ``SourceError`` naming file, row and column.

Ids (``make_ids``): the source's id column, else ``<split>-<n>``, n counting the split's rows from
0 across its files in order; ``line-<n>`` (from 1) for a text file's line n. A null in the id
column: ingest refuses it, scoring gives that row ``<split>-<n>``.

Fingerprint (``fingerprint``): ``hub:<id>@<revision>``; ``text:<sha256(b"text" + the file's
sha256)>``; otherwise ``<kind>:<sha256>`` of the kind followed by each file read, in path order:
its path (relative to the folder, the aclImdb folder itself, or ``.`` for a single file), a NUL,
its sha256. Files a folder holds but no reader reads are left out. The kind is part of it: a
``.csv`` and a ``.tsv`` with the same bytes parse differently, so must not share a stage key.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from sentiflow.storage.store import file_sha256

SPLITS = ("train", "test")
TEXT_COLUMNS = ("text", "review")
LABEL_COLUMNS = ("label", "sentiment")
ID_COLUMNS = ("id", "source_id")
LABEL_NAMES = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
TEXT_SUFFIXES = (".txt",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
Missing = Literal["error", "none"]


class SourceError(ValueError):
    """A source that cannot be read: the message names the file, row and column."""


# -- kinds and files ------------------------------------------------------------------------------

def source_kind(source: str, text: bool = False) -> str:
    """The kind of ``source``; ``text=True`` (scoring) accepts a ``.txt`` file as kind ``text``."""
    p = Path(source).expanduser()
    if p.is_dir():
        return "aclimdb" if acl_root(p) is not None else "folder"
    if p.is_file():
        name = p.name.lower()
        if text and name.endswith(TEXT_SUFFIXES):
            return "text"
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return "aclimdb-tar"
        for kind in ("parquet", "csv", "tsv"):
            if name.endswith(f".{kind}"):
                return kind
        raise SourceError(
            f"{p}: unsupported file type (expected .parquet, .csv, .tsv or an aclImdb .tar.gz)"
        )
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return "hub"
    raise SourceError(f"source {source!r}: no such file or folder")


def acl_root(p: Path) -> Path | None:
    """The aclImdb folder at ``p`` or ``p/aclImdb``, if either is one."""
    for root in (p, p / "aclImdb"):
        if any((root / s / lab).is_dir() for s in SPLITS for lab in ("pos", "neg")):
            return root
    return None


def split_files(folder: Path) -> dict[str, list[Path]]:
    """train/test files in a folder: ``train.parquet``, ``train-0000-of-0001.parquet``,
    ``train/*.parquet`` or Hugging Face's ``<config>/train-*.parquet``; CSV, then TSV, likewise."""
    found: dict[str, list[Path]] = {}
    for split in SPLITS:
        for ext in ("parquet", "csv", "tsv"):
            patterns = [f"{split}.{ext}", f"{split}-*.{ext}", f"{split}/*.{ext}", f"*/{split}-*.{ext}"]
            files = sorted({f for pat in patterns for f in folder.glob(pat) if f.is_file()})
            if files:
                found[split] = files
                break
    return found


def fingerprint(source: str) -> str:
    """A content hash of a local source (text files included), or the hub dataset's revision."""
    kind = source_kind(source, text=True)
    if kind == "hub":
        return f"hub:{source}@{_hub_revision(source)}"
    p = Path(source).expanduser()
    if kind == "text":
        return "text:" + hashlib.sha256(b"text" + bytes.fromhex(file_sha256(p))).hexdigest()
    # paths relative to the aclImdb folder itself, whether it or its parent was given
    base = acl_root(p) if kind == "aclimdb" else p
    digest = hashlib.sha256(kind.encode())
    for path in _local_files(p, kind):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
    return f"{kind}:{digest.hexdigest()}"


def _local_files(p: Path, kind: str) -> list[Path]:
    if p.is_file():
        return [p]
    if kind == "aclimdb":
        root = acl_root(p)
        return sorted(f for s in SPLITS for lab in ("pos", "neg") for f in (root / s / lab).glob("*.txt"))
    return sorted(f for files in split_files(p).values() for f in files)


def hub_error(source: str, e: Exception) -> SourceError:
    return SourceError(
        f"source {source!r} is not a local file or folder, and the Hugging Face hub could not "
        f"be reached for it ({type(e).__name__}: {e}). Give a local copy instead: "
        "--source PATH or SENTIFLOW_SOURCE=PATH (Parquet file or folder, CSV, aclImdb folder "
        "or aclImdb_v1.tar.gz)"
    )


HUB_ATTEMPTS, HUB_FIRST_WAIT = 4, 1.0  # waits 1, 2, 4 s between attempts


def transient(e: BaseException) -> bool:
    """A hub error worth another try: the network (not offline mode), a timeout, a 429 or 5xx."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return False
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return status is not None and (status == 429 or status >= 500)
    return isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
        "ConnectError", "ConnectTimeout", "ReadTimeout", "ReadError", "RemoteProtocolError")


def with_retries(call, what: str, attempts: int = HUB_ATTEMPTS, first_wait: float = HUB_FIRST_WAIT):
    """``call()``, tried again with exponential backoff while it fails with a transient error."""
    import logging
    import time

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:
            if attempt == attempts or not transient(e):
                raise
            wait = first_wait * 2 ** (attempt - 1)
            logging.getLogger("sentiflow.sources").warning("%s failed (%s: %s); retry %d of %d in %.0f s",
                                                           what, type(e).__name__, e, attempt, attempts - 1, wait)
            time.sleep(wait)


def _hub_revision(source: str) -> str:
    try:
        from huggingface_hub import HfApi

        return with_retries(lambda: HfApi().dataset_info(source, timeout=10).sha, f"hub revision of {source}")
    except Exception as e:  # offline, unreachable, unknown id: one clear message
        raise hub_error(source, e) from e


# -- parts, columns, labels, ids ------------------------------------------------------------------

def check_split(column: pa.Array | pa.ChunkedArray, part: str, origin: str, start: int = 0) -> None:
    """A folder file's ``split`` column must say ``part`` (the file's) on every row; ``start`` is
    the 0-based file row of the column's first value."""
    values = column.cast(pa.string())
    bad = pc.invert(pc.fill_null(pc.equal(values, part), False))
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        raise SourceError(
            f"{origin}, row {start + i + 1}, column 'split': {values[i].as_py()!r} in a {part} file "
            f"(in a folder the file decides the part; a split column must agree with it)"
        )


def pick(columns: Iterable[str], wanted: tuple[str, ...], origin: str | None = None,
         what: str = "") -> str | None:
    """The first of ``wanted`` among ``columns``; if none is there: None, or, given the
    ``origin`` the columns came from, a ``SourceError`` saying no ``what`` column was found."""
    columns = list(columns)
    found = next((c for c in wanted if c in columns), None)
    if found is None and origin is not None:
        raise SourceError(
            f"{origin}: no {what} column (looked for {', '.join(map(repr, wanted))}; "
            f"found {', '.join(map(repr, columns)) or 'no columns'})"
        )
    return found


def label_value(v: object) -> int:
    """0 or 1 from 0/1, a bool, a whole float, or pos/neg/positive/negative; else ValueError."""
    if isinstance(v, bool):
        v = int(v)
    elif isinstance(v, str):
        v = LABEL_NAMES.get(v.strip().lower(), v)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) or v not in (0, 1):
        raise ValueError(f"label {v!r} is not 0/1 or one of pos/neg/positive/negative")
    return v


def is_missing_label(v: Any) -> bool:
    """Null, NaN, -1, or a text cell that is empty or ``-1``."""
    return (v is None or v == -1 or (isinstance(v, float) and math.isnan(v))
            or (isinstance(v, str) and v.strip() in ("", "-1")))


def labels(values: Sequence[Any], column: str, origin: str, rows: Sequence[int] | None = None,
           *, missing: Missing) -> list[int | None]:
    """0/1 for each raw label; a missing one is refused (``missing="error"``) or None
    (``missing="none"``). ``rows``: the 0-based file row of each value (default: its position)."""
    out: list[int | None] = []
    for i, v in enumerate(values):
        if missing == "none" and is_missing_label(v):
            out.append(None)
            continue
        try:
            out.append(label_value(v))
        except ValueError:
            row = (rows[i] if rows is not None else i) + 1
            raise SourceError(f"{origin}, row {row}, column {column!r}: label {v!r} is not "
                              "0/1 or one of pos/neg/positive/negative") from None
    return out


def make_ids(given: Sequence[str | None] | None, splits: Sequence[str], counters: dict[str, int]) -> list[str]:
    """Each row's id: the source's (``given``, None for a source without ids), else
    ``<split>-<n>``, n being the row's place in its split; ``counters`` holds each split's rows so
    far and is advanced by every row, with an id or without."""
    ids = list(given) if given is not None else [None] * len(splits)
    for j, split in enumerate(splits):
        if ids[j] is None:
            ids[j] = f"{split}-{counters[split]}"
        counters[split] += 1
    return ids


def line_id(n: int) -> str:
    """The id of a text file's line ``n`` (from 1)."""
    return f"line-{n}"
