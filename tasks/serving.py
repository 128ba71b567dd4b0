"""The registered model: raw review text in, P(positive) out.

``Scorer`` is the plain object (vocabulary, tokenizer settings, network); ``SentimentModel`` is
the MLflow pyfunc wrapper that carries them as artifacts, so ``models:/sentiflow@champion``
scores text with nothing else at hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from tasks.batching import Encoded
from tasks.model import ModelParams, SentimentRNN
from tasks.tokenize import TokenizeParams, tokenize_texts
from tasks.vocab import Vocab


class Scorer:
    def __init__(self, net: SentimentRNN, vocab: Vocab, tokenize: TokenizeParams,
                 max_len: int | None = None, batch_size: int = 256):
        self.net, self.vocab, self.tokenize, self.max_len = net.eval(), vocab, tokenize, max_len
        self.batch_size = batch_size

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
        from tasks.train import forward_fn, predict_logits

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
