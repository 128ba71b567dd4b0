"""Stage 7, select: the training run → its best epoch, logged as a text-in model, registered.

``select`` runs five steps, each a function named for what it does:

1. ``choose_epoch``: the epoch with the highest ``val_acc`` (the earlier on a tie);
2. ``evaluate_epoch``: its checkpoint reloaded, scored on validation (figures) and test
   (``test_acc``);
3. ``serving.log_model``: logged as a model from code carrying its vocabulary and settings, and
   the training split's review lengths and OOV shares (``training_stats``: ``train_stats.json``,
   what scoring compares new reviews with, ``sentiflow.tasks.scoring.drift``);
4. ``register``: a new version of the registered model, with descriptions;
5. ``promote``: the champion gate (``tasks/release/gate.py``) scores this version and the current
   champion on the same rows; the alias ``champion`` moves only when this version wins there,
   otherwise it gets ``challenger``. The champion is read first (``tasks/release/champion.py``),
   before anything of this version is written: an outage of the tracking server there is tried
   again, then ends the selection with no verdict (a rerun judges again); a champion that is
   really gone (its files, its run, its own split's stages) is kept and reported.

Registering, judging and moving the alias hold one lock per registered model under the data
root (``<data root>/select/.lock-<hash of the name>``, ``storage.names.name_key``), so two selections on one data root never race on the
alias; the gate judges against the champion of the moment.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from sentiflow.storage.names import name_key
from sentiflow.storage.redact import scrubbed
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef, Store
from sentiflow.storage.tracking import (
    CHALLENGER,
    CHAMPION,
    configure,
    log_stage_datasets,
)
from sentiflow.tasks.core.inference import Encoded, Scorer, accuracy
from sentiflow.tasks.core.model import SentimentRNN
from sentiflow.tasks.core.text import TokenizeParams, Vocab, char_budget
from sentiflow.tasks.metrics import confusion, confusion_figure
from sentiflow.tasks.release.champion import find_champion, load_champion
from sentiflow.tasks.release.errors import GONE, classify
from sentiflow.tasks.release.gate import (
    GateParams,
    GateResult,
    GateRows,
    judge,
    source_rows,
    split_rows,
)
from sentiflow.tasks.scoring import drift
from sentiflow.tasks.scoring.serving import log_model
from sentiflow.tasks.stage import read_input_token
from sentiflow.tasks.training.ngrams import ngram_logits
from sentiflow.tasks.training.train import TrainConfig, TrainResult, load_checkpoint

log = logging.getLogger("sentiflow.select")
VERSION_TAG = "sentiflow.registered_version"
MODEL_DESCRIPTION = (
    "sentiflow's sentiment classifier for movie reviews: an LSTM over spaCy tokens (lower-cased). "
    "Input: review texts (a list, or a DataFrame with a `text` column). Output: P(positive) per "
    "review, null (None) for a blank one. The model carries its vocabulary, tokenizer settings and "
    "inference code (a model from code); each version's description names its data and figures.")


class SelectResult(BaseModel):
    run_id: str
    best_epoch: int
    val_acc: float
    test_acc: float | None
    model_name: str
    version: str
    alias: str
    champion_val_acc: float | None  # the champion's val_acc (on its own run) when judged
    gate: GateResult | None = None  # challenger and champion on the same rows
    reused: bool = False  # the decision of an earlier run of this training, reported again


@dataclass
class Evaluation:
    val_acc: float
    test_acc: float | None


# -- 1. choose the epoch --------------------------------------------------------------------------

def best_epoch(history: list[tuple[int, float]]) -> int:
    """The step with the highest value; the earliest on a tie."""
    if not history:
        raise ValueError("the run has no val_acc metric")
    return min(history, key=lambda sv: (-sv[1], sv[0]))[0]


def choose_epoch(client: MlflowClient, run_id: str) -> tuple[int, float]:
    """The best epoch on validation and its ``val_acc``."""
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")]
    epoch = best_epoch(history)
    return epoch, dict(history)[epoch]


# -- 2. evaluate it -------------------------------------------------------------------------------

def load_epoch(run_id: str, epoch: int, config: TrainConfig, tokenize: TokenizeParams, vocab: Vocab,
               tmp: Path) -> Scorer:
    """The epoch's checkpoint as a ``Scorer``."""
    net = SentimentRNN(len(vocab), config.model, pad_id=vocab.pad_id)
    load_checkpoint(run_id, epoch, net, tmp)
    return Scorer(net, vocab, tokenize, config.train.max_len)


