"""What every configuration model shares: an unknown key is refused, in one line that names it and
the nearest valid key.

The configuration models (the flows' forms and the parameter models inside them) forbid keys they
do not know (``extra="forbid"``): pydantic refuses them, and the JSON schema Prefect makes of a
flow's parameters says ``additionalProperties: false``, which a Prefect server checks when a
deployment's run is created. ``Config`` adds the message: before a model validates, the keys of
its input are checked against its fields at every depth, and each unknown one is named with the
nearest valid key of the whole model (``difflib``): ``{"train": {"max_epoch": 3}}`` and
``{"max_epoch": 3}`` given to the training flow's form both answer ``unknown key ... (did you mean
'train.max_epochs'?)``. The models of ``tasks/core`` import nothing of sentiflow: they forbid
unknown keys alone, and the form that holds them names the key and the nearest one.

``error_line`` turns a pydantic ``ValidationError`` into one line, for an error boundary.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

UNKNOWN_KEY = "unknown_key"  # the pydantic error type of an unknown key, as Config reports it


class Config(BaseModel):
    """A configuration model: unknown keys refused, each named with the nearest valid one."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = list(unknown_keys(cls, data))
            if unknown:
                raise PydanticCustomError(UNKNOWN_KEY, "{message}",
                                          {"message": "; ".join(unknown_key(cls, p) for p in unknown)})
        return data


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds (also as ``Model | None``); None for any other field."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of ``model`` as a dotted path, the fields of nested models too, in field
    order: ``["data", "data.source", ..., "train.max_epochs", ...]``."""
    paths = []
    for name, info in model.model_fields.items():
        paths.append(prefix + name)
        inner = nested_model(info.annotation)
        if inner is not None:
            paths += field_paths(inner, f"{prefix}{name}.")
    return paths


def unknown_keys(model: type[BaseModel], data: Mapping[Any, Any], prefix: str = "") -> Iterator[str]:
    """The dotted paths of the keys in ``data`` that ``model`` has no field for, at every depth."""
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            yield f"{prefix}{key}"
            continue
        inner = nested_model(info.annotation)
        if inner is not None and isinstance(value, Mapping):
            yield from unknown_keys(inner, value, f"{prefix}{key}.")


def nearest(model: type[BaseModel], path: str) -> list[str]:
    """The valid paths nearest the unknown ``path``: those whose last name is the most like its
    last name (``difflib``'s ratio, at least 0.6), the one beside it first and alone when there is
    one; none when no name is near."""
    parent, _, leaf = path.rpartition(".")
    scored: dict[str, float] = {}
    for candidate in field_paths(model):
        name = candidate.rpartition(".")[2]
        scored[candidate] = difflib.SequenceMatcher(None, leaf, name).ratio()
    best = max(scored.values(), default=0.0)
    if best < 0.6:
        return []
    top = [p for p, score in scored.items() if score == best]
    beside = [p for p in top if p.rpartition(".")[0] == parent]
    return beside or top


def unknown_key(model: type[BaseModel], path: str) -> str:
    """``unknown key 'train.max_epoch' (did you mean 'train.max_epochs'?)``; with no near name,
    the valid keys where it stands."""
    near = nearest(model, path)
    if near:
        return f"unknown key {path!r} (did you mean {' or '.join(map(repr, near[:3]))}?)"
    parent = path.rpartition(".")[0]
    here = [p.rpartition(".")[2] for p in field_paths(model) if p.rpartition(".")[0] == parent]
    return f"unknown key {path!r} (valid keys{f' of {parent!r}' if parent else ''}: {', '.join(here)})"


def error_line(error: ValidationError) -> str:
    """A pydantic error as one line: each problem as ``where: what (got value)``, joined by
    ``; ``; an unknown key as ``Config`` words it (``extra_forbidden``, from a model that forbids
    unknown keys alone: ``unknown key 'where'``)."""
    parts = []
    for e in error.errors(include_url=False):
        where = ".".join(str(part) for part in e["loc"])
        if e["type"] == UNKNOWN_KEY:
            parts.append(f"{where}: {e['msg']}" if where else e["msg"])
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            got = repr(e.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            parts.append(f"{where + ': ' if where else ''}{e['msg']} (got {got})")
    return "; ".join(parts)
