"""Training presets: named sets of the ordinary ``sentiflow train`` options, nothing more.

``sentiflow train --preset best`` is the same as typing the options below; an option typed as
well wins over the preset's. The configuration a preset gives is logged like any other (the
run's params), and the run is tagged ``sentiflow.preset``. ``default`` is the pipeline's own
defaults (``TrainFlowConfig``). Measured accuracy and minutes: docs/benchmarks.md, "Presets".
"""

from __future__ import annotations

from typing import Any

# option name (as ``sentiflow train`` spells it, underscores for dashes) → value
PRESETS: dict[str, dict[str, Any]] = {
    # the seed's kind of model, a few epochs: a quick check that everything runs end to end
    "fast": {"bidirectional": False, "pretrained": "none", "embed_dim": 100, "head": "last+max",
             "max_epochs": 3},
    "default": {},
    # the most accurate configuration measured here (chosen on validation; docs/benchmarks.md):
    # the default BiLSTM plus an NBSVM-like term over words and word pairs, whose log-odds add to
    # the RNN's. Tried and not better than the default alone: 10 epochs with word dropout 0.1 on a
    # vocabulary of every word seen twice (val 91.06 %, test 90.02 %), 12 epochs with word dropout 0.1
    "best": {"ngrams": 2},
}


def describe(name: str) -> str:
    """``--bidirectional --max-epochs 6 ...``: the options a preset stands for."""
    parts = []
    for option, value in PRESETS[name].items():
        flag = "--" + option.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{option.replace('_', '-')}")
        elif value is None:
            parts.append(f"{flag} none")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts) or "(the defaults)"


def with_preset(name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (``None``: not given) over the preset's values."""
    if name is None:
        return options
    if name not in PRESETS:
        raise KeyError(name)
    given = {k: v for k, v in options.items() if v is not None}
    return {**options, **PRESETS[name], **given}
