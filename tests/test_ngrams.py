"""The n-gram term (``ModelParams.ngrams``): its features against a plain-Python reading of their
definition, its naive-Bayes ratios against counts by hand, its place in the model (evaluation
only), and a training with it through the real pipeline, served from a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from sentiflow.tasks.core.inference import Encoded, Scorer, accuracy
from sentiflow.tasks.core.model import ModelParams, SentimentRNN, ngram_features
from sentiflow.tasks.data.vocab import Vocab
from sentiflow.tasks.training.ngrams import (
    fit_mix,
    fit_ngrams,
    log_count_ratios,
    ngram_logits,
    out_of_fold_logits,
)
from sentiflow.tasks.training.train import TrainConfig, TrainParams, fit_epoch, load_checkpoint
from tests.test_train import choose, data, fit, one_by_one_accuracy, settings  # noqa: F401 - fixtures

PAD = 1


def expected_features(ids: list[int], n: int, buckets: int) -> set[int]:
    """The documented hash, one review, in Python integers: a word is its id; each longer n-gram
    extends the hash of its first n-1 words by the next word."""
    mix = (1_000_003, 999_983)
    ids = [i for i in ids if i != PAD]
    out = {i % buckets for i in ids}
    hashes = list(ids)
    for k in range(1, n):
        hashes = [(hashes[t] * mix[k % 2] + ids[t + k] + k) % buckets for t in range(len(ids) - k)]
        out |= set(hashes)
    return out


def padded(reviews: list[list[int]], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(max(len(r) for r in reviews), 1) + extra
    text = torch.full((T, len(reviews)), PAD, dtype=torch.long)
    for j, r in enumerate(reviews):
        text[: len(r), j] = torch.tensor(r, dtype=torch.long)
    return text, torch.tensor([max(len(r), 1) for r in reviews])


def per_review(feats: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    ends = list(offsets[1:].tolist()) + [len(feats)]
    return [feats[s:e].tolist() for s, e in zip(offsets.tolist(), ends)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_features_are_each_reviews_distinct_ngrams_whatever_the_batch(n):
    rng = np.random.default_rng(n)
    reviews = [rng.integers(2, 40, size=rng.integers(0, 30)).tolist() for _ in range(12)] + [[5, 5, 5, 5], []]
    buckets = 97  # small: collisions happen, and must be the same ones
    text, lengths = padded(reviews, extra=3)
    got = per_review(*ngram_features(text, lengths, n, buckets, PAD))
    for review, feats in zip(reviews, got):
        assert feats == sorted(expected_features(review, n, buckets))
    # a review alone, without padding, gives the same features
    alone = [per_review(*ngram_features(*padded([r]), n, buckets, PAD))[0] for r in reviews]
    assert alone == got


def test_log_count_ratios_are_the_smoothed_naive_bayes_ratios():
    reviews = [[2, 3, 4], [2, 3, 3], [5, 6], [5, 2, 7, 7]]
    labels = np.array([1, 1, 0, 0], dtype=np.float32)
    lengths = np.array([len(r) for r in reviews])
    corpus = Encoded(np.concatenate(reviews).astype(np.int32), np.concatenate([[0], np.cumsum(lengths)]), labels, [])
    model = SentimentRNN(10, ModelParams(embed_dim=4, hidden_dim=4, bidirectional=False, head="last", ngrams=2,
                                         ngram_buckets=1 << 20))
    r = log_count_ratios(model, corpus, PAD)
    buckets = model.params.ngram_buckets
    p, q = np.ones(buckets), np.ones(buckets)  # add-one: alpha = 1
    for review, label in zip(reviews, labels):
        for f in expected_features(review, 2, buckets):
            (p if label else q)[f] += 1
    want = np.log(p / p.sum()) - np.log(q / q.sum())
    np.testing.assert_allclose(r.numpy(), want, rtol=1e-5, atol=1e-6)
    assert r[3] > 0 > r[5]  # "3" only in positive reviews, "5" only in negative ones


def test_the_term_adds_at_evaluation_only_on_both_paths():
    torch.manual_seed(0)
    params = ModelParams(embed_dim=8, hidden_dim=8, bidirectional=True, head="max", ngrams=2, ngram_buckets=64)
    net = SentimentRNN(30, params, pad_id=PAD)
    net.ngram_weight.copy_(torch.randn(64))
    net.ngram_bias.fill_(0.25)
    text, lengths = padded([[2, 3, 4, 5], [7, 8], [9]])
    bare = SentimentRNN(30, params.model_copy(update={"ngrams": 0}), pad_id=PAD)
    bare.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("ngram") and k != "mix"})
    net.eval()
    bare.eval()
    with torch.no_grad():
        # by hand: each review's distinct features' weights, plus the bias
        term = torch.tensor([sum(net.ngram_weight[f].item() for f in expected_features(r, 2, 64)) + 0.25
                             for r in ([2, 3, 4, 5], [7, 8], [9])])
        for fwd in ("forward", "forward_fast"):
            torch.testing.assert_close(getattr(net, fwd)(text, lengths), getattr(bare, fwd)(text, lengths) + term)
        with net.rnn_alone():
            torch.testing.assert_close(net(text, lengths), bare(text, lengths))
        net.mix.copy_(torch.tensor([0.5, 2.0, -0.1]))
        torch.testing.assert_close(net.forward_fast(text, lengths),
                                   0.5 * bare.forward_fast(text, lengths) + 2.0 * term - 0.1)
    net.train()
    bare.train()
    torch.manual_seed(1)
    a = net.forward_fast(text, lengths)
    torch.manual_seed(1)
    assert torch.equal(a, bare.forward_fast(text, lengths))  # the RNN trains on its own loss


def test_the_mix_is_the_logistic_regression_that_generated_the_labels():
    """Labels drawn from sigmoid(0.6 r + 1.7 g - 0.3): the fitted mix finds those coefficients
    (within sampling error), and its log loss is below the plain sum's."""
    gen = torch.Generator().manual_seed(0)
    rnn, ngram = torch.randn(200_000, generator=gen) * 3, torch.randn(200_000, generator=gen)
    labels = (torch.rand(200_000, generator=gen) < torch.sigmoid(0.6 * rnn + 1.7 * ngram - 0.3)).float()
    mix = fit_mix(rnn, ngram, labels)
    torch.testing.assert_close(mix, torch.tensor([0.6, 1.7, -0.3]), atol=0.03, rtol=0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert bce(mix[0] * rnn + mix[1] * ngram + mix[2], labels) < bce(rnn + ngram, labels)


def by_heart(n: int = 600, seed: int = 0, first: int = 2) -> Encoded:
    """Reviews whose only clue is a word of their own: review i is the one word ``first + i``,
    its label a coin toss. A term fitted on them learns its reviews' labels by heart; nothing
    carries over to a review it did not see."""
    rng = np.random.default_rng(seed)
    return Encoded(np.arange(first, first + n, dtype=np.int64), np.arange(n + 1, dtype=np.int64),
                   rng.integers(0, 2, n).astype(np.float32), [])


def test_out_of_fold_logits_come_from_terms_that_never_saw_the_review():
    """The term fitted on all reviews gets most of its own training reviews right (by heart);
    each review's out-of-fold logit comes from a term fitted without it, so its own word weighs
    nothing: chance accuracy, and one logit (the fold's term's bias) for every review of a fold."""
    reviews, held = by_heart(), by_heart(200, seed=1, first=1000)
    params = ModelParams(embed_dim=4, hidden_dim=4, ngrams=1, ngram_buckets=1 << 12)
    full = SentimentRNN(1300, params, pad_id=PAD)
    fit_ngrams(full, reviews, held, epochs=3, lr=1.0, seed=0, pad_id=PAD)
    assert accuracy(torch.sigmoid(ngram_logits(full, reviews, PAD)).numpy(), reviews.labels) > 0.8
    oof = out_of_fold_logits(full, reviews, held, folds=3, epochs=3, lr=1.0, seed=0, pad_id=PAD)
    assert oof.shape == (len(reviews),)
    assert 0.4 < accuracy(torch.sigmoid(oof).numpy(), reviews.labels) < 0.6
    assert len(set(oof.tolist())) <= 3


def test_the_rnn_learns_only_what_the_offset_leaves_unexplained():
    """``fit_epoch`` with an offset trains on the RNN's logit plus the offset: an offset that
    already explains every label leaves the RNN's weights almost where they were; without it
    they move."""
    reviews = by_heart(256)
    config = TrainParams(max_epochs=1, batch_size=32, lr=1e-2, pretrained=None, average=None, lr_schedule="constant")
    moved = {}
    for name, offset in (("none", None), ("explained", torch.from_numpy(reviews.labels * 40 - 20))):
        torch.manual_seed(0)
        model = SentimentRNN(300, ModelParams(embed_dim=8, hidden_dim=8, ngrams=0), pad_id=PAD)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        fit_epoch(model, reviews, config, 1, optimizer, model.forward_fast, torch.device("cpu"), PAD, offset=offset)
        moved[name] = sum(float((p - b).abs().sum()) for p, b in zip(model.parameters(), before))
    assert moved["explained"] < 1e-3 * moved["none"]


NGRAM = TrainConfig(model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.2, bidirectional=False, head="last",
                                      ngrams=2, ngram_buckets=1 << 16),
                    train=TrainParams(max_epochs=2, batch_size=16, lr=1e-2, ngram_epochs=2, ngram_lr=0.05,
                                      pretrained=None, lr_schedule="constant", average=None))


