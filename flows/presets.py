"""Training presets: named sets of configuration values, keyed by field path, applied by the
training flow.

A preset names values of the training flow's form (``TrainFlowConfig``) by their dotted path
(``"model.bidirectional"``). The flow applies it when it starts (``apply_preset``): the preset's
values go over the defaults (the pipeline's, the models' own), and the values the caller set
explicitly go over the preset's: an option typed on the command line, a key in a deployment
run's parameters (``model_fields_set``, at every depth). So ``{"preset": "fast", "train":
{"max_epochs": 2}}`` trains fast's model for 2 epochs, and a deployment run takes
``{"preset": "best"}`` as the command line takes ``--preset best``. The flow tags its MLflow run
``sentiflow.preset``; the configuration a preset gives is logged like any other (the run's
params), and the training key does not depend on how it was reached. Measured accuracy and
minutes: docs/benchmarks.md, "Presets".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
Preset = Literal["fast", "default", "best", "rnn", "seed"]

# preset → {field path of TrainFlowConfig: value}
PRESETS: dict[Preset, dict[str, Any]] = {
    # the seed's kind of model, a few epochs: a quick check that everything runs end to end
    "fast": {"model.ngrams": 0, "model.bidirectional": False, "train.pretrained": None, "model.embed_dim": 100,
             "model.head": "last+max", "train.max_epochs": 3},
    # the pipeline's defaults, nothing changed
    "default": {},
    # the most accurate configuration measured here (chosen on validation; docs/benchmarks.md):
    # the default's mixed model with a BiLSTM for 5 epochs (the term up to word triples, the RNN on
    # what an out-of-fold term misses: the defaults)
    "best": {"model.bidirectional": True, "train.max_epochs": 5},
    # the RNN alone, no n-gram term: the default until issue 21 (a BiLSTM for 8 epochs). Tried and
    # not better: 10 epochs with word dropout 0.1 on a vocabulary of every word seen twice (val
    # 91.06 %, test 90.02 %), 12 epochs with word dropout 0.1
    "rnn": {"model.ngrams": 0, "model.bidirectional": True, "train.max_epochs": 8},
    # the seed's own model: one LSTM direction and its final state on 100-d random embeddings, a
    # constant learning rate, the last weights (84.5 % test accuracy here)
    "seed": {"model.ngrams": 0, "model.embed_dim": 100, "model.bidirectional": False, "model.head": "last",
             "train.max_epochs": 8,
             "train.pretrained": None, "train.lr_schedule": "constant", "train.average": None},
}


def apply_preset(config: M) -> M:
    """``config`` with its preset's values (``config.preset``; None: none) over the defaults and
    under the values its caller set explicitly, at every depth; validated anew. The result keeps
    the preset's name; applying it again changes nothing."""
    name = getattr(config, "preset", None)
    if name is None:
        return config
    merged = nested(PRESETS[name])
    _merge(merged, config.model_dump(exclude_unset=True))
    return type(config).model_validate(merged)


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.head": "last"}`` → ``{"model": {"head": "last"}}``."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _merge(into: dict[str, Any], over: Mapping[str, Any]) -> None:
    """``over``'s values into ``into``, nested dicts merged key by key."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def describe(name: str, options: Mapping[str, str] | None = None, zero_is_none: Collection[str] = ()) -> str:
    """What a preset sets: ``model.bidirectional=False, train.max_epochs=3``; given the command
    line's options (option name → field path) and those where 0 stands for None, as the options
    that set the same: ``--no-bidirectional --max-epochs 3``. ``(the defaults)`` when it sets
    nothing; a path no option sets is written as a path."""
    by_path = {path: option for option, path in (options or {}).items()}
    parts = []
    for path, value in PRESETS[name].items():
        option = by_path.get(path)
        if option is None:
            parts.append(f"{path}={value}")
            continue
        flag = "--" + option.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif value is None:
            parts.append(f"{flag} {0 if option in zero_is_none else 'none'}")
        else:
            parts.append(f"{flag} {value}")
    return (" " if options else ", ").join(parts) or "(the defaults)"
