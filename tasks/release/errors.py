"""What an error met while reading the champion means: an outage to ride out, or a champion gone.

The gate reads the champion's registry entry, training run, stages and model files. A network
error there says nothing about the champion: the read is tried again (``retried``) and, if the
outage lasts, the selection ends with ``ChampionUnreachable`` and writes no verdict, so a rerun
judges again. Only a champion that is really gone (``classify`` says ``GONE``) is kept and
reported, as the verdict of the version being selected.
"""

from __future__ import annotations

import logging
import pickle
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

log = logging.getLogger("sentiflow.champion")

TRANSIENT, GONE, OTHER = "transient", "gone", "other"
Kind = Literal["transient", "gone", "other"]

# A read of the champion is tried this many times in all, waiting FIRST_WAIT_S, then twice that
# (2 s, 4 s). Each try's MLflow requests have MLflow's own retries (sentiflow.flows sets 4, with
# backoff): together well under a minute against a server that refuses connections.
TRIES = 3
FIRST_WAIT_S = 2.0

# MLflow's error codes for an answer to ask again (HTTP 503, 429, 504)
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
# text of a network failure or a 408/429/5xx answer, in an MLflow message that carries no error
# object: its parallel download joins each file's error as text; a non-JSON 5xx answer
_TRANSIENT_TEXT = re.compile(
    r"Connection (?:refused|reset|aborted)|Max retries exceeded|timed out|timeout exception"
    r"|RemoteDisconnected|Temporary failure in name resolution|too many (?:408|429|5\d\d) error responses"
    r"|error code (?:408|429|5\d\d)\b|\b(?:408|429|5\d\d) (?:Server|Client) Error"
    r"|database is locked", re.IGNORECASE)
_GONE_TEXT = re.compile(r"\b404 Client Error|No such (?:file|artifact)|RESOURCE_DOES_NOT_EXIST|not found",
                        re.IGNORECASE)
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


class ChampionGone(Exception):
    """The champion, or a part of it the gate needs, is gone: kept and reported."""


class ChampionUnreachable(ConnectionError):
    """The champion could not be read for an outage that outlasted the retries. A
    ``ConnectionError``: the command line reports it in one line, no traceback."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors behind it (``__cause__``, else ``__context__``: MLflow and
    ``serving`` re-raise ``from None``, which keeps the context)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _transient(error: BaseException) -> bool:
    """One error, not its chain: a network failure or an answer to ask again."""
    import requests
    import urllib3
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, ChampionUnreachable):
        return False  # already the end of the retries
    if isinstance(error, requests.HTTPError):
        status = _status(error)
        return status is not None and (status >= 500 or status in (408, 429))
    if isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                          requests.exceptions.RetryError, urllib3.exceptions.HTTPError,
                          ConnectionError, TimeoutError)):
        return True
    if isinstance(error, MlflowException):
        if error.error_code in _TRANSIENT_CODES:
            return True
        if isinstance(error, RestException) and error.error_code == "INTERNAL_ERROR":
            return True  # the server answered 500
        return bool(_TRANSIENT_TEXT.search(error.message or ""))
    return False


def _gone(error: BaseException) -> bool:
    """One error, not its chain: the thing read is not there, or not loadable."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, ChampionGone):
        return True
    if isinstance(error, ChampionUnreachable):
        return False
    if isinstance(error, requests.HTTPError):
        return _status(error) == 404
    if isinstance(error, requests.RequestException):
        return False
    if isinstance(error, MlflowException):
        return error.error_code == "RESOURCE_DOES_NOT_EXIST" or bool(_GONE_TEXT.search(error.message or ""))
    return isinstance(error, _LOAD_ERRORS)