def test_training_with_the_term_logs_it_and_serves_it(data, settings, tmp_path):  # noqa: F811
    """Through ``train`` and ``select``: the term is fitted (its accuracy logged), saved in every
    checkpoint, and the registered model, loaded in a fresh process, scores raw text as the
    in-process model does, term included."""
    result = fit(data, settings, NGRAM)
    choose(data, settings, result, NGRAM)
    client = MlflowClient(settings.resolved_tracking_uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["ngram_val_acc"] > 0.9 and metrics["ngram_epoch"] in (1.0, 2.0)
    assert NGRAM.train.rnn_target == "residual"  # the default: the RNN learnt what the term missed
    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    net = SentimentRNN(len(vocab), NGRAM.model, pad_id=vocab.pad_id)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    load_checkpoint(result.run_id, int(metrics["best_epoch"]), net, tmp_path)
    assert net.ngram_weight.abs().sum() > 0
    # each epoch's logged val_acc is its checkpoint's, mix included, scored review by review
    # through the packed forward; and the RNN's own accuracy is logged beside it
    val = Encoded.from_shards(data.encoded["val"].shards())
    logged = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_acc")}
    assert len(client.get_metric_history(result.run_id, "val_acc_rnn")) == NGRAM.train.max_epochs
    assert one_by_one_accuracy(net, val, vocab.pad_id) == pytest.approx(logged[int(metrics["best_epoch"])], abs=1e-9)
    # the parts on test, as selection logs them: the term alone by its own logits, the RNN alone
    test = Encoded.from_shards(data.encoded["test"].shards())
    term = torch.sigmoid(ngram_logits(net, test, vocab.pad_id)).numpy()
    assert metrics["test_acc_ngram"] == pytest.approx(accuracy(term, test.labels), abs=1e-9)
    with net.rnn_alone():
        assert metrics["test_acc_rnn"] == pytest.approx(one_by_one_accuracy(net, test, vocab.pad_id), abs=1e-9)
    texts = ["A wonderful, superb and moving film.", "Awful. Boring, dreadful and tedious.", "Zyx qwv 😀 — 日本語"]
    script = ("import json, sys, mlflow; m = mlflow.pyfunc.load_model('models:/sentiflow@champion'); "
              "print(json.dumps([r['prob_pos'] for r in m.predict(json.loads(sys.argv[1]))]))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(texts)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    from sentiflow.tasks.data.tokenize import TokenizeParams

    local = Scorer(net, vocab, TokenizeParams()).predict_proba(texts)
    np.testing.assert_allclose(served, local, rtol=1e-5)
    assert served[0] > 0.5 > served[1]
