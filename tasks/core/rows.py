"""What a row to score is: its status, its text and its OOV share (plain Python and numpy, and the
character budget of ``sentiflow.tasks.core.text``).

A raw value, whatever a source or a request holds, gets a status (``status_of``): ``null``
(None or a float NaN, as pandas holds a missing value), ``not_text`` (a number, bytes that are
not UTF-8, anything else that is not text), ``empty`` (text of whitespace only) or ``ok``. Text
longer than the model's character budget (``sentiflow.tasks.core.text.char_budget``) is cut to
it first (``cut_text``), and everything after is that of the cut text: its status, its tokens,
its OOV share, its probability (``checked`` counts such rows). An
``ok`` row is tokenized whole; its OOV share is the share of its tokens outside the model's
vocabulary (``<unk>``), NaN without a token; a row whose share exceeds ``max_oov`` becomes
``out_of_domain`` and is not scored (``in_domain``). Every ``ok`` row after that is scored.

``sentiflow.tasks.core.inference.score_texts`` applies these to raw values; the score stage
applies the same functions to the arrays its worker processes hand back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sentiflow.tasks.core.text import MAX_REVIEW_CHARS, cut_text

OK, NULL, EMPTY, NOT_TEXT = "ok", "null", "empty", "not_text"
OUT_OF_DOMAIN = "out_of_domain"  # tokenized, but too many of its tokens outside the vocabulary (max_oov)
STATUSES = (OK, NULL, EMPTY, NOT_TEXT, OUT_OF_DOMAIN)


def decoded(value: Any) -> Any:
    """Bytes that are UTF-8 as str; other bytes kept (status not_text); anything else as is."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value


def status_of(value: Any) -> str:
    """Why a raw value cannot be scored, or ``ok`` (before its OOV share is known)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL
    value = decoded(value)
    if not isinstance(value, str):
        return NOT_TEXT
    return EMPTY if not value or value.isspace() else OK  # isspace: no copy of a long text


def checked(values: Sequence[Any], max_chars: int = MAX_REVIEW_CHARS) -> tuple[list[str], list[str], int]:
    """Raw values → (their statuses, the texts of the ``ok`` ones in order, how many of those
    were cut), each text cut to ``max_chars`` (``cut_text``) before its status is judged."""
    texts = [decoded(v) for v in values]
    long = [isinstance(t, str) and len(t) > max_chars for t in texts]
    texts = [cut_text(t, max_chars) if cut else t for t, cut in zip(texts, long)]
    statuses = [status_of(t) for t in texts]
    ok = [s == OK for s in statuses]
    return statuses, [t for t, k in zip(texts, ok) if k], sum(c and k for c, k in zip(long, ok))


def oov_counts(flat: np.ndarray, offsets: np.ndarray, unk_id: int) -> np.ndarray:
    """Per row (``offsets``: n + 1 into ``flat``, token ids), how many of its ids are ``unk_id``."""
    offsets = np.asarray(offsets, np.int64)
    cum = np.concatenate([[0], np.cumsum(np.asarray(flat) == unk_id, dtype=np.int64)])
    return cum[offsets[1:]] - cum[offsets[:-1]]


def oov_shares(lengths: np.ndarray, unk: np.ndarray) -> np.ndarray:
    """OOV share per row (float64): ``unk`` of ``lengths`` tokens; NaN for a row without tokens."""
    lengths = np.asarray(lengths, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, np.asarray(unk, np.float64) / lengths, np.nan)


def in_domain(shares: np.ndarray, max_oov: float | None) -> np.ndarray:
    """The cut: true for each row to score, false where its OOV share exceeds ``max_oov``. A row
    without tokens (NaN) is never cut; ``max_oov`` None (or 1, since a share is at most 1): none is."""
    shares = np.asarray(shares, np.float64)
    return ~(shares > max_oov) if max_oov is not None else np.ones(len(shares), bool)


def cut_statuses(statuses: Sequence[str], keep: np.ndarray) -> list[str]:
    """``statuses`` with the ``ok`` rows that ``keep`` (one per ``ok`` row, in order) leaves out
    marked ``out_of_domain``."""
    out = list(statuses)
    if not np.all(keep):
        ok_rows = [i for i, s in enumerate(out) if s == OK]
        for i in np.flatnonzero(~np.asarray(keep, bool)):
            out[ok_rows[i]] = OUT_OF_DOMAIN
    return out


def records(statuses: Sequence[str], probs: np.ndarray, oov: np.ndarray) -> list[dict[str, Any]]:
    """One ``{"prob_pos", "status", "oov_share"}`` per row, ``None`` for NaN (JSON ``null``)."""
    return [{"prob_pos": _number(p), "status": s, "oov_share": _number(o)}
            for s, p, o in zip(statuses, probs, oov)]


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)
