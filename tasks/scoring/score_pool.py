"""The score stage's worker pool: batches of raw reviews checked, tokenized and encoded with the
model's own vocabulary in worker processes, ahead of the process that scores them.

A batch's prepared form is what ``sentiflow.tasks.core.inference.score_texts`` computes before
the model runs: each row's status (``sentiflow.tasks.core.rows.checked``), the token ids of
its ``ok`` rows (``token_ids``), each cut to the model's character budget first, and how many
were cut; the scoring process then judges and scores them as
``score_texts`` does (``Scorer.judge``). With two or more workers, half of them tokenize while the
scoring process scores the batch before (``prepared``); PyTorch gets the other cores then, all of
them once tokenizing is done.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from sentiflow.tasks.core.inference import Scorer, token_ids
from sentiflow.tasks.core.rows import checked
from sentiflow.tasks.core.text import TokenizeParams, Vocab
from sentiflow.tasks.cpu import release_memory
from sentiflow.tasks.data import tokenize as tokenize_stage
from sentiflow.tasks.scoring.score_sources import ReviewBatch

# batches prepared ahead of the one scored at most: enough for the tokenizers to finish IMDb's
# test part (25,000 reviews) while it is scored, and a bound on memory whatever the input's size
AHEAD = 6

# statuses, ids of the ok rows, their offsets, how many of them were cut (Scorer.max_chars)
Prepared = tuple[list[str], np.ndarray, np.ndarray, int]

_worker: dict[str, Any] = {}


def _init_worker(itos: list[str], params: TokenizeParams, max_chars: int) -> None:
    """A worker process (see sentiflow.tasks.data.tokenize): it never logs, it ends with its
    parent, it trims its heap after each batch as the scoring process does (``release_memory``)."""
    logging.disable(logging.CRITICAL)
    tokenize_stage.exit_with_parent()
    _worker.update(vocab=Vocab(itos), params=params, max_chars=max_chars, trim=True)


def _prepare(texts: list[Any]) -> Prepared:
    """In a worker process: ``prepare`` with its vocabulary and settings, then trim its heap."""
    prepared = prepare(texts, _worker["vocab"], _worker["params"], _worker["max_chars"])
    if _worker["trim"]:
        release_memory()
    return prepared


def prepare(texts: list[Any], vocab: Vocab, params: TokenizeParams, max_chars: int) -> Prepared:
    """Raw values → (status per row, token ids of the ``ok`` rows, their offsets, how many of
    them were cut to ``max_chars``)."""
    statuses, ok, cut = checked(texts, max_chars)
    flat, offsets = token_ids(ok, vocab, params, max_chars)
    return statuses, flat, offsets, cut


def tokenizer_processes(workers: int) -> int:
    """Of ``workers`` cores, the tokenizer processes: half (at least one); the other half score.
    Tokenizing a review and its forward pass cost about the same CPU time here (25,000 IMDb
    reviews: ~13 s of spaCy, ~15 s of one-thread LSTM)."""
    return max(1, workers // 2)


def prepared(batches: Iterator[ReviewBatch], scorer: Scorer, workers: int,
             ) -> Iterator[tuple[ReviewBatch, Prepared, Callable[[], bool]]]:
    """Each batch with its prepared form, in order, and a function that tells whether tokenizing
    goes on at that moment. With ``workers`` >= 2, a pool of ``tokenizer_processes`` prepares up
    to ``AHEAD`` batches ahead while this process scores the current one (a pipeline: both
    phases run at once, each on its own cores; the score stage gives PyTorch the rest of the
    cores while the tokenizers work, all of them while they wait). Taking turns instead (all
    cores tokenizing, then all scoring) lost to it on the shared 2-core machine, where two
    OpenMP threads beside any other busy process spin: see docs/benchmarks.md."""
    if workers <= 1:  # here: no global state, so a Dask worker may score parts in several threads
        for b in batches:
            yield b, prepare(b.texts, scorer.vocab, scorer.tokenize, scorer.max_chars), lambda: False
        return
    tokenize_stage._tokenizer()  # built before the fork (see sentiflow.tasks.data.tokenize): workers only use it
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    n = tokenizer_processes(workers)
    batches = ramped(batches)
    with ProcessPoolExecutor(n, mp_context=mp.get_context(method), initializer=_init_worker,
                             initargs=(scorer.vocab.itos, scorer.tokenize, scorer.max_chars)) as pool:
        # every worker forked before a batch is read: none shares (and keeps alive, copy on
        # write) the memory of one, such as the Arrow buffers of a huge review
        pool.submit(int).result()
        pending = deque((b, pool.submit(_prepare, b.texts)) for b in itertools.islice(batches, AHEAD))

        def tokenizing() -> bool:
            return any(not future.done() for _, future in pending)

        while pending:
            batch, future = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append((following, pool.submit(_prepare, following.texts)))
            yield batch, future.result(), tokenizing


def ramped(batches: Iterator[ReviewBatch], first: int = 512) -> Iterator[ReviewBatch]:
    """The same rows, the first batch cut into pieces of ``first``, 2 × ``first``, … rows: the
    pipeline's scoring waits only for a small first piece to be tokenized, not a whole batch."""
    head = next(batches, None)
    if head is None:
        return
    start, size = 0, first
    while start < len(head.ids):
        end = min(start + size, len(head.ids))
        yield ReviewBatch(head.ids[start:end], head.texts[start:end],
                          None if head.labels is None else head.labels[start:end])
        start, size = end, size * 2
    yield from batches


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
