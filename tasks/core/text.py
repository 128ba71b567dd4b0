"""Text → token ids, the part of the pipeline a served model carries: the tokenizer settings,
spaCy tokenization and the vocabulary.

No Prefect and no other stage module is imported here: the registered model ships this module
with ``inference`` and ``model`` as its code (``sentiflow.tasks.scoring.serving``), so what scores a
review in ``mlflow models serve`` is the code that tokenized the training data.

``<br />`` tags. IMDb reviews mark paragraphs with ``<br /><br />``. Left in, spaCy splits each
into ``<``, ``br`` and ``/><br`` pieces that teach the model nothing about sentiment and make
"br" one of the most frequent words. By default (``html_breaks="space"``) every ``<br>``,
``<br/>`` or ``<br />`` tag is replaced by a space before tokenizing; ``"keep"`` leaves the text
as it is, as the seed did. Whitespace-only tokens (from double spaces or newlines) are dropped.

A ``Vocab`` maps tokens to ids: specials first (``<unk>`` = 0, ``<pad>`` = 1), unknown tokens
to ``<unk>``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
UNK, PAD = "<unk>", "<pad>"
SPECIALS = (UNK, PAD)
VOCAB_SCHEMA = pa.schema([("token", pa.string()), ("id", pa.int32()), ("count", pa.int64())])


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lowercase: bool = Field(True, description="Lower-case every token (the seed's setting)")
    html_breaks: Literal["space", "keep"] = Field(
        "space", description="'space': replace <br /> tags by a space; 'keep': tokenize them"
    )


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    """spaCy's English tokenizer, imported on first use: importing spaCy takes seconds (and torch
    with it, through thinc), which a run that tokenizes nothing never pays."""
    import spacy

    return spacy.blank("en").tokenizer


def spacy_version() -> str:
    """spaCy's version without importing it (it is part of the tokenize stage's key)."""
    from importlib.metadata import version

    return version("spacy")


def clean(text: str, params: TokenizeParams) -> str:
    return BR_TAG.sub(" ", text) if params.html_breaks == "space" else text


def tokenize_text(text: str, params: TokenizeParams = TokenizeParams()) -> list[str]:
    """The reference: one review, the plain spaCy loop. ``tokenize_texts`` gives the same."""
    doc = _tokenizer()(clean(text, params))
    return [t.lower_ if params.lowercase else t.text for t in doc if not t.is_space]


def tokenize_texts(texts: list[str], params: TokenizeParams = TokenizeParams()) -> pa.ListArray:
    """Many reviews → ``list<string>``, through token hashes (``Doc.to_array``): each distinct
    string is looked up once per batch instead of once per token."""
    from spacy.attrs import IS_SPACE, LOWER, ORTH

    tok = _tokenizer()
    attr = LOWER if params.lowercase else ORTH
    hashes, offsets = [], [0]
    for text in texts:
        arr = tok(clean(text, params)).to_array([attr, IS_SPACE])
        keep = arr[arr[:, 1] == 0, 0]
        hashes.append(keep)
        offsets.append(offsets[-1] + len(keep))
    flat = np.concatenate(hashes) if hashes else np.array([], dtype=np.uint64)
    uniq, inverse = np.unique(flat, return_inverse=True)
    strings = tok.vocab.strings
    values = pa.array([strings[int(h)] for h in uniq], type=pa.string()).take(pa.array(inverse))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)



class Vocab:
    """Token ↔ id. ``vocab(["a", "film"]) -> [ids]``; unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: list[str], counts: list[int] | None = None):
        self.itos = list(tokens)
        self.counts = counts
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.unk_id, self.pad_id = self.stoi[UNK], self.stoi[PAD]
        self._values = pa.array(self.itos, type=pa.string())

    def __len__(self) -> int:
        return len(self.itos)

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def encode(self, tokens: pa.ListArray | pa.ChunkedArray) -> pa.ListArray:
        """``list<string>`` → ``list<int32>`` at Arrow speed (a hash lookup per token, in C)."""
        if isinstance(tokens, pa.ChunkedArray):
            tokens = tokens.combine_chunks() if tokens.num_chunks != 1 else tokens.chunk(0)
        offsets = tokens.offsets
        flat = tokens.values.slice(offsets[0].as_py(), offsets[-1].as_py() - offsets[0].as_py())
        ids = pc.fill_null(pc.index_in(flat, value_set=self._values), self.unk_id)
        return pa.ListArray.from_arrays(pc.subtract(offsets, offsets[0]), ids.cast(pa.int32()))

    @classmethod
    def read(cls, path: Path) -> "Vocab":
        t = pq.read_table(path).sort_by("id")
        ids = t.column("id").to_pylist()
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: ids are not 0..{len(ids) - 1}")
        return cls(t.column("token").to_pylist(), t.column("count").to_pylist())

    def write(self, path: Path) -> None:
        counts = self.counts or [0] * len(self)
        pq.write_table(pa.table([self.itos, list(range(len(self))), counts], schema=VOCAB_SCHEMA), path)
