"""Training batches: length-bucketed, shuffled batches of padded tables.

Batches are built like the seed's ``BucketIterator``: shuffle, cut into pools of many batches,
sort each pool by length, cut it into batches, shuffle the batches. Padding shrinks to a few
percent while every epoch still sees a new order. The order is a function of (seed, epoch), so a
resumed training sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sentiflow.tasks.inference import Encoded, length_batches


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
