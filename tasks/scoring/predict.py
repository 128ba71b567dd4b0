"""Reviews at hand (``sentiflow predict``'s arguments or standard input) scored by a registered
model: per review its status, P(positive), label and OOV share, through the one path from a raw
value to a scored row (``sentiflow.tasks.core.inference.score_texts``), as ``sentiflow score``
and the served model answer the same review. No Prefect; the caller sets up MLflow's tracking
URI (``sentiflow.storage.tracking.configure``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sentiflow.tasks.core.inference import Scorer, score_texts
from sentiflow.tasks.core.rows import decoded, records
from sentiflow.tasks.scoring.serving import ModelRef, load_scorer, resolve_model


def read_lines(lines: Iterable[bytes]) -> list[Any]:
    """One review per line of a binary stream (``\\n`` or ``\\r\\n``), e.g. ``sys.stdin.buffer``;
    a line that is not UTF-8 is kept as bytes (status ``not_text``), an empty line as ``""``."""
    return [decoded(raw.rstrip(b"\r\n")) for raw in lines]


def label_of(prob: float | None, threshold: float) -> str | None:
    """``positive`` where ``prob`` exceeds ``threshold``, ``negative`` where not, None without one."""
    return None if prob is None else ("positive" if prob > threshold else "negative")


def scored_rows(scorer: Scorer, texts: Sequence[Any], threshold: float = 0.5,
                max_oov: float | None = None) -> list[dict[str, Any]]:
    """One dict per value, in order: ``text`` (the value as given), ``prob_pos``, ``label``,
    ``status`` and ``oov_share`` (None where there is none)."""
    texts = list(texts)
    return [{"text": text, "prob_pos": r["prob_pos"], "label": label_of(r["prob_pos"], threshold),
             "status": r["status"], "oov_share": r["oov_share"]}
            for text, r in zip(texts, records(*score_texts(scorer, texts, max_oov)))]


def predict_rows(model: str | ModelRef, texts: Sequence[Any], threshold: float = 0.5,
                 max_oov: float | None = None, tmp: Path | None = None) -> list[dict[str, Any]]:
    """``scored_rows`` of ``texts`` with ``model`` (a URI ``resolve_model`` reads, or a resolved
    ``ModelRef``), downloaded into ``tmp`` (default: a temporary folder, removed after loading)."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    with (nullcontext(str(tmp)) if tmp is not None else
          tempfile.TemporaryDirectory(prefix="sentiflow-model-")) as folder:
        scorer = load_scorer(ref, Path(folder))
    return scored_rows(scorer, texts, threshold, max_oov)
