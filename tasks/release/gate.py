"""The champion gate: the challenger and the current champion scored on the same rows.

A challenger's best-epoch ``val_acc`` is measured on its own validation split and is the maximum
over its epochs; the champion's on another split. Comparing those means nothing after a data
change. The gate instead scores both models on the same labelled reviews, each model tokenizing
with its own vocabulary:

* with a gate source (``GateParams.source``: any labelled source ``sentiflow score`` reads, its
  test part when it has one), on its rows alone: the challenger must beat the champion there by
  at least ``margin``;
* by default, on the new run's test split (its validation split without a test part): the
  challenger must beat the champion there by at least ``margin``; and, when the champion's own
  test split is still in the store and is other rows, on those too: the challenger must not be
  worse there. A challenger trained on data unlike the champion's, perfect on its own split but
  poor on the reviews the champion was judged on, does not take the alias.

The rows are read, tokenized and scored ``GATE_BATCH_ROWS`` at a time, each model's correct
predictions summed batch by batch: a gate set of millions of rows runs in the memory of a small
one. A champion that is gone (``errors.classify``: its files, its run or the stages of its own
split deleted, or a model that does not load) is reported and kept, never silently displaced;
one that cannot be read for an outage is no verdict at all (``sentiflow.tasks.release.champion``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from sentiflow.storage.settings import FromSetting
from sentiflow.storage.store import StageError, StageRef, Store, file_sha256
from sentiflow.tasks.config import Config
from sentiflow.tasks.core.inference import Encoded, Scorer
from sentiflow.tasks.core.rows import OK, decoded, status_of
from sentiflow.tasks.core.text import MAX_REVIEW_CHARS, char_budget, kept_texts
from sentiflow.tasks.data.shards import shards_of
from sentiflow.tasks.release.errors import ChampionGone, reading
from sentiflow.tasks.scoring.score_sources import open_reviews
from sentiflow.tasks.stage import read_input_token

log = logging.getLogger("sentiflow.gate")

GATE_BATCH_ROWS = 4096  # rows read, tokenized and scored at a time


class GateParams(Config):
    source: Annotated[str | None, FromSetting("gate_source")] = Field(
        None, description="A labelled source to judge challenger and champion on (any source "
                          "`sentiflow score` reads, its test part when it has one); unset: the "
                          "settings' (SENTIFLOW_GATE_SOURCE), else the new run's test split (its "
                          "validation split without a test part)")
    margin: float = Field(0.0, ge=0, lt=1, description="Promote only when the challenger's accuracy "
                                                       "beats the champion's by at least this")


class Comparison(BaseModel):
    on: str  # what the rows are: "test split <key>", "val split <key>", "source <path>"
    rows: int
    challenger_acc: float
    champion_acc: float | None = None  # None: no champion, or it could not be scored


class GateResult(BaseModel):
    main: Comparison  # the gate source, or the new run's split: must win by the margin
    guard: Comparison | None = None  # the champion's own test split: must not lose
    champion_version: str | None = None
    promote: bool
    reason: str

    @property
    def challenger_acc(self) -> float:
        return self.main.challenger_acc

    @property
    def champion_acc(self) -> float | None:
        return self.main.champion_acc

    @classmethod
    def from_tags(cls, t: dict[str, str]) -> GateResult | None:
        """The verdict a version's tags recorded (None for a version judged before the gate)."""
        if "gate.decision" not in t:
            return None

        def comparison(name: str) -> Comparison | None:
            if f"{name}.on" not in t:
                return None
            return Comparison(on=t[f"{name}.on"], rows=int(t[f"{name}.rows"]),
                              challenger_acc=float(t[f"{name}.challenger_acc"]),
                              champion_acc=float(t[f"{name}.champion_acc"]) if t[f"{name}.champion_acc"] else None)

        return cls(main=comparison("gate"), guard=comparison("gate.guard"),
                   champion_version=t["gate.champion_version"] or None,
                   promote=t["gate.decision"] == "promote", reason=t["gate.reason"])

    def tags(self) -> dict[str, str]:
        out = {"gate.decision": "promote" if self.promote else "keep champion", "gate.reason": self.reason,
               "gate.champion_version": self.champion_version or ""}
        for name, c in (("gate", self.main), ("gate.guard", self.guard)):
            if c is not None:
                out.update({f"{name}.on": c.on, f"{name}.rows": str(c.rows),
                            f"{name}.challenger_acc": f"{c.challenger_acc:.6f}",
                            f"{name}.champion_acc": "" if c.champion_acc is None else f"{c.champion_acc:.6f}"})
        return out


