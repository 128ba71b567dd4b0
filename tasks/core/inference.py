"""Inference: token ids or review text in, P(positive) out.

This module holds the prediction forward pass (``predict_logits``), the padded-token batching it
uses (``Encoded``, ``length_batches``), the accuracy helper, and ``Scorer`` (vocabulary +
tokenizer settings + network: text in, probabilities out). Selection, scoring and the served
model import it; training imports it for evaluation; it imports nothing of training, of the
stage store or of Prefect. The registered model ships this module, ``text`` and ``model`` as its
code (see ``sentiflow.tasks.scoring.serving``), so a change to the training loop changes no score key.
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
from sentiflow.tasks.core.text import TokenizeParams, Vocab, tokenize_texts

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

def is_blank(text: Any) -> bool:
    """A review with nothing to score: not a string, or only whitespace."""
    return not isinstance(text, str) or not text.strip()


class Scorer:
    """Vocabulary, tokenizer settings and network: review text → P(positive)."""

    def __init__(self, net: SentimentRNN, vocab: Vocab, tokenize: TokenizeParams,
                 max_len: int | None = None, batch_size: int = 256):
        self.net, self.vocab, self.tokenize, self.max_len = net.eval(), vocab, tokenize, max_len
        self.batch_size = batch_size

    @classmethod
    def from_files(cls, config_file: Path, vocab_file: Path, weights_file: Path) -> Scorer:
        """``config`` (JSON: model, tokenize, max_len), ``vocab`` (Parquet), ``weights`` (a
        state dict, loaded with ``weights_only=True``: nothing is unpickled)."""
        cfg = json.loads(Path(config_file).read_text())
        vocab = Vocab.read(Path(vocab_file))
        net = SentimentRNN(len(vocab), ModelParams(**cfg["model"]), pad_id=vocab.pad_id)
        net.load_state_dict(torch.load(weights_file, weights_only=True, map_location="cpu"))
        return cls(net, vocab, TokenizeParams(**cfg["tokenize"]), cfg.get("max_len"))

    def encode(self, texts: list[str]) -> Encoded:
        ids = self.vocab.encode(tokenize_texts(texts, self.tokenize))
        table = pa.table({"id": [str(i) for i in range(len(texts))], "label": np.zeros(len(texts), np.int8),
                          "ids": ids})
        return Encoded.from_table(table, self.max_len)

    def predict_encoded(self, data: Encoded) -> np.ndarray:
        device = next(self.net.parameters()).device
        logits = predict_logits(self.net, data, self.batch_size, forward_fn(self.net, device), device,
                                self.vocab.pad_id)
        return torch.sigmoid(logits).numpy()

    def predict_with_oov(self, texts: Sequence[str], max_oov: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P(positive), OOV share) per text, float64: the OOV share is the share of the whole
        review's tokens outside the vocabulary (``<unk>``). Both NaN for a blank text (the OOV
        share also for one without tokens); the probability NaN where the OOV share exceeds
        ``max_oov`` (``sentiflow score`` gives such a row the status ``out_of_domain``)."""
        texts = list(texts)
        probs, oov = np.full(len(texts), np.nan), np.full(len(texts), np.nan)
        ok = np.array([i for i, t in enumerate(texts) if not is_blank(t)], np.int64)
        if not len(ok):
            return probs, oov
        ids = self.vocab.encode(tokenize_texts([texts[i] for i in ok], self.tokenize))
        offsets = ids.offsets.to_numpy().astype(np.int64)
        flat = ids.values.to_numpy(zero_copy_only=False)
        cum = np.concatenate([[0], np.cumsum(flat == self.vocab.unk_id)])
        lengths = np.diff(offsets)
        with np.errstate(invalid="ignore", divide="ignore"):
            oov[ok] = np.where(lengths > 0, (cum[offsets[1:]] - cum[offsets[:-1]]) / lengths, np.nan)
        keep = ~(oov[ok] > max_oov) if max_oov is not None else np.ones(len(ok), bool)
        data = Encoded(flat, offsets, np.zeros(len(ok), np.float32), []).subset(keep)
        probs[ok[keep]] = self.predict_encoded(data.truncated(self.max_len) if self.max_len else data)
        return probs, oov

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) per text (float64); NaN where the text is blank or whitespace only, as
        ``sentiflow score`` gives such a row the status ``empty`` and no probability."""
        texts = list(texts)
        out = np.full(len(texts), np.nan)
        ok = [i for i, t in enumerate(texts) if not is_blank(t)]
        if ok:
            out[ok] = self.predict_encoded(self.encode([texts[i] for i in ok]))
        return out
