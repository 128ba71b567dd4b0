"""Stage 7, select: the training run → its best epoch, logged as a text-in model, registered.

The best epoch has the highest ``val_acc`` (the earlier on a tie). Its checkpoint is reloaded,
scored once on the test split (``test_acc``), logged as a pyfunc model carrying its vocabulary
and tokenizer settings, and registered as a new version. The alias ``champion`` moves to it only
when its ``val_acc`` beats the current champion's; otherwise it gets ``challenger``. Two selections
running at the same moment can both read the old champion; the later alias write wins (the
registry has no compare-and-set).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from prefect import task  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from sentiflow.storage.settings import Settings  # noqa: E402
from sentiflow.storage.store import StageRef  # noqa: E402
from sentiflow.storage.tracking import CHALLENGER, CHAMPION, alias_version, configure  # noqa: E402
from sentiflow.tasks.batching import Encoded  # noqa: E402
from sentiflow.tasks.metrics import confusion, confusion_figure  # noqa: E402
from sentiflow.tasks.model import SentimentRNN  # noqa: E402
from sentiflow.tasks.serving import Scorer, SentimentModel  # noqa: E402
from sentiflow.tasks.tokenize import TokenizeParams  # noqa: E402
from sentiflow.tasks.train import TrainConfig, TrainResult, accuracy, load_checkpoint  # noqa: E402
from sentiflow.tasks.vocab import Vocab  # noqa: E402

log = logging.getLogger("sentiflow.select")
VERSION_TAG = "sentiflow.registered_version"
EXAMPLE = ["A moving, beautifully acted film.", "Dull, clumsy and far too long."]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SelectResult(BaseModel):
    run_id: str
    best_epoch: int
    val_acc: float
    test_acc: float | None
    model_name: str
    version: str
    alias: str
    champion_val_acc: float | None  # the champion's val_acc when this version was judged


def best_epoch(history: list[tuple[int, float]]) -> int:
    """The step with the highest value; the earliest on a tie."""
    if not history:
        raise ValueError("the run has no val_acc metric")
    return min(history, key=lambda sv: (-sv[1], sv[0]))[0]


def _version_or_none(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:  # deleted since: register again
        return None


def pip_requirements() -> list[str]:
    import pyarrow
    import spacy

    return [f"torch=={torch.__version__.split('+')[0]}", f"spacy=={spacy.__version__}",
            f"pyarrow=={pyarrow.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}", "pydantic>=2", "prefect>=3"]


def select(result: TrainResult, config: TrainConfig, tokenize: TokenizeParams, vocab_ref: StageRef,
           val_ref: StageRef, test_ref: StageRef | None, model_name: str = "sentiflow",
           settings: Settings | None = None) -> SelectResult:
    configure(settings)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    done = run.data.tags.get(f"{VERSION_TAG}.{model_name}")
    v = _version_or_none(client, model_name, done) if done else None
    if v is not None:  # this run was selected and registered before: report that version
        log.info("run %s already registered as %s version %s", result.run_id, model_name, done)
        return SelectResult(run_id=result.run_id, best_epoch=int(v.tags["best_epoch"]),
                            val_acc=float(v.tags["val_acc"]),
                            test_acc=float(v.tags["test_acc"]) if v.tags.get("test_acc") else None,
                            model_name=model_name, version=done, alias=v.tags.get("alias", ""),
                            champion_val_acc=float(v.tags["champion_val_acc"])
                            if v.tags.get("champion_val_acc") else None)

    history = [(m.step, m.value) for m in client.get_metric_history(result.run_id, "val_acc")]
    epoch = best_epoch(history)
    val_acc = dict(history)[epoch]
    vocab = Vocab.read(vocab_ref.file("vocab.parquet"))
    net = SentimentRNN(len(vocab), config.model, pad_id=vocab.pad_id)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=result.run_id):
        tmp = Path(tmp)
        load_checkpoint(result.run_id, epoch, net, tmp)
        scorer = Scorer(net, vocab, tokenize, config.train.max_len)
        val = Encoded.read(val_ref, config.train.max_len)
        val_pred = scorer.predict_encoded(val) > 0.5
        test_acc = None
        if test_ref is not None and test_ref.manifest().get("total_rows"):
            test = Encoded.read(test_ref, config.train.max_len)
            test_acc = accuracy(scorer.predict_encoded(test), test.labels)
            mlflow.log_metric("test_acc", test_acc)
        mlflow.log_metrics({"best_epoch": epoch, "best_val_acc": val_acc})
        _log_figures(client, result.run_id, epoch, val.labels > 0.5, val_pred)

        weights = tmp / "weights.pt"
        torch.save(net.state_dict(), weights)
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps({"model": config.model.model_dump(mode="json"),
                                   "tokenize": tokenize.model_dump(mode="json"),
                                   "max_len": config.train.max_len, "best_epoch": epoch}, indent=2))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=SentimentModel(),
            artifacts={"config": str(cfg), "vocab": str(vocab_ref.file("vocab.parquet")),
                       "weights": str(weights)},
            code_paths=[str(PROJECT_ROOT / "tasks"), str(PROJECT_ROOT / "storage")],
            signature=infer_signature(EXAMPLE, scorer.predict_proba(EXAMPLE).astype(np.float64)),
            input_example=EXAMPLE, pip_requirements=pip_requirements(),
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)
        champion = alias_version(model_name, CHAMPION)
        champion_acc = float(champion.tags["val_acc"]) if champion and "val_acc" in champion.tags else None
        # a champion whose val_acc is unknown is never displaced automatically
        better = champion is None or (champion_acc is not None and val_acc > champion_acc)
        alias = CHAMPION if better else CHALLENGER
        # tags first, then the alias, then the run's marker: a crash at any point leaves no
        # champion without its figure, and a rerun registers again rather than half-reporting
        tags = {"val_acc": val_acc, "best_epoch": epoch, "run_id": result.run_id, "alias": alias,
                "champion_val_acc": "" if champion_acc is None else champion_acc,
                "test_acc": "" if test_acc is None else test_acc}
        for k, value in tags.items():
            client.set_model_version_tag(model_name, version, k, str(value))
        client.set_registered_model_alias(model_name, alias, version)
        mlflow.set_tag(f"{VERSION_TAG}.{model_name}", version)
    log.info("registered %s version %s (%s): best epoch %d, val_acc %.4f, test_acc %s",
             model_name, version, alias, epoch, val_acc, test_acc)
    return SelectResult(run_id=result.run_id, best_epoch=epoch, val_acc=val_acc, test_acc=test_acc,
                        model_name=model_name, version=version, alias=alias, champion_val_acc=champion_acc)


def _log_figures(client: MlflowClient, run_id: str, best: int, truth: np.ndarray, pred: np.ndarray) -> None:
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


@task(name="select")
def select_task(result: TrainResult, config: TrainConfig, tokenize: TokenizeParams, vocab_ref: StageRef,
                val_ref: StageRef, test_ref: StageRef | None, model_name: str = "sentiflow",
                settings: Settings | None = None) -> SelectResult:
    return select(result, config, tokenize, vocab_ref, val_ref, test_ref, model_name, settings)