def classify(error: BaseException) -> Kind:
    """``TRANSIENT``, ``GONE`` or ``OTHER``, for an error met reading or scoring the champion.

    ============================================================  =========  ========================
    the error (for TRANSIENT: anywhere in its chain)              kind       what the gate does
    ============================================================  =========  ========================
    connection refused, reset or aborted; a timeout: Python's     TRANSIENT  tried again (``TRIES``
    ``ConnectionError``/``TimeoutError``, requests'                          in all, with backoff),
    ``ConnectionError``/``Timeout``/``ChunkedEncodingError``/                then ends the selection
    ``RetryError``, urllib3's errors (MLflow wraps them in an                with
    ``MlflowException``: ``API request ... failed``)                         ``ChampionUnreachable``:
    HTTP 408, 429, 5xx: requests' ``HTTPError`` with that         TRANSIENT  no verdict, no marker;
    status; MLflow's ``TEMPORARILY_UNAVAILABLE``,                            a rerun judges again
    ``REQUEST_LIMIT_EXCEEDED``, ``DEADLINE_EXCEEDED``; a
    server's ``INTERNAL_ERROR`` answer (``RestException``); an
    MLflow message naming one of these (its parallel download
    joins its files' errors as text), or SQLite's "database
    is locked" (a busy SQLite store)
    MLflow's ``RESOURCE_DOES_NOT_EXIST`` (run, version or         GONE       kept as champion; the
    artifact deleted), HTTP 404, a missing file                              reason names what is
    (``FileNotFoundError``) or any other local ``OSError``                   gone (the verdict of
    (unreadable), a missing or damaged stage (``StageError``),               the version selected)
    a model that does not load (``RuntimeError``,
    ``ValueError``, ``KeyError``, ``EOFError``,
    ``UnpicklingError``, ``ModelError``)
    anything else: a login refused (401, 403,                     OTHER      raised as it is: the
    ``PERMISSION_DENIED``), a bug                                            selection ends, no
                                                                             verdict, no retry
    ============================================================  =========  ========================

    Transient is looked for first, through the whole chain: ``serving.ModelError`` (a
    ``ValueError``) wraps a refused connection as it wraps a missing model. Gone is then read
    from the first error in the chain that says anything (``ModelError`` itself says gone when
    nothing behind it does).
    """
    chain = list(_chain(error))
    if any(_transient(e) for e in chain):
        return TRANSIENT
    from sentiflow.tasks.scoring.serving import ModelError

    for e in chain:
        if isinstance(e, ModelError) and e is not chain[-1]:
            continue  # a wrapper: what it wraps decides
        return GONE if _gone(e) else OTHER
    return OTHER


def transient_cause(error: BaseException) -> BaseException:
    """The first error in the chain that is an outage (``error`` itself when none is): what a
    message shows, not the wrapper around it (``ModelError`` says "not found" for a timeout)."""
    return next((e for e in _chain(error) if _transient(e)), error)


def one_line(error: BaseException, limit: int = 300) -> str:
    """The error's first line, shortened: what a reason or a log line shows."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit - 1] + "…"


@contextmanager
def reading(what: str) -> Iterator[None]:
    """A gone error inside becomes ``ChampionGone`` naming ``what`` was read; others pass."""
    try:
        yield
    except ChampionGone:
        raise
    except Exception as e:  # noqa: BLE001 - classified; what is not gone is raised again
        if classify(e) != GONE:
            raise
        raise ChampionGone(f"{what}: {one_line(e)}") from e


T = TypeVar("T")


def retried(read: Callable[[int], T], what: str, tries: int = TRIES, first_wait_s: float = FIRST_WAIT_S) -> T:
    """``read(attempt)`` (1, 2, ...), tried again after a transient error, waiting
    ``first_wait_s``, then twice as long each time; after ``tries`` tries, a
    ``ChampionUnreachable`` naming ``what`` and the last error. Other errors pass at once."""
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            return read(attempt)
        except Exception as e:  # noqa: BLE001 - classified; what is not transient is raised again
            if classify(e) != TRANSIENT:
                raise
            cause = one_line(transient_cause(e))
            if attempt == tries:
                raise ChampionUnreachable(
                    f"{what} could not be read ({cause}), {tries} tries over "
                    f"{time.monotonic() - started:.0f} s; no verdict written: rerun the selection once "
                    "the tracking server answers") from e
            wait = first_wait_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d of %d in %.0f s", what, cause, attempt, tries - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
