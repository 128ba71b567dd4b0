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

Long reviews. Before spaCy sees a review, it is cut to a character budget (``cut_text``):
tokenizing a 1 GB review whole would hold millions of spaCy tokens, and running the network over
them as many activations. The budget is ``char_budget(max_len)``: ``MAX_REVIEW_CHARS`` (100,000
characters, 7x IMDb's longest review of 13,704) without ``max_len`` or for any ``max_len`` up to
6,250 tokens; past that ``CHARS_PER_TOKEN`` (16) characters per kept token. At the cap a review
holds about 20,000 tokens (IMDb: 4.85 characters a token), never more than 100,000: about what
one evaluation batch holds (``inference.MAX_BATCH_TOKENS``, 65,536), so a huge review costs
what an ordinary batch costs. On IMDb's 50,000 reviews the first n tokens never take
more than 12.4 characters a token for n >= 10 (7.0 for n >= 50), so the cut never changes a
token that ``max_len`` keeps; below the cap it changes nothing at all (the OOV share and the drift
profile of every ordinary review stay those of the whole review). The data stages, which do not
know ``max_len``, cut at ``MAX_REVIEW_CHARS``. The cut falls before the last whitespace within
the budget (and before a ``<br`` tag it splits), so every token of the cut text is one the whole
text makes, in the same place.

Offsets are 64-bit (``large_list``, ``large_string``): a batch may hold more than 2^31 tokens or
token characters.

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
OPEN_BR = re.compile(r"<br\s*\Z", re.IGNORECASE)  # a <br /> tag cut in its whitespace, at the end
LAST_SPACE = re.compile(r"\s")  # searched in the reversed text: the last whitespace
# A review's character budget (see the module docstring): about one evaluation batch of tokens
MAX_REVIEW_CHARS = 100_000
CHARS_PER_TOKEN = 16  # characters per kept token past MAX_REVIEW_CHARS (IMDb: <= 12.4 for n >= 10)
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


def char_budget(max_len: int | None) -> int:
    """The characters of a review tokenized for a model that keeps ``max_len`` tokens (None: all):
    ``MAX_REVIEW_CHARS``, or ``CHARS_PER_TOKEN`` per kept token where that is more."""
    return MAX_REVIEW_CHARS if max_len is None else max(MAX_REVIEW_CHARS, CHARS_PER_TOKEN * max_len)


def cut_text(text: str, max_chars: int = MAX_REVIEW_CHARS) -> str:
    """``text`` when it has at most ``max_chars`` characters; else its first ``max_chars``, back
    to the last whitespace (and before a ``<br`` tag that whitespace splits), so that no token is
    made of part of a word: the tokens of the cut text are the first tokens of the whole. A text
    whose first ``max_chars`` hold no whitespace, or only whitespace before it, is cut at
    ``max_chars``. Only ``text[:max_chars + 1]`` is looked at: a reader may keep just that."""
    if len(text) <= max_chars:
        return text
    space = LAST_SPACE.search(text[max_chars::-1])  # the reversed first max_chars + 1 characters
    if space is None:
        return text[:max_chars]
    end = max_chars - space.start()  # text[end] is the last whitespace
    tag = OPEN_BR.search(text, max(0, end - 64), end)
    head = text[:tag.start() if tag else end]
    return head if head and not head.isspace() else text[:max_chars]


def tokenize_text(text: str, params: TokenizeParams = TokenizeParams(),
                  max_chars: int = MAX_REVIEW_CHARS) -> list[str]:
    """The reference: one review (cut to ``max_chars``), the plain spaCy loop. ``tokenize_texts``
    gives the same."""
    doc = _tokenizer()(clean(cut_text(text, max_chars), params))
    return [t.lower_ if params.lowercase else t.text for t in doc if not t.is_space]


def tokenize_texts(texts: list[str], params: TokenizeParams = TokenizeParams(),
                   max_chars: int = MAX_REVIEW_CHARS) -> pa.LargeListArray:
    """Many reviews, each cut to ``max_chars`` (``cut_text``) → ``large_list<large_string>``,
    through token hashes (``Doc.to_array``): each distinct string is looked up once per batch
    instead of once per token."""
    from spacy.attrs import IS_SPACE, LOWER, ORTH

    tok = _tokenizer()
    attr = LOWER if params.lowercase else ORTH
    hashes = []
    lengths = np.zeros(len(texts) + 1, np.int64)
    for i, text in enumerate(texts, 1):
        arr = tok(clean(cut_text(text, max_chars), params)).to_array([attr, IS_SPACE])
        keep = arr[arr[:, 1] == 0, 0]
        hashes.append(keep)
        lengths[i] = len(keep)
    flat = np.concatenate(hashes) if hashes else np.array([], dtype=np.uint64)
    del hashes
    uniq, inverse = np.unique(flat, return_inverse=True)
    del flat  # before the strings are made: memory holds one token-sized array fewer
    strings = tok.vocab.strings
    values = pa.array([strings[int(h)] for h in uniq], type=pa.large_string()).take(pa.array(inverse))
    return pa.LargeListArray.from_arrays(pa.array(np.cumsum(lengths)), values)


def kept_texts(column: pa.Array | pa.ChunkedArray, max_chars: int) -> list:
    """A column of text as Python values, each string longer than ``max_chars`` + 1 characters
    cut to that in Arrow first (what ``cut_text`` looks at), so a 1 GB value is never copied into
    Python. Other values (binary, numbers, nulls) as ``to_pylist`` gives them."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list = []
    for chunk in chunks:
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)) \
                or not pc.any(pc.greater(pc.binary_length(chunk), max_chars + 1)).as_py():
            out += chunk.to_pylist()  # bytes >= characters: none is longer than max_chars + 1
        else:
            out += pc.utf8_slice_codeunits(chunk, 0, max_chars + 1).to_pylist()
    return out



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

    def encode(self, tokens: pa.ListArray | pa.LargeListArray | pa.ChunkedArray,
               ) -> pa.ListArray | pa.LargeListArray:
        """Token lists → id lists (int32) at Arrow speed (a hash lookup per token, in C), with
        offsets as wide as the input's: ``list<string>`` → ``list<int32>`` (what the encode
        stage stores), ``large_list`` (``tokenize_texts``) → ``large_list<int32>``."""
        if isinstance(tokens, pa.ChunkedArray):
            tokens = tokens.combine_chunks() if tokens.num_chunks != 1 else tokens.chunk(0)
        offsets = tokens.offsets
        flat = tokens.values.slice(offsets[0].as_py(), offsets[-1].as_py() - offsets[0].as_py())
        ids = pc.fill_null(pc.index_in(flat, value_set=self._values), self.unk_id)
        lists = pa.LargeListArray if pa.types.is_large_list(tokens.type) else pa.ListArray
        return lists.from_arrays(pc.subtract(offsets, offsets[0]), ids.cast(pa.int32()))

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
