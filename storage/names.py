"""Names a caller gives (a registered model, an experiment), checked at the door.

A name is checked where it enters (a CLI option, a flow parameter, a setting), by MLflow's own
rules, so a bad one ends the command in one line before anything runs, and never reaches the
tracking server after a full training. A name never becomes a path: where sentiflow keeps
something per name (the selection lock of a registered model), the folder is named by the name's
hash (``name_key``).

The rules are MLflow 3's (``mlflow.utils.validation._validate_model_name`` and
``_validate_experiment_name``), written out here so that checking a setting needs no MLflow import
(``sentiflow status`` answers in a second); ``tests/test_names.py`` holds them against MLflow's.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Annotated

from pydantic import AfterValidator

MAX_MODEL_NAME = 256  # the registry's column (MLflow's SQL store: registered_models.name)
MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH


def check_model_name(name: str) -> str:
    """``name`` if MLflow accepts it as a registered model's name, else ``ValueError`` saying why:
    empty, ``/`` or ``:`` in it, a name that a path would normalise to another (``a/../b``,
    ``./x``, ``..``), control characters, or longer than ``MAX_MODEL_NAME``."""
    if not name or not name.strip():
        raise ValueError("a registered model name cannot be empty")
    if "/" in name or ":" in name:
        raise ValueError(f"registered model name {name!r}: names cannot contain '/' or ':'")
    _check_plain(name, "registered model name", MAX_MODEL_NAME)
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        raise ValueError(f"registered model name {name!r} would be read as the path {norm!r}")
    return name


def check_experiment_name(name: str) -> str:
    """``name`` if MLflow accepts it as an experiment's name (not blank, at most
    ``MAX_EXPERIMENT_NAME`` characters), with no control characters, else ``ValueError``.
    MLflow refuses a name of only spaces from 3.18 on; earlier releases took it."""
    if not name.strip():
        raise ValueError(f"an experiment name cannot be blank: {name!r}")
    _check_plain(name, "experiment name", MAX_EXPERIMENT_NAME)
    return name


def _check_plain(name: str, what: str, longest: int) -> None:
    if len(name) > longest:
        raise ValueError(f"{what} {name[:40]!r}…: longer than {longest} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {name!r}: control characters are not allowed")


def name_key(name: str) -> str:
    """The folder-safe key of a user-given name (hex): what a per-name lock file is called."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


ModelName = Annotated[str, AfterValidator(check_model_name)]
ExperimentName = Annotated[str, AfterValidator(check_experiment_name)]