@dataclass
class GateBatch:
    """A batch of labelled reviews: raw text (for a model with another vocabulary) and, where
    the challenger's data stages encoded them, its token ids of the same rows, same order."""

    texts: list[str]
    labels: np.ndarray  # float32
    encoded: Encoded | None = None


@dataclass
class GateRows:
    """Labelled reviews, read afresh a batch at a time at each call of ``batches``; ``size``:
    their count where it is known without reading them (a split's manifest)."""

    on: str
    batches: Callable[[], Iterator[GateBatch]]
    size: int | None = None


@dataclass
class Champion:
    """The current champion as the gate judges it: its model (``scorer``, ``vocab``) and its own
    rows (``guard``), or ``problem``: why it is gone (it is then kept and reported)."""

    version: str
    scorer: Scorer | None = None
    vocab: Path | None = None
    guard: GateRows | None = None
    problem: str | None = None


# -- the rows -------------------------------------------------------------------------------------

def _input(ref: StageRef, *stages: str) -> tuple[StageRef, str]:
    """The input of ``ref`` made by one of ``stages``, and the part of it read (from the
    manifest, which records each input as ``stage.input_token`` wrote it)."""
    store = Store(ref.path.parent.parent)
    for token in ref.manifest()["inputs"]:
        name, key, part = read_input_token(token)
        if name in stages:
            return store.ref(name, key), part
    raise ValueError(f"{ref.stage} {ref.key}: no {' or '.join(stages)} input in its manifest")


def _present(ref: StageRef) -> StageRef:
    """``ref``, its files checked present with their recorded sizes (a quick look: no checksums)."""
    problem = Store(ref.path.parent.parent).problem(ref, checksums=False)
    if problem is not None:
        raise StageError(f"{ref.stage} {ref.key}: {problem} ({ref.path})")
    return ref


def _cut(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Record batches cut again into tables of ``size`` rows (the last one shorter): two files
    of the same rows are then cut alike, whatever their row groups."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _read(paths: list[Path], columns: list[str], size: int) -> Iterator[pa.Table]:
    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=size, columns=columns)

    return _cut(batches(), size)


def split_rows(encoded: StageRef, max_len: int | None, with_encoding: bool = True,
               batch_rows: int = GATE_BATCH_ROWS) -> GateRows:
    """The raw reviews behind an encoded part (encode ← tokenize ← an ingest or split part, as
    the gathered parts' manifests record their origin) and, with ``with_encoding``, their
    encoding: the same rows in the same order (tokenize keeps the file's order), checked batch
    by batch by review id. The stages are found and checked present here; the rows are read
    when ``batches`` is called."""
    tokens, _ = _input(encoded, "tokenize")
    raw, part = _input(_present(tokens), "ingest", "split")
    shards = [s.path for s in shards_of(_present(raw), part)]
    encoded_shards = encoded.shards() if with_encoding else None
    max_chars = char_budget(max_len)  # a long review is read up to that, never whole
    origin = f"{raw.stage} {raw.key} {part}"

    def batches() -> Iterator[GateBatch]:
        texts = _read(shards, ["id", "text", "label"], batch_rows)
        codes = _read(encoded_shards, ["id", "label", "ids"], batch_rows) if encoded_shards is not None else None
        start = 0
        for table in texts:
            enc = None
            if codes is not None:
                code = next(codes, None)
                if code is None or code.column("id").to_pylist() != table.column("id").to_pylist():
                    raise ValueError(f"encode {encoded.key}: its rows differ from {origin} "
                                     f"(rows {start + 1:,} to {start + table.num_rows:,})")
                enc = Encoded.from_table(code, max_len)
            start += table.num_rows
            yield GateBatch(kept_texts(table.column("text"), max_chars),
                            table.column("label").to_numpy().astype(np.float32), enc)
        if codes is not None and next(codes, None) is not None:
            raise ValueError(f"encode {encoded.key}: it has more rows than {origin} ({start:,})")

    return GateRows(f"{part} split {encoded.key}", batches, encoded.manifest().get("total_rows"))