def evaluate_epoch(client: MlflowClient, run_id: str, epoch: int, scorer: Scorer, val_ref: StageRef,
                   test_ref: StageRef | None) -> float | None:
    """Score validation (learning curve and confusion matrix logged) and test (``test_acc``
    logged, and the test stage logged as an input). Returns ``test_acc``, None without a test
    part. Runs inside the training run."""
    val = Encoded.from_shards(val_ref.shards(), scorer.max_len)
    _log_figures(client, run_id, epoch, val.labels > 0.5, scorer.predict_encoded(val) > 0.5)
    if test_ref is None or not test_ref.manifest().get("total_rows"):
        return None
    test = Encoded.from_shards(test_ref.shards(), scorer.max_len)
    probs, parts = test_predictions(scorer, test)
    test_acc = accuracy(probs, test.labels)
    mlflow.log_metrics({"test_acc": test_acc, **parts})
    log_stage_datasets({"test": test_ref}, client.get_run(run_id).data.params.get("data.source"))
    return test_acc


def test_predictions(scorer: Scorer, data: Encoded) -> tuple[np.ndarray, dict[str, float]]:
    """P(positive) per row of ``data``, and with an n-gram term the accuracy of each part of the
    mixed model alone: the RNN's logit (``test_acc_rnn``) and the term's (``test_acc_ngram``).
    The RNN and the term each read ``data`` once; the mixed logit is their mix
    (``SentimentRNN.mixed``), not a third pass."""
    net = scorer.net
    if not net.params.ngrams:
        return scorer.predict_encoded(data), {}
    with net.rnn_alone():
        rnn = scorer.logits_encoded(data)
    term = ngram_logits(net, data, scorer.vocab.pad_id)
    mixed = torch.sigmoid(net.mixed(rnn, term)).numpy()
    return mixed, {"test_acc_rnn": accuracy(torch.sigmoid(rnn).numpy(), data.labels),
                   "test_acc_ngram": accuracy(torch.sigmoid(term).numpy(), data.labels)}


