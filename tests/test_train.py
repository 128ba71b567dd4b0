"""Training, selection and the registry on small data: real MLflow (temporary SQLite stores),
real Prefect for the data flow, a fresh process to load the registered model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from sentiflow.flows.data_flow import DataConfig, prepare_data
from sentiflow.storage.settings import Settings
from sentiflow.tasks.core.inference import Encoded, Scorer
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.data.vocab import Vocab
from sentiflow.tasks.release.select import best_epoch, select
from sentiflow.tasks.training.train import TrainConfig, TrainParams, build_model, find_run, train
from tests.conftest import write_imdb_folder

METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds"]
# a small model of the seed's kind: one direction, its final state, random embeddings, a constant rate
SMALL = TrainConfig(model=ModelParams(embed_dim=16, hidden_dim=16, dropout=0.2, bidirectional=False, head="last",
                                     ngrams=0),
                    train=TrainParams(max_epochs=4, batch_size=16, lr=1e-2, pretrained=None, lr_schedule="constant",
                                      average=None))


@pytest.fixture(scope="module")
def data(tmp_path_factory, prefect_harness):
    """Small separable reviews through the real data flow, shared by the tests here."""
    root = tmp_path_factory.mktemp("train-data")
    src = write_imdb_folder(root / "src", n_train=500, n_test=200, seed=3)
    return prepare_data(config=DataConfig(source=str(src)), data_root=str(root / "data"), workers=1)


@pytest.fixture
def settings(tmp_path, data) -> Settings:
    return Settings(data_root=data.ingest.path.parents[1],
                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="test")


def fit(data, settings, config=SMALL):
    return train(config, data.encoded["train"], data.encoded["val"], data.vocab, {"data.source": "t"}, settings)


def one_by_one_accuracy(net: SentimentRNN, rows: Encoded, pad_id: int) -> float:
    """Each review alone through the packed forward (an empty one as one pad token): no batching
    shared with the code under test."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(len(rows)):
            ids = rows.flat[rows.offsets[i]:rows.offsets[i + 1]]
            ids = ids if len(ids) else np.array([pad_id])
            logit = net(torch.from_numpy(np.asarray(ids, dtype=np.int64)).unsqueeze(1), torch.tensor([len(ids)]))
            correct += int((logit.item() > 0) == (rows.labels[i] > 0.5))
    return correct / len(rows)


def choose(data, settings, result, config=SMALL):
    from sentiflow.tasks.data.tokenize import TokenizeParams

    return select(result, config, TokenizeParams(), data.vocab, data.encoded["val"], data.encoded["test"],
                  "sentiflow", settings)


def test_best_epoch_is_argmax_earliest_on_tie():
    assert best_epoch([(1, 0.7), (2, 0.9), (3, 0.8)]) == 2
    assert best_epoch([(1, 0.7), (2, 0.9), (3, 0.9)]) == 2
    assert best_epoch([(3, 0.5), (1, 0.5), (2, 0.4)]) == 1
    with pytest.raises(ValueError):
        best_epoch([])


def test_training_learns_and_logs_one_metric_and_checkpoint_per_epoch(data, settings):
    result = fit(data, settings)
    client = MlflowClient(settings.resolved_tracking_uri)
    run = client.get_run(result.run_id)
    for name in METRICS:
        steps = [m.step for m in client.get_metric_history(result.run_id, name)]
        assert steps == [1, 2, 3, 4], name
    val_acc = [m.value for m in client.get_metric_history(result.run_id, "val_acc")]
    assert max(val_acc) >= 0.9  # the synthetic reviews are separable by their label words
    checkpoints = sorted(a.path for a in client.list_artifacts(result.run_id, "checkpoints"))
    assert checkpoints == [f"checkpoints/epoch-00{i}.pt" for i in range(1, 5)] + ["checkpoints/resume.pt"]
    assert run.data.params["model.hidden_dim"] == "16" and run.data.params["train.lr"] == "0.01"
    assert run.data.params["input.0"].startswith("encode/") and run.data.params["data.source"] == "t"
    assert "sentiflow.code_version" in run.data.tags
    assert "LSTM" in mlflow.artifacts.load_text(f"runs:/{result.run_id}/model_summary.txt")


