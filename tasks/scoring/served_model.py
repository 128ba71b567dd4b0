"""The registered model's code: MLflow "models from code".

``sentiflow.tasks.scoring.serving.log_model`` logs this file as the model's ``python_model``:
MLflow runs it on load instead of unpickling an object, and it names the model with
``set_model``. What it imports (``sentiflow.tasks.core``) travels with the model as its code,
under the package name ``sentiflow``; its artifacts are ``config`` (JSON: model, tokenize,
max_len), ``vocab`` (Parquet) and ``weights`` (a state dict, loaded with ``weights_only=True``).

Input: review values (a list, a Series, or a DataFrame whose ``text`` column, else first column,
holds them). Output: one record per row, ``{"prob_pos": float | None, "status": str,
"oov_share": float | None}``, from ``sentiflow.tasks.core.inference.score_texts``: the status
and probability ``sentiflow score`` and ``sentiflow predict`` give the same row. A row that is
not a review (null, blank, a number) gets its status and ``None`` (JSON ``null``), never a failed
request. Records with ``None``, because the scoring server writes a float NaN as the bare token
``NaN``, which is not JSON. The optional param ``max_oov`` (default 1: no row is cut) makes a
row with a larger OOV share ``out_of_domain``, as ``sentiflow score --max-oov`` does.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from sentiflow.tasks.core.inference import Scorer, score_texts
from sentiflow.tasks.core.rows import records


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

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        max_oov = (params or {}).get("max_oov")
        return records(*score_texts(self.scorer, review_texts(model_input),
                                    None if max_oov is None else float(max_oov)))


mlflow.models.set_model(SentimentModel())