def _log_figures(client: MlflowClient, run_id: str, best: int, truth: np.ndarray, pred: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here, not at import: pyplot alone takes ~0.8 s to import

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"{split}_{metric}"))
            ax.plot([s for s, _ in hist], [v for _, v in hist], marker="o", label=split)
        ax.axvline(best, color="grey", linestyle="--", label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    mlflow.log_figure(fig, "learning_curve.png")
    plt.close(fig)

    cm = confusion(truth, pred)
    fig = confusion_figure(cm, f"validation, epoch {best}")
    mlflow.log_figure(fig, "confusion_matrix_val.png")
    plt.close(fig)
    mlflow.log_dict({"labels": ["neg", "pos"], "matrix": cm.tolist()}, "confusion_matrix_val.json")


# -- 3. the training split's statistics, logged with the model ----------------------------------

def training_stats(client: MlflowClient, run_id: str, store: Store, val_ref: StageRef, unk_id: int,
                   tmp: Path) -> Path | None:
    """``train_stats.json`` of the run's encoded training split (its ``encode`` input other than
    validation), written under ``tmp``; None, with a warning, when that split is not in the store."""
    params = client.get_run(run_id).data.params
    for name, token in sorted(params.items()):
        stage_name, key, _ = read_input_token(token) if name.startswith("input.") else ("", "", "")
        if stage_name == "encode" and key != val_ref.key and store.is_valid(ref := store.ref("encode", key)):
            stats = drift.train_stats_of_shards(ref.shards(), unk_id)
            log.info("training split %s: %d reviews, %.2f %% of tokens outside the vocabulary", key,
                     stats.profile.rows, 100 * (stats.oov_token_share or 0))
            return stats.write(tmp / drift.STATS_FILE)
    log.warning("run %s: its encoded training split is not in the store; the model is logged without "
                "%s (scoring will not compare new reviews with it)", run_id, drift.STATS_FILE)
    return None


# -- 4. register ----------------------------------------------------------------------------------

def version_description(run: mlflow.entities.Run, epoch: int, evaluation: Evaluation,
                        verdict: GateResult) -> str:
    """What a version is: its data, the stage keys it came from, its figures."""
    params = run.data.params
    keys = ", ".join(f"{k.removeprefix('key.')} `{v}`" for k, v in sorted(params.items()) if k.startswith("key."))
    test = "none (no test part)" if evaluation.test_acc is None else f"{evaluation.test_acc:.4f}"
    return (f"Best epoch {epoch} of training run `{run.info.run_id}` on `{params.get('data.source', '?')}`. "
            f"val_acc {evaluation.val_acc:.4f}, test_acc {test}. "
            f"Stage keys: {keys or 'not recorded'}. "
            f"Champion gate: {'promoted' if verdict.promote else 'not promoted'}: {verdict.reason}.")


def register(client: MlflowClient, model_uri: str, name: str, description: str) -> str:
    """A new version of ``name`` from the logged model; the registered model and the version
    get descriptions. Returns the version."""
    version = str(mlflow.register_model(model_uri, name).version)
    client.update_model_version(name, version, description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    return version


# -- 5. promote -----------------------------------------------------------------------------------

def gate_rows(gate: GateParams, val_ref: StageRef, test_ref: StageRef | None, max_len: int | None) -> GateRows:
    """The rows the gate judges on: the gate source, else the test split, else validation
    (read a batch at a time when judged)."""
    if gate.source:
        return source_rows(gate.source, max_chars=char_budget(max_len))
    has_test = test_ref is not None and test_ref.manifest().get("total_rows")
    return split_rows(test_ref if has_test else val_ref, max_len)


def promote(client: MlflowClient, name: str, version: str, tags: dict[str, object],
            verdict: GateResult) -> str:
    """Tag the version with its figures and the gate's, then move ``champion`` to it when the
    gate says so, else give it ``challenger``. Returns the alias. Tags go first, then the alias:
    a crash at any point leaves no champion without its figures."""
    alias = CHAMPION if verdict.promote else CHALLENGER
    for k, value in {**tags, **verdict.tags(), "alias": alias}.items():
        client.set_model_version_tag(name, version, k, str(value))
    client.set_registered_model_alias(name, alias, version)
    return alias


# -- the whole step -------------------------------------------------------------------------------

def _version_or_none(client: MlflowClient, name: str, version: str) -> ModelVersion | None:
    try:
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as e:
        if classify(e) == GONE:  # deleted since: register again
            return None
        raise  # an outage is not a deleted version: registering again would make a second


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of ``name`` registered from ``run_id``, if any (the earliest)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _reported(run_id: str, name: str, v: ModelVersion, reused: bool = True) -> SelectResult:
    """A run selected and registered before: the result it got then (``reused``: announced then,
    not news now)."""
    t = v.tags
    return SelectResult(run_id=run_id, best_epoch=int(t["best_epoch"]), val_acc=float(t["val_acc"]),
                        test_acc=float(t["test_acc"]) if t.get("test_acc") else None, model_name=name,
                        version=str(v.version), alias=t.get("alias", ""),
                        champion_val_acc=float(t["champion_val_acc"]) if t.get("champion_val_acc") else None,
                        gate=GateResult.from_tags(t), reused=reused)



def select(result: TrainResult, config: TrainConfig, tokenize: TokenizeParams, vocab_ref: StageRef,
           val_ref: StageRef, test_ref: StageRef | None, model_name: str, settings: Settings,
           gate: GateParams = GateParams()) -> SelectResult:
    configure(settings)
    client = MlflowClient()
    store = Store(settings.data_root)
    with store.lock(store.ref("select", name_key(model_name))):
        done = client.get_run(result.run_id).data.tags.get(f"{VERSION_TAG}.{model_name}")
        v = _version_or_none(client, model_name, done) if done else None
        if v is not None:
            log.info("run %s already registered as %s version %s", result.run_id, model_name, done)
            return _reported(result.run_id, model_name, v)
        earlier = _version_of_run(client, model_name, result.run_id)  # a selection killed midway
        if earlier is not None and earlier.tags.get("alias"):  # judged, tagged: finish its last steps
            client.set_registered_model_alias(model_name, earlier.tags["alias"], earlier.version)
            client.set_tag(result.run_id, f"{VERSION_TAG}.{model_name}", str(earlier.version))
            return _reported(result.run_id, model_name, earlier, reused=False)  # its decision is news
        return _select(client, store, result, config, tokenize, vocab_ref, val_ref,
                       test_ref, model_name, gate, earlier)


def _select(client: MlflowClient, store: Store, result: TrainResult, config: TrainConfig, tokenize: TokenizeParams,
            vocab_ref: StageRef, val_ref: StageRef, test_ref: StageRef | None, model_name: str,
            gate: GateParams, earlier: ModelVersion | None = None) -> SelectResult:
    """Choose, evaluate, judge, log, register, promote. ``earlier``: a version of this run that a
    killed selection registered but never judged; it is judged and promoted, not registered again."""
    epoch, val_acc = choose_epoch(client, result.run_id)
    vocab_file = vocab_ref.file("vocab.parquet")
    current = find_champion(client, model_name)
    champion_val_acc = float(current.tags["val_acc"]) if current and current.tags.get("val_acc") else None
    rows = gate_rows(gate, val_ref, test_ref, config.train.max_len)
    with tempfile.TemporaryDirectory() as tmp:
        # the champion first, outside the run: an outage ends the selection here, nothing written
        champion = None if current is None else \
            load_champion(client, store, model_name, current, rows, not gate.source, Path(tmp) / "champion")
        with mlflow.start_run(run_id=result.run_id):
            scorer = load_epoch(result.run_id, epoch, config, tokenize, Vocab.read(vocab_file), Path(tmp))
            test_acc = evaluate_epoch(client, result.run_id, epoch, scorer, val_ref, test_ref)
            mlflow.log_metrics({"best_epoch": epoch, "best_val_acc": val_acc})
            # on the test split the challenger's figure is its test_acc, measured just above
            known = test_acc if not gate.source and rows.on.startswith("test ") else None
            verdict = judge(scorer, vocab_file, rows, champion, gate.margin, known)
            mlflow.log_metrics({"gate_challenger_acc": verdict.challenger_acc, **(
                {} if verdict.champion_acc is None else {"gate_champion_acc": verdict.champion_acc})})
            evaluation = Evaluation(val_acc, test_acc)
            description = version_description(client.get_run(result.run_id), epoch, evaluation, verdict)
            if earlier is None:
                stats_file = training_stats(client, result.run_id, store, val_ref, scorer.vocab.unk_id, Path(tmp))
                info = log_model(scorer, vocab_file, {"best_epoch": epoch}, Path(tmp), stats_file)
                version = register(client, info.model_uri, model_name, description)
            else:
                version = str(earlier.version)
                client.update_model_version(model_name, version, description=description)
            tags = {"val_acc": val_acc, "best_epoch": epoch, "run_id": result.run_id,
                    "test_acc": "" if test_acc is None else test_acc,
                    "champion_val_acc": "" if champion_val_acc is None else champion_val_acc}
            alias = promote(client, model_name, version, tags, verdict)
            mlflow.set_tag(f"{VERSION_TAG}.{model_name}", version)  # last: a rerun registers again
    log.info("registered %s version %s (%s): best epoch %d, val_acc %.4f, test_acc %s; gate: %s",
             model_name, version, alias, epoch, val_acc, test_acc, verdict.reason)
    return SelectResult(run_id=result.run_id, best_epoch=epoch, val_acc=val_acc, test_acc=test_acc,
                        model_name=model_name, version=version, alias=alias, champion_val_acc=champion_val_acc,
                        gate=verdict)


@task(name="select", cache_policy=NO_CACHE)
@scrubbed
def select_task(result: TrainResult, config: TrainConfig, tokenize: TokenizeParams, vocab_ref: StageRef,
                val_ref: StageRef, test_ref: StageRef | None, model_name: str, settings: Settings,
                gate: GateParams | None = None) -> SelectResult:
    return select(result, config, tokenize, vocab_ref, val_ref, test_ref, model_name, settings,
                  gate or GateParams())
