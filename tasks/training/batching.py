"""Training batches: length-bucketed, shuffled, capped by rows and by padded tokens.

Batches are built like the seed's ``BucketIterator``: shuffle, cut into pools of many batches,
sort each pool by length, cut it into batches, shuffle the batches. Padding shrinks to a few
percent while every epoch still sees a new order. A batch holds at most ``batch_size`` reviews
and, when ``max_tokens`` is given, at most that many padded tokens (reviews × the longest), so
the memory of a backward pass is bounded whatever the review lengths: a pool's longest reviews
come in smaller batches. The order is a function of (seed, epoch), so a resumed training sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np

from sentiflow.tasks.core.inference import cuts, length_batches


def bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                     pool_batches: int = 50, shuffle: bool = True,
                     max_tokens: int | None = None) -> list[np.ndarray]:
    """Row indices of each batch. ``shuffle=False``: plain length order (``length_batches``)."""
    if not shuffle:
        return length_batches(lengths, batch_size, max_tokens)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for i in range(0, len(order), pool):
        chunk = order[i:i + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[start:end] for start, end in cuts(lengths[chunk], batch_size, max_tokens))
    return [batches[k] for k in rng.permutation(len(batches))]
