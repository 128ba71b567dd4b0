"""Inference: raw review values or token ids in; status, P(positive) and OOV share out.

This module holds the prediction forward pass (``predict_logits``), the padded-token batching it
uses (``Encoded``, ``length_batches``), the accuracy helper, ``Scorer`` (vocabulary + tokenizer
settings + network) and ``score_texts``: raw values → status, P(positive) and OOV share per row,
with the row rules of ``sentiflow.tasks.core.rows``; ``sentiflow score``, ``sentiflow predict``
and the served model all answer through it (the score stage through ``Scorer.judge``, on the
token ids its worker processes make). Selection, scoring and the served model import it;
training imports it for evaluation; it imports nothing of training, of the stage store or of
Prefect. The registered model ships ``sentiflow.tasks.core`` as its code (see
``sentiflow.tasks.scoring.serving``), so a change to the training loop changes no score key.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.rows import (
    OK,
    checked,
    cut_statuses,
    in_domain,
    oov_counts,
    oov_shares,
)
from sentiflow.tasks.core.text import (
    MAX_REVIEW_CHARS,
    TokenizeParams,
    Vocab,
    char_budget,
    tokenize_texts,
)

# Padded tokens per evaluation batch at most: bounds memory whatever the review lengths.
MAX_BATCH_TOKENS = 1 << 16


@dataclass
class Encoded:
    """Token ids of many reviews: one flat array plus offsets (no per-review Python objects).

    ``flat`` may be a memory-mapped file (``from_shards(..., mmap_dir=...)``): then memory holds
    12 bytes per review (offset and label) and the ids are paged in as batches read them."""

    flat: np.ndarray  # int32 (as stored) or int64, all ids; read only
    offsets: np.ndarray  # int64, len n + 1
    labels: np.ndarray  # float32, len n
    ids: list[str]  # review ids; empty where they were not read (the memory-mapped layout)

    @classmethod
    def from_table(cls, table: pa.Table, max_len: int | None = None) -> Encoded:
        """Columns ``label``, ``ids`` and, when present, ``id``; the ids are not copied."""
        lists = table.column("ids").combine_chunks()  # one ListArray, also for zero chunks
        offsets = lists.offsets.to_numpy().astype(np.int64)
        flat = lists.values.to_numpy()[offsets[0]:offsets[-1]]
        offsets = offsets - offsets[0]
        enc = cls(flat, offsets, table.column("label").to_numpy().astype(np.float32),
                  table.column("id").to_pylist() if "id" in table.column_names else [])
        return enc.truncated(max_len) if max_len else enc

    @classmethod
    def from_shards(cls, shards: Sequence[Path], max_len: int | None = None,
                    mmap_dir: Path | str | None = None) -> Encoded:
        """Encoded Parquet shards (``id``, ``label``, ``ids``), in order, as one, read a record
        batch at a time. With ``mmap_dir``, the token ids go to an unnamed temporary file in that
        folder (gone when the last reference to ``flat`` is) and are memory-mapped; the review
        ids are not read."""
        columns = ["label", "ids"] if mmap_dir is not None else ["id", "label", "ids"]
        file = tempfile.TemporaryFile(dir=mmap_dir) if mmap_dir is not None else None
        flats, lengths, labels, ids = [], [], [], []
        for path in shards:
            for chunk in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns):
                part = cls.from_table(pa.Table.from_batches([chunk]), max_len)
                lengths.append(part.lengths)
                labels.append(part.labels)
                ids += part.ids
                if file is not None:
                    file.write(part.flat.astype(np.int32, copy=False).tobytes())
                else:
                    flats.append(part.flat)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if file is None:
            flat = np.concatenate(flats) if flats else np.zeros(0, np.int32)
        else:
            with file:
                file.flush()
                flat = np.memmap(file, np.int32, "r", shape=(int(offsets[-1]),)) if offsets[-1] \
                    else np.zeros(0, np.int32)
        return cls(flat, offsets, np.concatenate(labels) if labels else np.zeros(0, np.float32), ids)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def truncated(self, max_len: int) -> Encoded:
        """Keep the first ``max_len`` ids of each review."""
        lengths = self.lengths
        index, within = _spans(self.offsets[:-1], lengths)
        kept = np.minimum(lengths, max_len)
        return Encoded(self.flat[index[within < max_len]],
                       np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), self.labels, self.ids)

    def subset(self, keep: np.ndarray) -> Encoded:
        """The rows where ``keep`` (boolean, one per row) is true, in order."""
        keep = np.asarray(keep, bool)
        if keep.all():
            return self
        lengths = self.lengths[keep]
        index, _ = _spans(self.offsets[:-1][keep], lengths)
        return Encoded(self.flat[index], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                       self.labels[keep], [i for i, k in zip(self.ids, keep) if k] if self.ids else [])

    def batch(self, rows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows → (text [T, B] padded with ``pad_id``, lengths [B], labels [B]).

        Empty reviews get length 1 (one pad token), so every series can be packed."""
        lengths = np.maximum(self.lengths[rows], 1)
        T = int(lengths.max())
        text = np.full((len(rows), T), pad_id, dtype=np.int64)
        for j, r in enumerate(rows):
            s, e = self.offsets[r], self.offsets[r + 1]
            text[j, : e - s] = self.flat[s:e]
        return (torch.from_numpy(text.T.copy()), torch.from_numpy(lengths),
                torch.from_numpy(self.labels[rows]))


