"""Encoded reviews in memory, and length-bucketed, shuffled batches of padded tables.

Batches are built like the seed's ``BucketIterator``: shuffle, cut into pools of many batches,
sort each pool by length, cut it into batches, shuffle the batches. Padding shrinks to a few
percent while every epoch still sees a new order. The order is a function of (seed, epoch), so a
resumed training sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from sentiflow.storage.store import StageRef


@dataclass
class Encoded:
    """Token ids of many reviews: one flat array plus offsets (no per-review Python objects)."""

    flat: np.ndarray  # int64, all ids
    offsets: np.ndarray  # int64, len n + 1
    labels: np.ndarray  # float32, len n
    ids: list[str]

    @classmethod
    def from_table(cls, table: pa.Table, max_len: int | None = None) -> "Encoded":
        lists = table.column("ids").combine_chunks()  # one ListArray, also for zero chunks
        offsets = lists.offsets.to_numpy().astype(np.int64)
        flat = lists.values.to_numpy().astype(np.int64)[offsets[0]:]
        offsets = offsets - offsets[0]
        enc = cls(flat, offsets, table.column("label").to_numpy().astype(np.float32),
                  table.column("id").to_pylist())
        return enc.truncated(max_len) if max_len else enc

    @classmethod
    def read(cls, ref: StageRef, max_len: int | None = None) -> "Encoded":
        return cls.from_table(ref.read_shards(["id", "label", "ids"]), max_len)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def truncated(self, max_len: int) -> "Encoded":
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


def bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                     pool_batches: int = 50, shuffle: bool = True,
                     max_tokens: int | None = None) -> list[np.ndarray]:
    """Row indices of each batch. ``shuffle=False``: plain length order (``length_batches``)."""
    n = len(lengths)
    if not shuffle:
        return length_batches(lengths, batch_size, max_tokens)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    pool = batch_size * pool_batches
    batches = []
    for i in range(0, n, pool):
        chunk = order[i:i + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def iterate(data: Encoded, batch_size: int, pad_id: int, seed: int = 0, epoch: int = 0,
            shuffle: bool = True, max_tokens: int | None = None,
            ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    for rows in bucketed_batches(data.lengths, batch_size, seed, epoch, shuffle=shuffle, max_tokens=max_tokens):
        yield (rows, *data.batch(rows, pad_id))