def source_rows(source: str, batch_rows: int = GATE_BATCH_ROWS, max_chars: int = MAX_REVIEW_CHARS) -> GateRows:
    """The labelled, scorable rows of a gate source (its test part when it has one), read when
    ``batches`` is called: a source without labels, or without a labelled review, is a
    ``ValueError`` then. A review is read up to ``max_chars`` + 1 characters (the challenger's
    character budget: each model cuts it again to its own, ``Scorer.max_chars``)."""

    def batches() -> Iterator[GateBatch]:
        stream = open_reviews(source, "auto", batch_rows, max_chars)
        if not stream.labeled:
            raise ValueError(f"gate source {source!r} has no labels: a gate needs labelled reviews")
        found = 0
        for batch in stream.batches:
            kept = [(decoded(text), label) for text, label in zip(batch.texts, batch.labels)
                    if label is not None and status_of(text) == OK]
            if kept:
                found += len(kept)
                yield GateBatch([t for t, _ in kept], np.array([y for _, y in kept], np.float32))
        if not found:
            raise ValueError(f"gate source {source!r}: no labelled review to score")

    return GateRows(f"source {source}", batches)


def champion_rows(store: Store, champion_params: dict[str, str], main: GateRows) -> GateRows | None:
    """The champion's own test split (its validation split without one), from the stage keys
    its training run recorded, when it is still valid in ``store`` and is not ``main``'s rows.
    A split whose encoding is there but whose reviews are not (a stage behind it pruned) is a
    ``StageError`` or ``FileNotFoundError``: the champion's rows are gone."""
    key = champion_params.get("key.encode_test") or champion_params.get("key.encode_val")
    if not key:
        return None
    ref = store.ref("encode", key)
    if not store.is_valid(ref) or not ref.manifest().get("total_rows") or main.on.endswith(key):
        return None
    # encoded with the champion's vocabulary: both models read the text, so it is not loaded
    return split_rows(ref, None, with_encoding=False)


# -- the scores -----------------------------------------------------------------------------------

@dataclass
class Tally:
    """Correct predictions and rows, summed batch by batch."""

    correct: int = 0
    rows: int = 0

    def add(self, probs: np.ndarray, labels: np.ndarray) -> None:
        self.correct += int(((probs > 0.5) == (labels > 0.5)).sum())
        self.rows += len(labels)

    @property
    def accuracy(self) -> float:
        """As ``inference.accuracy`` over all the rows at once (0.0 without rows)."""
        return self.correct / self.rows if self.rows else 0.0


def _predict(scorer: Scorer, batch: GateBatch, same_encoding: bool) -> np.ndarray:
    """On the challenger's encoding where the model encodes as it does, else from the raw text
    with the model's own vocabulary."""
    if same_encoding and batch.encoded is not None:
        return scorer.predict_encoded(batch.encoded)
    return scorer.predict_proba(batch.texts)


def score_on(scorer: Scorer, rows: GateRows, same_encoding: bool) -> Tally:
    """One model's correct predictions on the rows, a batch at a time."""
    tally = Tally()
    for batch in rows.batches():
        tally.add(_predict(scorer, batch, same_encoding), batch.labels)
    return tally


def _main_pass(rows: GateRows, challenger: Scorer | None, champion: Scorer | None,
               alike: bool) -> tuple[Tally, Tally, str | None]:
    """One read of the rows: the challenger's tally (when given) and the champion's (when
    given), and why the champion could not be scored (None when it could). An error of the
    rows or the challenger is raised; the champion's, when it is gone, stops its tally only."""
    mine, theirs, problem = Tally(), Tally(), None
    for batch in rows.batches():
        if challenger is not None:
            mine.add(_predict(challenger, batch, True), batch.labels)
        if champion is not None and problem is None:
            try:
                with reading("its model"):
                    theirs.add(_predict(champion, batch, alike), batch.labels)
            except ChampionGone as e:
                problem = str(e)
                if challenger is None:
                    break
    return mine, theirs, problem


