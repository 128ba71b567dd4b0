"""Inference: token ids or review text in, P(positive) out.

This module holds the prediction forward pass (``predict_logits``), the padded-token batching it
uses (``Encoded``, ``length_batches``), the accuracy helper, and ``Scorer`` (vocabulary +
tokenizer settings + network: text in, probabilities out). Selection, scoring and the served
model import it; training imports it for evaluation; it imports nothing of training, of the
stage store or of Prefect. The registered model ships this module, ``text`` and ``model`` as its
code (see ``sentiflow.tasks.serving``), so a change to the training loop changes no score key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from sentiflow.tasks.model import ModelParams, SentimentRNN
from sentiflow.tasks.text import TokenizeParams, Vocab, tokenize_texts

# Padded tokens per evaluation batch at most: bounds memory whatever the review lengths.
MAX_BATCH_TOKENS = 1 << 16


@dataclass
class Encoded:
    """Token ids of many reviews: one flat array plus offsets (no per-review Python objects)."""

    flat: np.ndarray  # int64, all ids
    offsets: np.ndarray  # int64, len n + 1
    labels: np.ndarray  # float32, len n
    ids: list[str]

    @classmethod
    def from_table(cls, table: pa.Table, max_len: int | None = None) -> Encoded:
        lists = table.column("ids").combine_chunks()  # one ListArray, also for zero chunks
        offsets = lists.offsets.to_numpy().astype(np.int64)
        flat = lists.values.to_numpy().astype(np.int64)[offsets[0]:]
        offsets = offsets - offsets[0]
        enc = cls(flat, offsets, table.column("label").to_numpy().astype(np.float32),
                  table.column("id").to_pylist())
        return enc.truncated(max_len) if max_len else enc

    @classmethod
    def from_shards(cls, shards: Sequence[Path], max_len: int | None = None) -> Encoded:
        """Encoded Parquet shards (``id``, ``label``, ``ids``), in order, as one."""
        columns = ["id", "label", "ids"]
        return cls.from_table(pa.concat_tables(pq.read_table(p, columns=columns) for p in shards), max_len)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def truncated(self, max_len: int) -> Encoded:
        """Keep the first ``max_len`` ids of each review."""
        lengths = np.minimum(self.lengths, max_len)
        keep = np.concatenate([np.arange(s, s + n) for s, n in zip(self.offsets[:-1], lengths)]) \
            if len(self) else np.array([], np.int64)
        return Encoded(self.flat[keep], np.concatenate([[0], np.cumsum(lengths)]), self.labels, self.ids)

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


def length_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Row indices in length order, cut into batches of at most ``batch_size`` rows and (when
    given) at most ``max_tokens`` padded tokens, so one very long review (a 1 MB review is
    ~200,000 tokens) runs in a small batch instead of padding 255 others to its length. A row
    longer than ``max_tokens`` gets a batch of its own. For evaluation and scoring."""
    order = np.argsort(lengths, kind="stable")
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    padded = np.maximum(lengths[order], 1)
    batches, start = [], 0
    while start < len(order):
        # sorted ascending: a batch [start, end) is padded to padded[end - 1]
        end = start + 1
        while end < len(order) and end - start < batch_size and (end - start + 1) * padded[end] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


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

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) per text (float64); NaN where the text is blank or whitespace only, as
        ``sentiflow score`` gives such a row the status ``empty`` and no probability."""
        texts = list(texts)
        out = np.full(len(texts), np.nan)
        ok = [i for i, t in enumerate(texts) if not is_blank(t)]
        if ok:
            out[ok] = self.predict_encoded(self.encode([texts[i] for i in ok]))
        return out