def test_same_config_same_metrics_and_finished_run_is_reused(data, settings, tmp_path):
    first = fit(data, settings)
    again = fit(data, settings)
    assert again.run_id == first.run_id  # a finished run with the same key is reused
    other = Settings(data_root=settings.data_root, tracking_uri=f"sqlite:///{tmp_path / 'b.db'}", experiment="t")
    second = fit(data, other)
    def hist(s: Settings, r: str) -> list[float]:
        return [m.value for m in MlflowClient(s.resolved_tracking_uri).get_metric_history(r, "val_loss")]

    assert hist(settings, first.run_id) == hist(other, second.run_id)


def test_select_registers_champion_and_keeps_it_against_a_worse_model(data, settings):
    good = choose(data, settings, fit(data, settings))
    client = MlflowClient(settings.resolved_tracking_uri)
    history = [(m.step, m.value) for m in client.get_metric_history(good.run_id, "val_acc")]
    assert good.best_epoch == best_epoch(history) and good.val_acc == dict(history)[good.best_epoch]
    assert (good.version, good.alias, good.champion_val_acc) == ("1", "champion", None)
    assert good.test_acc is not None and good.test_acc > 0.85
    run = client.get_run(good.run_id)
    assert run.data.metrics["test_acc"] == pytest.approx(good.test_acc)
    artifacts = {a.path for a in client.list_artifacts(good.run_id)}
    assert {"learning_curve.png", "confusion_matrix_val.png", "confusion_matrix_val.json"} <= artifacts

    worse_config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 1, "lr": 1e-5}))
    worse = choose(data, settings, fit(data, settings, worse_config), worse_config)
    assert worse.val_acc < good.val_acc
    assert (worse.version, worse.alias, worse.champion_val_acc) == ("2", "challenger", good.val_acc)
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("sentiflow", "challenger").version) == "2"
    tags = client.get_model_version("sentiflow", "2").tags
    assert float(tags["val_acc"]) == worse.val_acc and float(tags["champion_val_acc"]) == good.val_acc
    # selecting the same run again registers nothing new
    assert choose(data, settings, fit(data, settings)).version == "1"