def _guard_pass(guard: GateRows, challenger: Scorer, champion: Scorer) -> Comparison:
    """Both models on the champion's own rows, from the raw text. Reading the rows and scoring
    the champion are the champion's side: there, a gone error is a ``ChampionGone``."""
    mine, theirs = Tally(), Tally()
    batches = guard.batches()  # a generator: read at each next()
    while True:
        with reading(f"its own {guard.on}"):
            batch = next(batches, None)
        if batch is None:
            break
        mine.add(_predict(challenger, batch, False), batch.labels)
        with reading("its model"):
            theirs.add(_predict(champion, batch, False), batch.labels)
    return Comparison(on=guard.on, rows=mine.rows, challenger_acc=mine.accuracy, champion_acc=theirs.accuracy)


def _encodes_alike(a_vocab: Path, a: Scorer, b_vocab: Path, b: Scorer) -> bool:
    return (file_sha256(a_vocab) == file_sha256(b_vocab) and a.tokenize == b.tokenize
            and a.max_len == b.max_len)


def _kept(main: Comparison, version: str, problem: str) -> GateResult:
    log.warning("champion version %s cannot be scored (%s): it stays champion", version, problem)
    return GateResult(main=main, champion_version=version, promote=False,
                      reason=f"champion version {version} cannot be scored ({problem}); kept, not displaced")


def judge(challenger: Scorer, challenger_vocab: Path, rows: GateRows, champion: Champion | None,
          margin: float, challenger_acc: float | None = None) -> GateResult:
    """Score the challenger and the champion (None when there is none) on ``rows`` (and on the
    champion's own rows, ``champion.guard``): promote when the challenger is better on ``rows``
    by at least ``margin`` and not worse on the guard. ``challenger_acc``: the challenger's
    accuracy on ``rows`` when already measured (its ``test_acc``). A champion with a
    ``problem``, or one that turns out gone while scored, is kept and reported."""
    theirs = champion.scorer if champion is not None and champion.problem is None else None
    alike = theirs is not None and _encodes_alike(challenger_vocab, challenger, champion.vocab, theirs)
    mine = challenger if challenger_acc is None else None
    mine_tally, theirs_tally, problem, count = Tally(), Tally(), None, rows.size or 0
    if mine is not None or theirs is not None:
        mine_tally, theirs_tally, problem = _main_pass(rows, mine, theirs, alike)
        if mine is not None or problem is None:  # a complete count (a champion gone stops its own)
            count = (mine_tally if mine is not None else theirs_tally).rows
    main = Comparison(on=rows.on, rows=count,
                      challenger_acc=mine_tally.accuracy if challenger_acc is None else challenger_acc)
    if champion is None:
        return GateResult(main=main, promote=True, reason="no champion yet")
    problem = champion.problem or problem
    other = None
    if problem is None and champion.guard is not None:
        try:
            other = _guard_pass(champion.guard, challenger, theirs)
        except ChampionGone as e:
            problem = str(e)
    if problem is not None:
        return _kept(main, champion.version, problem)
    main.champion_acc = theirs_tally.accuracy
    wins = main.challenger_acc > main.champion_acc and main.challenger_acc >= main.champion_acc + margin
    holds = other is None or other.challenger_acc >= other.champion_acc
    reason = (f"challenger {main.challenger_acc:.4f} vs champion {main.champion_acc:.4f} on {main.rows:,} rows "
              f"of {main.on} (margin {margin})")
    if other is not None:
        reason += (f"; on the champion's own {other.on}: {other.challenger_acc:.4f} vs "
                   f"{other.champion_acc:.4f} ({other.rows:,} rows)")
    return GateResult(main=main, guard=other, champion_version=champion.version, promote=wins and holds,
                      reason=reason)
