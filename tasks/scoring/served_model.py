"""The registered model's code: MLflow "models from code".

``sentiflow.tasks.scoring.serving.log_model`` logs this file as the model's ``python_model``: MLflow runs
it on load instead of unpickling an object, and it names the model with ``set_model``. What it
imports (``inference``, ``text``, ``model``) travels with the model as its code, under the
package name ``sentiflow``; its artifacts are ``config`` (JSON: model, tokenize, max_len),
``vocab`` (Parquet) and ``weights`` (a state dict, loaded with ``weights_only=True``).

Input: review texts (a list, a Series, or a DataFrame whose ``text`` column, else first column,
holds them). Output: P(positive) per review, a list of floats; ``None`` (JSON ``null`` from ``mlflow models
serve``) for a blank or whitespace-only review (``sentiflow score`` gives such a row the status
``empty``). A list, because the scoring server writes a float NaN as the bare token ``NaN``,
which is not JSON.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from sentiflow.tasks.core.inference import Scorer


def review_texts(model_input: Any) -> list[Any]:
    """The reviews in whatever shape pyfunc hands them over."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


class SentimentModel(PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        self.scorer = Scorer.from_files(a["config"], a["vocab"], a["weights"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[float | None]:
        texts = review_texts(model_input)
        bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
        if bad:
            raise TypeError(f"row {bad[0]}: expected review text, got {type(texts[bad[0]]).__name__}")
        return [None if np.isnan(p) else float(p) for p in self.scorer.predict_proba(texts)]


mlflow.models.set_model(SentimentModel())
