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

A champion that cannot be loaded or scored is reported and kept, never silently displaced.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from sentiflow.storage.settings import FromSetting
from sentiflow.storage.store import StageRef, Store, file_sha256
from sentiflow.tasks.config import Config
from sentiflow.tasks.core.inference import Encoded, Scorer, accuracy
from sentiflow.tasks.core.rows import OK, decoded, status_of
from sentiflow.tasks.data.shards import shards_of
from sentiflow.tasks.scoring.score_sources import open_reviews
from sentiflow.tasks.scoring.serving import ModelError, download_model, resolve_model
from sentiflow.tasks.stage import read_input_token

log = logging.getLogger("sentiflow.gate")


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
class GateRows:
    """Labelled reviews, as raw text (for a model with another vocabulary) and, where the
    challenger's data stages encoded them, as its token ids."""

    on: str
    texts: list[str]
    labels: np.ndarray
    encoded: Encoded | None = None  # the challenger's encoding of the same rows, same order


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


def split_rows(encoded: StageRef, max_len: int | None, with_encoding: bool = True) -> GateRows:
    """The raw reviews behind an encoded part (encode ← tokenize ← an ingest or split part, as
    the gathered parts' manifests record their origin) and, with
    ``with_encoding``, their encoding: the same rows in the same order (tokenize keeps the
    file's order)."""
    tokens, _ = _input(encoded, "tokenize")
    raw, part = _input(tokens, "ingest", "split")
    table = pa.concat_tables(pq.read_table(s.path, columns=["id", "text", "label"]) for s in shards_of(raw, part))
    enc = Encoded.from_shards(encoded.shards(), max_len) if with_encoding else None
    if enc is not None and enc.ids != table.column("id").to_pylist():
        raise ValueError(f"encode {encoded.key}: its rows differ from {raw.stage} {raw.key} {part}")
    return GateRows(f"{part} split {encoded.key}", table.column("text").to_pylist(),
                    table.column("label").to_numpy().astype(np.float32), enc)


def source_rows(source: str) -> GateRows:
    """The labelled, scorable rows of a gate source (its test part when it has one)."""
    texts, labels = [], []
    stream = open_reviews(source, "auto")
    if not stream.labeled:
        raise ValueError(f"gate source {source!r} has no labels: a gate needs labelled reviews")
    for batch in stream.batches:
        for text, label in zip(batch.texts, batch.labels):
            if label is not None and status_of(text) == OK:
                texts.append(decoded(text))
                labels.append(label)
    if not texts:
        raise ValueError(f"gate source {source!r}: no labelled review to score")
    return GateRows(f"source {source}", texts, np.array(labels, np.float32))


# -- the judgement --------------------------------------------------------------------------------

def score_on(scorer: Scorer, rows: GateRows, same_encoding: bool) -> float:
    """Accuracy of ``scorer`` on the rows: on the challenger's encoding where the model encodes
    as it does, else from the raw text with the model's own vocabulary."""
    if same_encoding and rows.encoded is not None:
        return accuracy(scorer.predict_encoded(rows.encoded), rows.labels)
    return accuracy(scorer.predict_proba(rows.texts), rows.labels)


def _encodes_alike(a_vocab: Path, a: Scorer, b_vocab: Path, b: Scorer) -> bool:
    return (file_sha256(a_vocab) == file_sha256(b_vocab) and a.tokenize == b.tokenize
            and a.max_len == b.max_len)


def judge(challenger: Scorer, challenger_vocab: Path, rows: GateRows, champion_uri: str | None,
          margin: float, guard: GateRows | None = None, challenger_acc: float | None = None) -> GateResult:
    """Score the challenger and the champion (``models:/NAME/VERSION``, None when there is
    none) on ``rows`` (and ``guard``, the champion's own rows): promote when the challenger is
    better on ``rows`` by at least ``margin`` and not worse on ``guard``. ``challenger_acc``:
    the challenger's accuracy on ``rows`` when already measured (its ``test_acc``)."""
    if challenger_acc is None:
        challenger_acc = score_on(challenger, rows, True)
    main = Comparison(on=rows.on, rows=len(rows.labels), challenger_acc=challenger_acc)
    if champion_uri is None:
        return GateResult(main=main, promote=True, reason="no champion yet")
    version = champion_uri.rsplit("/", 1)[-1]
    try:
        with tempfile.TemporaryDirectory(prefix="sentiflow-champion-") as tmp:
            files = download_model(resolve_model(champion_uri), Path(tmp))
            champion = Scorer.from_files(files["config"], files["vocab"], files["weights"])
            main.champion_acc = score_on(champion, rows, _encodes_alike(challenger_vocab, challenger,
                                                                        files["vocab"], champion))
            other = None
            if guard is not None:
                other = Comparison(on=guard.on, rows=len(guard.labels),
                                   challenger_acc=score_on(challenger, guard, False),
                                   champion_acc=score_on(champion, guard, False))
    except (ModelError, OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        log.warning("champion version %s cannot be scored (%s): it stays champion", version, e)
        return GateResult(main=main, champion_version=version, promote=False,
                          reason=f"champion version {version} cannot be scored ({e}); kept, not displaced")
    wins = main.challenger_acc > main.champion_acc and main.challenger_acc >= main.champion_acc + margin
    holds = other is None or other.challenger_acc >= other.champion_acc
    reason = (f"challenger {main.challenger_acc:.4f} vs champion {main.champion_acc:.4f} on {main.rows:,} rows "
              f"of {main.on} (margin {margin})")
    if other is not None:
        reason += (f"; on the champion's own {other.on}: {other.challenger_acc:.4f} vs "
                   f"{other.champion_acc:.4f} ({other.rows:,} rows)")
    return GateResult(main=main, guard=other, champion_version=version, promote=wins and holds, reason=reason)


def champion_rows(store: Store, champion_params: dict[str, str], main: GateRows) -> GateRows | None:
    """The champion's own test split (its validation split without one), from the stage keys
    its training run recorded, when it is still valid in ``store`` and is not ``main``'s rows."""
    key = champion_params.get("key.encode_test") or champion_params.get("key.encode_val")
    if not key:
        return None
    ref = store.ref("encode", key)
    if not store.is_valid(ref) or not ref.manifest().get("total_rows") or main.on.endswith(key):
        return None
    # encoded with the champion's vocabulary: both models read the text, so it is not loaded
    return split_rows(ref, None, with_encoding=False)
