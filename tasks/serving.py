"""The registered model: raw review text in, P(positive) out.

``Scorer`` is the plain object (vocabulary, tokenizer settings, network); ``SentimentModel`` is
the MLflow pyfunc wrapper that carries them as artifacts, so ``models:/sentiflow@champion``
scores text with nothing else at hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from sentiflow.tasks.batching import Encoded
from sentiflow.tasks.model import ModelParams, SentimentRNN
from sentiflow.tasks.tokenize import TokenizeParams, tokenize_texts
from sentiflow.tasks.vocab import Vocab


ARTIFACTS = ("config", "vocab", "weights")
LOGGED_MODEL_URI = re.compile(r"^models:/m-[0-9a-f]{32}$")  # MLflow 3's logged model (a version's source)
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+|latest))$")


class ModelError(ValueError):
    """A model URI that cannot be resolved, or a model that is not a sentiflow model."""


class ModelRef(BaseModel):
    """A resolved model: ``uri`` never moves (an alias is resolved to its version)."""

    requested: str  # as the user gave it, e.g. models:/sentiflow@champion
    uri: str  # models:/sentiflow/3, or the runs:/ URI or path as given
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    model_id: str | None = None  # MLflow 3's logged model: metrics logged with it show on its page
    model_uuid: str  # unique to one logged model: the score stage's key uses it


def resolve_model(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH`` or a local model
    folder → a ``ModelRef``; a ``ModelError`` saying what is wrong otherwise."""
    where = f"(tracking URI {mlflow.get_tracking_uri()})"
    name = version = None
    m = MODEL_URI.match(uri)
    if LOGGED_MODEL_URI.match(uri):
        resolved = uri
    elif uri.startswith("models:/"):
        if not m:
            raise ModelError(f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION "
                             "or models:/NAME/latest")
        name = m["name"]
        try:
            client = MlflowClient()
            if m["version"] == "latest":
                found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"],
                                                     max_results=1)
                if not found:
                    raise ModelError(f"model {uri!r}: {name!r} has no versions {where}")
                mv = found[0]
            else:
                mv = (client.get_model_version_by_alias(name, m["alias"]) if m["alias"]
                      else client.get_model_version(name, m["version"]))
        except MlflowException as e:
            raise ModelError(f"model {uri!r} not found {where}: {e.message}") from None
        version = str(mv.version)
        resolved = f"models:/{name}/{version}"
    elif uri.startswith("runs:/") or Path(uri).expanduser().is_dir():
        resolved = uri if uri.startswith("runs:/") else str(Path(uri).expanduser().resolve())
    else:
        raise ModelError(f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION, "
                         "runs:/RUN_ID/PATH or a model folder")
    try:
        info = mlflow.models.get_model_info(resolved)
    except (MlflowException, OSError) as e:
        raise ModelError(f"model {uri!r} cannot be read {where}: {getattr(e, 'message', e)}") from None
    artifacts = (info.flavors.get("python_function") or {}).get("artifacts") or {}
    missing = [a for a in ARTIFACTS if a not in artifacts]
    if missing:
        raise ModelError(f"model {uri!r} is not a sentiflow model: it lacks the {', '.join(missing)} "
                         f"artifact(s) of one (flavors: {', '.join(info.flavors) or 'none'})")
    return ModelRef(requested=uri, uri=resolved, name=name, version=version, run_id=info.run_id,
                    model_id=getattr(info, "model_id", None), model_uuid=info.model_uuid)


def download_model(ref: ModelRef, dst: Path) -> dict[str, Path]:
    """The model's artifacts (config, vocab, weights) as local files under ``dst``."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst)))
    except (MlflowException, OSError) as e:
        raise ModelError(f"model {ref.uri!r} cannot be downloaded: {getattr(e, 'message', e)}") from None
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return {a: local / flavor["artifacts"][a]["path"] for a in ARTIFACTS}


class Scorer:
    def __init__(self, net: SentimentRNN, vocab: Vocab, tokenize: TokenizeParams,
                 max_len: int | None = None, batch_size: int = 256):
        self.net, self.vocab, self.tokenize, self.max_len = net.eval(), vocab, tokenize, max_len
        self.batch_size = batch_size

    @classmethod
    def load(cls, ref: ModelRef, dst: Path) -> "Scorer":
        files = download_model(ref, dst)
        return cls.from_files(files["config"], files["vocab"], files["weights"])

    @classmethod
    def from_files(cls, config_file: Path, vocab_file: Path, weights_file: Path) -> "Scorer":
        cfg = json.loads(Path(config_file).read_text())
        vocab = Vocab.read(Path(vocab_file))
        net = SentimentRNN(len(vocab), ModelParams(**cfg["model"]), pad_id=vocab.pad_id)
        net.load_state_dict(torch.load(weights_file, weights_only=True, map_location="cpu"))
        return cls(net, vocab, TokenizeParams(**cfg["tokenize"]), cfg.get("max_len"))

    def encode(self, texts: list[str]) -> Encoded:
        ids = self.vocab.encode(tokenize_texts(texts, self.tokenize))
        table = pa.table({"id": [str(i) for i in range(len(texts))], "label": np.zeros(len(texts), np.int8),
                          "ids": ids})
        return Encoded.from_table(table, self.max_len)

    def predict_encoded(self, data: Encoded) -> np.ndarray:
        from sentiflow.tasks.train import forward_fn, predict_logits

        device = next(self.net.parameters()).device
        logits = predict_logits(self.net, data, self.batch_size, forward_fn(self.net, device), device,
                                self.vocab.pad_id)
        return torch.sigmoid(logits).numpy()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.predict_encoded(self.encode(list(texts)))


def _texts(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, (pd.Series, np.ndarray)):
        return list(model_input)
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


class SentimentModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``config`` (JSON: model, tokenize, max_len), ``vocab`` (Parquet), ``weights``."""

    def load_context(self, context) -> None:
        a = context.artifacts
        self.scorer = Scorer.from_files(a["config"], a["vocab"], a["weights"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        texts = _texts(model_input)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"row {bad[0]}: expected review text, got {type(texts[bad[0]]).__name__}")
        return self.scorer.predict_proba(texts).astype(np.float64)
