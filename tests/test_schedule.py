"""The learning-rate schedule, weight averaging and word dropout against hand computations (a
training run with them: tests/test_train.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sentiflow.tasks.training.schedule import WeightAverage, lr_factor


@pytest.mark.parametrize("t, cosine, linear", [(0, 1, 1), (0.25, (1 + math.sqrt(0.5)) / 2, 0.75),
                                               (0.5, 0.5, 0.5), (1, 0, 0), (1.5, 0, 0)])
def test_lr_factor(t, cosine, linear):
    assert lr_factor("cosine", t) == pytest.approx(cosine)
    assert lr_factor("linear", t) == pytest.approx(linear)
    assert lr_factor("constant", t) == 1


def test_weight_average_is_the_moving_average_and_leaves_the_model_its_weights():
    model = nn.Linear(3, 2)
    decay = 0.9
    average = WeightAverage(model, decay)
    expected = [p.detach().numpy().copy() for p in model.parameters()]
    rng = np.random.default_rng(0)
    for n in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)))
        average.update(model)
        d = min(decay, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach().numpy() for e, p in zip(expected, model.parameters())]
    own = [p.detach().clone() for p in model.parameters()]
    with average.applied(model):
        for p, e in zip(model.parameters(), expected):
            np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-5, atol=1e-6)
    for p, o in zip(model.parameters(), own):
        assert torch.equal(p, o)


def test_word_dropout_replaces_about_its_share_of_real_tokens_and_never_padding():
    from sentiflow.tasks.training.train import drop_words

    torch.manual_seed(0)
    text = torch.full((400, 50), 1)  # pad 1
    text[:300] = torch.randint(2, 1000, (300, 50))
    out = drop_words(text, 0.2, unk_id=0, pad_id=1)
    assert torch.equal(out[300:], text[300:])  # padding untouched
    hit = out[:300] == 0
    assert torch.equal(out[:300][~hit], text[:300][~hit])  # the rest unchanged
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