def _spans(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows that begin at ``starts`` in a flat array and have ``lengths``: each of their ids'
    index in the flat array, and its place within its row."""
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within, within


def length_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Row indices in length order, cut into batches of at most ``batch_size`` rows and (when
    given) at most ``max_tokens`` padded tokens, so one very long review (a 1 MB review is
    ~200,000 tokens) runs in a small batch instead of padding 255 others to its length. A row
    longer than ``max_tokens`` gets a batch of its own. For evaluation and scoring."""
    order = np.argsort(lengths, kind="stable")
    return [order[start:end] for start, end in cuts(lengths[order], batch_size, max_tokens)]


def cuts(sorted_lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive batches over rows sorted by ascending length: at most
    ``batch_size`` rows and (when given) ``max_tokens`` padded tokens each (rows × the last
    row's length; an empty row counts 1). A row longer than ``max_tokens`` gets a batch alone."""
    n = len(sorted_lengths)
    if max_tokens is None:
        return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    padded = np.maximum(sorted_lengths, 1).tolist()
    out, start = [], 0
    while start < n:
        end = start + 1
        while end < n and end - start < batch_size and (end - start + 1) * padded[end] <= max_tokens:
            end += 1
        out.append((start, end))
        start = end
    return out


# -- the forward pass -----------------------------------------------------------------------------

def forward_fn(model: SentimentRNN, device: torch.device, path: str = "auto") -> Callable:
    """The model's packed ``forward`` or its unpacked ``forward_fast`` (auto: fast on the CPU)."""
    fast = path == "fast" or (path == "auto" and device.type == "cpu")
    return model.forward_fast if fast else model.forward


def autocast(device: torch.device):
    """float16 autocast on CUDA; a no-op context on the CPU."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)


def predict_logits(model: nn.Module, data: Encoded, batch_size: int, forward: Callable,
                   device: torch.device, pad_id: int, max_tokens: int | None = MAX_BATCH_TOKENS) -> torch.Tensor:
    """One logit per row of ``data``, in its own order (batches of similar lengths)."""
    model.eval()
    logits = torch.zeros(len(data))
    with torch.inference_mode():
        for rows in length_batches(data.lengths, batch_size, max_tokens):
            text, lengths, _ = data.batch(rows, pad_id)
            with autocast(device):
                logits[torch.from_numpy(rows)] = forward(text.to(device), lengths).float().cpu()
    return logits


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(((probs > 0.5) == (labels > 0.5)).mean()) if len(labels) else 0.0


# -- text in, probabilities out -------------------------------------------------------------------

def token_ids(texts: Sequence[str], vocab: Vocab, tokenize: TokenizeParams,
              max_chars: int = MAX_REVIEW_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """Texts → the ids of their whole token lists, each text cut to ``max_chars`` first: (flat
    ids, int32; offsets, int64, n + 1)."""
    ids = vocab.encode(tokenize_texts(list(texts), tokenize, max_chars))
    return ids.values.to_numpy(zero_copy_only=False), ids.offsets.to_numpy()


@dataclass
class Judged:
    """Rows whose ``ok`` ones were tokenized whole, judged (``Scorer.judge``): the final status
    and OOV share of every row, the lengths and ``<unk>`` counts of the tokenized rows (what drift
    profiles), and the token ids of the rows to score, in order, cut to the model's ``max_len``."""

    statuses: list[str]
    oov_share: np.ndarray  # float64 per row; NaN where not tokenized or without a token
    lengths: np.ndarray  # per tokenized row
    unk: np.ndarray  # per tokenized row
    to_score: Encoded  # the rows that stay ok


class Scorer:
    """Vocabulary, tokenizer settings and network: review text → P(positive). A review is read
    up to ``max_chars`` characters (``char_budget(max_len)``)."""

    def __init__(self, net: SentimentRNN, vocab: Vocab, tokenize: TokenizeParams,
                 max_len: int | None = None, batch_size: int = 256):
        self.net, self.vocab, self.tokenize, self.max_len = net.eval(), vocab, tokenize, max_len
        self.batch_size = batch_size

    @property
    def max_chars(self) -> int:
        return char_budget(self.max_len)

    @classmethod
    def from_files(cls, config_file: Path, vocab_file: Path, weights_file: Path) -> Scorer:
        """``config`` (JSON: model, tokenize, max_len), ``vocab`` (Parquet), ``weights`` (a
        state dict, loaded with ``weights_only=True``: nothing is unpickled)."""
        cfg = json.loads(Path(config_file).read_text())
        vocab = Vocab.read(Path(vocab_file))
        net = SentimentRNN(len(vocab), ModelParams(**cfg["model"]), pad_id=vocab.pad_id)
        net.load_state_dict(torch.load(weights_file, weights_only=True, map_location="cpu"))
        return cls(net, vocab, TokenizeParams(**cfg["tokenize"]), cfg.get("max_len"))

    def judge(self, statuses: Sequence[str], flat: np.ndarray, offsets: np.ndarray,
              max_oov: float | None = None) -> Judged:
        """``statuses`` of raw values (``status_of``) and the token ids of the ``ok`` ones (whole
        reviews: ``flat``, ``offsets``) → their OOV shares, the ``max_oov`` cut (``in_domain``:
        a row past it becomes ``out_of_domain``) and what is left to score."""
        lengths = np.diff(offsets)
        unk = oov_counts(flat, offsets, self.vocab.unk_id)
        share = oov_shares(lengths, unk)
        keep = in_domain(share, max_oov)
        oov = np.full(len(statuses), np.nan)
        oov[[i for i, s in enumerate(statuses) if s == OK]] = share
        data = Encoded(flat, offsets, np.zeros(len(offsets) - 1, np.float32), []).subset(keep)
        return Judged(cut_statuses(statuses, keep), oov, lengths, unk,
                      data.truncated(self.max_len) if self.max_len else data)

    def predict_encoded(self, data: Encoded) -> np.ndarray:
        return torch.sigmoid(self.logits_encoded(data)).numpy()

    def logits_encoded(self, data: Encoded) -> torch.Tensor:
        """[n] the network's logit per row of ``data`` (on the CPU)."""
        device = next(self.net.parameters()).device
        return predict_logits(self.net, data, self.batch_size, forward_fn(self.net, device), device,
                              self.vocab.pad_id)

    def predict_proba(self, texts: Sequence[Any]) -> np.ndarray:
        """P(positive) per text (float64); NaN for a row that is not scored (``score_texts``:
        null, empty or not text)."""
        return score_texts(self, texts)[1]


def score_texts(scorer: Scorer, values: Sequence[Any], max_oov: float | None = None,
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Raw values (str, UTF-8 bytes, None, NaN, numbers, anything) → per row its status
    (``sentiflow.tasks.core.rows``), P(positive) (float64, NaN where it is not ``ok``) and OOV
    share (float64, NaN where it was not tokenized or has no token). The one path from a raw
    value to a scored row: ``sentiflow score`` applies ``Scorer.judge`` the same way to the token
    ids its worker processes make, ``sentiflow predict`` and the served model call this. A text
    longer than ``scorer.max_chars`` is judged on its cut (``checked``)."""
    values = list(values)
    statuses, texts, _ = checked(values, scorer.max_chars)
    flat, offsets = token_ids(texts, scorer.vocab, scorer.tokenize, scorer.max_chars)
    judged = scorer.judge(statuses, flat, offsets.astype(np.int64), max_oov)
    probs = np.full(len(values), np.nan)
    if len(judged.to_score):
        probs[[i for i, s in enumerate(judged.statuses) if s == OK]] = scorer.predict_encoded(judged.to_score)
    return judged.statuses, probs, judged.oov_share
