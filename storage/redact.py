"""Credentials out of anything shown: a URI's password, every URI in a text, an exception's
message (``scrub``), a log record (``RedactedLogs``). No MLflow import: ``sentiflow status`` and
the run journal use it."""

from __future__ import annotations

import functools
import logging
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def redact(uri: str) -> str:
    """``uri`` without a password: ``http://user:secret@host`` → ``http://user:***@host``
    (and a bare token ``http://token@host`` → ``http://***@host``). For anything printed,
    logged or stored as a Prefect artifact."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, _ = userinfo.partition(":")
    masked = f"{user}:***" if sep else "***"
    return urlunsplit(parts._replace(netloc=f"{masked}@{host}"))


def redact_all(text: str) -> str:
    """``text`` (an error message, a summary) with every URI in it redacted. A scheme is at most
    32 characters: unbounded, the pattern took minutes on a long text without one."""
    import re

    return re.sub(r"[a-z][a-z0-9+.-]{0,31}://[^\s'\"()<>\]\[]+", lambda m: redact(m.group(0)), text)


def scrub(error: BaseException) -> BaseException:
    """``error`` and the exceptions it was raised from (``__cause__``, ``__context__``) with every
    URI in their messages redacted, in place: what a traceback, a log line or a Prefect state
    built from them shows. MLflow puts the tracking URI, password included, in a failed request's
    message ("API request to http://user:secret@host/... failed"). Returns ``error``."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.args = tuple(redact_all(a) if isinstance(a, str) else a for a in e.args)
            for attr in ("message", "msg", "url"):  # MlflowException.message; requests' and urllib3's own
                value = getattr(e, attr, None)
                if isinstance(value, str):
                    setattr(e, attr, redact_all(value))
        except (AttributeError, TypeError):  # an exception type with read-only fields: leave it
            pass
        todo += [e.__cause__, e.__context__]
    return error


def scrubbed(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, whose exceptions leave it scrubbed (``scrub``): for the tasks that talk to MLflow,
    so that the failed state Prefect stores and shows holds no password."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            raise scrub(e)

    return call


class RedactedLogs(logging.Filter):
    """A handler's filter: every URI in a record's message, and in its exception, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: the handler says so
            return True
        if "://" in message:
            record.msg, record.args = redact_all(message), None
        if record.exc_info and record.exc_info[1] is not None:
            scrub(record.exc_info[1])
            record.exc_text = None  # formatted again, from the scrubbed exception
        return True


def redact_logs() -> None:
    """Add ``RedactedLogs`` to every handler there is now (the root logger's, Prefect's console
    and API handlers, MLflow's), once each: call it after Prefect has set up its logging."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactedLogs) for f in handler.filters):
                handler.addFilter(RedactedLogs())