def test_champion_loads_in_a_fresh_process_and_scores_raw_text(data, settings, tmp_path):
    result = fit(data, settings)
    choose(data, settings, result)
    texts = ["A wonderful, superb and moving film.", "Awful. Boring, dreadful and tedious.",
             "The plot <br /><br />and the actors 😀 — 日本語"]
    script = ("import json, sys, mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/sentiflow@champion'); "
              "texts = json.loads(sys.argv[1]); a = m.predict(texts); b = m.predict(pd.DataFrame({'text': texts})); "
              "assert list(a) == list(b); print(json.dumps([r['prob_pos'] for r in a]))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(texts)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probs[0] > 0.5 > probs[1]
    # the same numbers as the in-process model
    from sentiflow.tasks.training.train import load_checkpoint

    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    net, _ = build_model(vocab, SMALL)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    load_checkpoint(result.run_id, int(MlflowClient().get_run(result.run_id).data.metrics["best_epoch"]), net, tmp_path)
    from sentiflow.tasks.data.tokenize import TokenizeParams

    np.testing.assert_allclose(probs, Scorer(net, vocab, TokenizeParams()).predict_proba(texts), rtol=1e-5)


# A training in a fresh process of its own, its result as the last line of its output. PyTorch's
# thread count decides how its kernels split their sums, and so the last bits of a run's numbers:
# on this 2-core machine one thread and two give val_loss 0.6351354718 and 0.6351355314 at epoch
# 2, the two values of the failure once seen in CI, where the killed run had 2 threads and the
# pytest process, after other tests, 1. With the count pinned, fresh processes agree bit for bit
# (measured), so each training here runs in one, pinned to 1 thread, and the curves are compared
# exactly: any state the resume failed to restore (weights, optimizer, schedule, averaging, the
# batches' seeds) shows, however small.
_TRAIN = ("import json, sys; from sentiflow.storage.settings import Settings; from sentiflow.storage.store import StageRef; "
          "from sentiflow.tasks.training.train import TrainConfig, train; a = json.loads(sys.argv[1]); "
          "r = train(TrainConfig(**a['config']), *[StageRef(**r) for r in a['refs']], None, Settings(**a['settings'])); "
          "print(json.dumps({'run_id': r.run_id, 'resumed_from': r.resumed_from}))")


def _pinned() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _training(config: TrainConfig, data, s: Settings) -> list[str]:
    args = json.dumps({"config": config.model_dump(mode="json"),
                       "refs": [r.model_dump(mode="json") for r in
                                (data.encoded["train"], data.encoded["val"], data.vocab)],
                       "settings": s.model_dump(mode="json")})
    return [sys.executable, "-c", _TRAIN, args]


def _train_apart(config: TrainConfig, data, s: Settings) -> dict:
    done = subprocess.run(_training(config, data, s), cwd=Path(__file__).parents[1], env=_pinned(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow  # three trainings, each in a process of its own
def test_killed_training_resumes_at_the_next_epoch(data, settings, tmp_path):
    """A real kill (SIGKILL) after a checkpoint; the rerun continues the same run and ends with
    the numbers of an uninterrupted training."""
    # with a decaying learning rate and weight averaging, whose state the resume must restore too
    config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(
        update={"max_epochs": 12, "lr_schedule": "cosine", "average": 0.95}))
    proc = subprocess.Popen(_training(config, data, settings), cwd=Path(__file__).parents[1], env=_pinned(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(settings.resolved_tracking_uri)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    deadline = time.time() + 240
    runs = []
    while time.time() < deadline and proc.poll() is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        # metrics are logged after the epoch's checkpoints: two epochs fully done
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val_acc")) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs, "the training never started"
    run_id = runs[0].info.run_id
    assert find_run(runs[0].info.experiment_id, runs[0].data.tags["sentiflow.train_key"], complete=False)
    done_before = len(client.get_metric_history(run_id, "val_acc"))
    assert 2 <= done_before < 12
    result = _train_apart(config, data, settings)
    assert result["run_id"] == run_id
    # it resumes after the last checkpoint: the last logged epoch, or the one after it when the
    # kill fell between that epoch's checkpoint and its metrics
    assert result["resumed_from"] in (done_before, done_before + 1)

    def history(s: Settings, r: str) -> list[tuple[int, float]]:
        found = MlflowClient(s.resolved_tracking_uri).get_metric_history(r, "val_loss")
        return [(m.step, m.value) for m in sorted(found, key=lambda m: m.step)]

    assert [step for step, _ in history(settings, run_id)] == list(range(1, 13))
    # what an uninterrupted training computes, bit for bit (see _TRAIN above)
    other = Settings(data_root=settings.data_root, tracking_uri=f"sqlite:///{tmp_path / 'u.db'}", experiment="u")
    straight = _train_apart(config, data, other)
    assert history(settings, run_id) == history(other, straight["run_id"])


def test_packed_path_trains_like_the_fast_path(data, settings, tmp_path):
    """CUDA trains through the packed forward: on the CPU both paths give the same training."""
    curves = []
    for path in ("packed", "fast"):
        config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 2, "path": path}))
        s = Settings(data_root=settings.data_root, tracking_uri=f"sqlite:///{tmp_path / path}.db", experiment=path)
        run = fit(data, s, config)
        curves.append([m.value for m in MlflowClient(s.resolved_tracking_uri).get_metric_history(run.run_id, "val_loss")])
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)


def test_a_better_model_takes_the_champion_alias(data, settings):
    weak_config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 1, "lr": 1e-5}))
    weak = choose(data, settings, fit(data, settings, weak_config), weak_config)
    strong = choose(data, settings, fit(data, settings))
    assert strong.val_acc > weak.val_acc
    assert (weak.alias, strong.alias, strong.champion_val_acc) == ("champion", "champion", weak.val_acc)
    client = MlflowClient(settings.resolved_tracking_uri)
    assert str(client.get_model_version_by_alias("sentiflow", "champion").version) == strong.version


def test_pretrained_vectors_through_training_frozen(data, settings, tmp_path):
    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    glove = tmp_path / "glove.txt"
    words = vocab.itos[2:12]
    glove.write_text("".join(f"{w} {' '.join(str((i + j) / 10) for j in range(16))}\n" for i, w in enumerate(words)))
    config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(
        update={"max_epochs": 1, "pretrained": str(glove), "freeze_embeddings": True}))
    result = fit(data, settings, config)
    client = MlflowClient(settings.resolved_tracking_uri)
    assert client.get_run(result.run_id).data.metrics["pretrained_words_found"] == 10
    from sentiflow.tasks.training.train import load_checkpoint

    net, _ = build_model(vocab, SMALL)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    load_checkpoint(result.run_id, 1, net, tmp_path)
    # frozen: after an epoch the vectors are still GloVe's
    np.testing.assert_allclose(net.embedding.weight[2].detach().numpy(), [j / 10 for j in range(16)], rtol=1e-6)


def test_settings_name_the_tracking_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert Settings(tracking_uri="sqlite:///x.db").resolved_tracking_uri == "sqlite:///x.db"
    assert Settings(data_root=tmp_path).resolved_tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert Settings().resolved_tracking_uri == "http://127.0.0.1:5000"


