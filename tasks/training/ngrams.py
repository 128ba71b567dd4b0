"""Fitting the n-gram term of ``SentimentRNN`` (``ModelParams.ngrams``), before the RNN trains.

The term is NBSVM's model (Wang & Manning 2012) with a logistic loss: each distinct hashed n-gram
of a review (``model.ngram_features``) enters with its naive-Bayes log-count ratio ``r`` (how
much likelier it is in positive than in negative training reviews, add-one smoothed), and a
weight per feature and a bias are learnt on top with Adam. The model keeps ``w * r``, so that
serving needs neither ``r`` nor this module. Each epoch's weights are tried on validation and the
best epoch's kept. Memory holds the counts and weights (``ngram_buckets`` floats each) and one
batch: the data are read batch by batch, never all at once.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import Tensor, nn

from sentiflow.tasks.core.inference import MAX_BATCH_TOKENS, Encoded, accuracy, length_batches
from sentiflow.tasks.core.model import SentimentRNN, ngram_features
from sentiflow.tasks.cpu import release_memory

log = logging.getLogger("sentiflow.train")
BATCH = 100  # reviews per step


def _features(model: SentimentRNN, data: Encoded, rows: np.ndarray, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    text, lengths, labels = data.batch(rows, pad_id)
    feats, offsets = ngram_features(text, lengths, model.params.ngrams, model.params.ngram_buckets, pad_id)
    return feats, offsets, labels


def log_count_ratios(model: SentimentRNN, data: Encoded, pad_id: int, alpha: float = 1.0) -> Tensor:
    """[buckets] log(p_f / |p|) - log(q_f / |q|): p, q the counts of reviews holding feature f
    among positive and negative reviews, plus ``alpha``."""
    counts = torch.zeros(2, model.params.ngram_buckets, dtype=torch.float64)  # [negative, positive]
    for rows in length_batches(data.lengths, 256, MAX_BATCH_TOKENS):
        feats, offsets, labels = _features(model, data, rows, pad_id)
        sizes = torch.diff(offsets, append=torch.tensor([len(feats)]))
        positive = torch.repeat_interleave(labels > 0.5, sizes).long()
        # in place, one table: a bincount per batch would allocate [buckets] int64 twice a batch
        counts.view(-1).index_add_(0, positive * counts.shape[1] + feats, torch.ones(len(feats), dtype=torch.float64))
    counts.add_(alpha)
    counts.div_(counts.sum(1, keepdim=True)).log_()  # whole counts: their sums are exact
    return (counts[1] - counts[0]).float()


def ngram_accuracy(model: SentimentRNN, data: Encoded, pad_id: int) -> float:
    return accuracy(torch.sigmoid(ngram_logits(model, data, pad_id)).numpy(), data.labels)


@torch.no_grad()
def ngram_logits(model: SentimentRNN, data: Encoded, pad_id: int) -> Tensor:
    """[n] the n-gram term's logit of each row of ``data``."""
    logits = torch.zeros(len(data))
    device = model.ngram_weight.device
    for rows in length_batches(data.lengths, 256, MAX_BATCH_TOKENS):
        text, lengths, _ = data.batch(rows, pad_id)
        logits[torch.from_numpy(rows)] = model.ngram_logits(text.to(device), lengths).cpu()
    return logits


def out_of_fold_logits(model: SentimentRNN, train: Encoded, val: Encoded, folds: int, epochs: int, lr: float,
                      seed: int, pad_id: int) -> Tensor:
    """[n] each training review's n-gram logit from a term fitted without it: the training rows
    cut into ``folds`` random folds (seeded), a term fitted on all folds but one (``fit_ngrams``,
    ``model``'s shape) scores the fold left out. What the RNN learns on top of them
    (``TrainParams.rnn_target``, "residual") is what a term that never saw the review misses: the
    term fitted on all rows knows its training reviews by heart, so its residual there is ~0."""
    fold = np.random.default_rng([seed, folds]).integers(0, folds, len(train))
    logits = torch.zeros(len(train))
    for k in range(folds):
        term = SentimentRNN(model.embedding.num_embeddings, model.params, pad_id=pad_id)
        fit_ngrams(term, train.subset(fold != k), val, epochs, lr, seed, pad_id)
        logits[torch.from_numpy(np.flatnonzero(fold == k))] = ngram_logits(term, train.subset(fold == k), pad_id)
        del term
        release_memory()
    return logits


def fit_mix(rnn: Tensor, ngram: Tensor, labels: Tensor) -> Tensor:
    """[a, b, c] minimising the log loss of ``a * rnn + b * ngram + c`` (logits) on ``labels``:
    a logistic regression of three parameters, from (1, 1, 0), by L-BFGS."""
    x = torch.stack([rnn.double(), ngram.double(), torch.ones_like(rnn, dtype=torch.float64)], 1)
    y = labels.double()
    mix = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([mix], lr=1.0, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ mix, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return mix.detach().float()


def fit_ngrams(model: SentimentRNN, train: Encoded, val: Encoded, epochs: int, lr: float, seed: int,
               pad_id: int) -> dict[str, float]:
    """Set ``model``'s n-gram weights (fitted on the CPU, on any device); returns the metrics to log: the term's own
    validation accuracy, the epoch it was reached at, and the seconds taken."""
    t0 = time.perf_counter()
    r = log_count_ratios(model, train, pad_id)
    w = torch.zeros_like(r, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    best = (-1.0, 0, None, None)
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng(seed * 1000 + epoch).permutation(len(train))
        for start in range(0, len(order), BATCH):
            feats, offsets, labels = _features(model, train, order[start:start + BATCH], pad_id)
            logits = nn.functional.embedding_bag(feats, w.unsqueeze(1), offsets, mode="sum",
                                                 per_sample_weights=r[feats]).squeeze(1) + b
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            model.ngram_weight.copy_(w * r)
            model.ngram_bias.copy_(b)
        acc = ngram_accuracy(model, val, pad_id)
        log.info("n-gram term, epoch %d/%d: val_acc %.4f", epoch, epochs, acc)
        if acc > best[0]:
            best = (acc, epoch, model.ngram_weight.clone(), model.ngram_bias.clone())
    model.ngram_weight.copy_(best[2])
    model.ngram_bias.copy_(best[3])
    metrics = {"ngram_val_acc": best[0], "ngram_epoch": float(best[1]), "ngram_seconds": time.perf_counter() - t0}
    del r, w, b, optimizer, best
    release_memory()  # the fit's buffers (a few ngram_buckets-sized tables) were freed to a kept heap
    return metrics
