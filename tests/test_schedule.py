"""The learning-rate schedule and weight averaging: the formulas against hand computations, and
a training run whose checkpoints are the averaged weights it evaluated (real MLflow, real data
flow)."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from sentiflow.tasks.inference import Encoded
from sentiflow.tasks.schedule import WeightAverage, lr_factor
from sentiflow.tasks.train import TrainConfig
from tests.test_train import SMALL, data, fit, settings  # noqa: F401 - fixtures


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


def test_checkpoints_are_the_averaged_weights_they_were_judged_by(data, settings, tmp_path):  # noqa: F811
    """With averaging and a cosine schedule: each epoch's checkpoint gives, scored by hand on the
    validation split, the val_acc the run logged; it is not the raw weights the optimizer left
    (resume.pt), and the learning rate has decayed to near 0 by the last step."""
    config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(
        update={"max_epochs": 3, "lr_schedule": "cosine", "average": 0.9}))
    result = fit(data, settings, config)
    client = MlflowClient(settings.resolved_tracking_uri)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    logged = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_acc")}
    val = Encoded.from_shards(data.encoded["val"].shards())
    from sentiflow.tasks.text import Vocab
    from sentiflow.tasks.model import SentimentRNN

    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    for epoch in (1, 3):
        path = mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                   artifact_path=f"checkpoints/epoch-00{epoch}.pt",
                                                   dst_path=str(tmp_path / str(epoch)))
        net = SentimentRNN(len(vocab), config.model, pad_id=vocab.pad_id)
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
        correct = 0
        with torch.no_grad():  # one review at a time through the packed forward: no batching shared
            for i in range(len(val)):
                ids = val.flat[val.offsets[i]:val.offsets[i + 1]]
                ids = ids if len(ids) else np.array([vocab.pad_id])
                logit = net(torch.from_numpy(np.asarray(ids, dtype=np.int64)).unsqueeze(1),
                            torch.tensor([len(ids)]))
                correct += int((logit.item() > 0) == (val.labels[i] > 0.5))
        assert correct / len(val) == pytest.approx(logged[epoch], abs=1e-9)
    resume = torch.load(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="checkpoints/resume.pt", dst_path=str(tmp_path / "r")),
        weights_only=True)
    last = torch.load(tmp_path / "3" / "epoch-003.pt", weights_only=True)
    assert any(not torch.equal(last[k], resume["model"][k]) for k in last)
    assert resume["average"]["updates"] > 0
    final_lr = resume["optimizer"]["param_groups"][0]["lr"]
    assert 0 < final_lr < 0.01 * config.train.lr