def test_a_selection_killed_midway_registers_nothing_twice(data, settings):
    """Killed after registering (before judging), or after judging (before the run's marker):
    the rerun finishes that version, never a second one."""
    from sentiflow.tasks.release.select import VERSION_TAG

    first = choose(data, settings, fit(data, settings))
    client = MlflowClient(settings.resolved_tracking_uri)
    marker = f"{VERSION_TAG}.sentiflow"
    # killed before the run's marker: everything else done
    client.delete_tag(first.run_id, marker)
    again = choose(data, settings, fit(data, settings))
    assert (again.version, again.alias) == (first.version, "champion")
    # killed right after registering: no tags, no alias, no marker
    client.delete_tag(first.run_id, marker)
    for key in client.get_model_version("sentiflow", first.version).tags:
        client.delete_model_version_tag("sentiflow", first.version, key)
    client.delete_registered_model_alias("sentiflow", "champion")
    third = choose(data, settings, fit(data, settings))
    assert (third.version, third.alias) == (first.version, "champion")
    assert [str(v.version) for v in client.search_model_versions("name = 'sentiflow'")] == [first.version]
    assert client.get_model_version("sentiflow", first.version).tags["gate.decision"] == "promote"


def test_an_unreadable_checkpoint_starts_a_new_run(data, settings, tmp_path):
    from pathlib import Path
    from urllib.parse import urlparse

    from sentiflow.tasks.training.train import COMPLETE_TAG

    config = TrainConfig(model=SMALL.model, train=SMALL.train.model_copy(update={"max_epochs": 2}))
    first = fit(data, settings, config)
    client = MlflowClient(settings.resolved_tracking_uri)
    client.delete_tag(first.run_id, COMPLETE_TAG)  # as if killed after epoch 2's checkpoint
    resume = Path(urlparse(client.get_run(first.run_id).info.artifact_uri).path) / "checkpoints" / "resume.pt"
    resume.write_bytes(b"not a checkpoint")
    second = fit(data, settings, config)
    assert second.run_id != first.run_id and second.resumed_from == 0 and second.epochs == 2
    assert [m.step for m in client.get_metric_history(second.run_id, "val_acc")] == [1, 2]


def test_a_run_reopened_before_its_first_checkpoint_keeps_its_params(data, settings):
    """Killed before its first checkpoint, then rerun with the same data read from another path:
    the run is reopened, its params stay as first logged (MLflow refuses a changed value)."""
    from sentiflow.storage.tracking import configure
    from sentiflow.tasks import stage
    from sentiflow.tasks.training.train import TRAIN_KEY_TAG, train_key

    inputs = [stage.input_token(r) for r in (data.encoded["train"], data.encoded["val"], data.vocab)]
    key = train_key(SMALL, inputs)
    experiment_id = configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, tags={TRAIN_KEY_TAG: key}) as run:
        mlflow.log_params({"data.source": "/old/path", "device": "cpu"})
    result = train(SMALL, data.encoded["train"], data.encoded["val"], data.vocab,
                   {"data.source": "/new/path"}, settings)
    assert result.run_id == run.info.run_id
    params = MlflowClient(settings.resolved_tracking_uri).get_run(result.run_id).data.params
    assert params["data.source"] == "/old/path" and params["model.hidden_dim"] == "16"


def test_checkpoints_are_the_averaged_weights_they_were_judged_by(data, settings, tmp_path):
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
    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    for epoch in (1, 3):
        path = mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                   artifact_path=f"checkpoints/epoch-00{epoch}.pt",
                                                   dst_path=str(tmp_path / str(epoch)))
        net = SentimentRNN(len(vocab), config.model, pad_id=vocab.pad_id)
        net.load_state_dict(torch.load(path, weights_only=True))
        assert one_by_one_accuracy(net, val, vocab.pad_id) == pytest.approx(logged[epoch], abs=1e-9)
    resume = torch.load(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="checkpoints/resume.pt", dst_path=str(tmp_path / "r")),
        weights_only=True)
    last = torch.load(tmp_path / "3" / "epoch-003.pt", weights_only=True)
    assert any(not torch.equal(last[k], resume["model"][k]) for k in last)
    assert resume["average"]["updates"] > 0
    final_lr = resume["optimizer"]["param_groups"][0]["lr"]
    assert 0 < final_lr < 0.01 * config.train.lr
