"""Credentials out of anything shown: a URI's password, every URI in a text. No MLflow import:
``sentiflow status`` and the run journal use it."""

from __future__ import annotations


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
