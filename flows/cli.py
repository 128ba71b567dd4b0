"""The ``sentiflow`` command line: typed commands over the flows, nothing else.

Each command builds its settings once (the environment with its own options over it:
``command_settings``, which first marks the runs whose process died, ``flows/reaper.py``) and its configuration from the options it was given (``flows/options.py``),
hands both to the flow it runs, and prints what the flow returns (``flows/views.py``). Its process
starts and ends in ``flows/lifecycle.py``: one error boundary (bad input is one line and exit 1),
Prefect's server started early, the exit without the interpreter's teardown. Heavy libraries are
imported inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sentiflow.flows.alerts_cli import app as alerts_app
from sentiflow.flows.deployments import RETRAIN_CRON
from sentiflow.flows.lifecycle import (
    command_settings,
    run_and_exit,
    start_prefect_early,
    user_errors,
)
from sentiflow.flows.options import (
    PREDICT,
    PREPARE,
    SCORE,
    SWEEP,
    TRAIN,
    AsJson,
    Average,
    BatchSize,
    Bidirectional,
    Cell,
    DataRoot,
    Device,
    Dropout,
    EmbedDim,
    Force,
    FreezeEmbeddings,
    GateMargin,
    GateSource,
    Head,
    HiddenDim,
    HtmlBreaks,
    Layers,
    Lowercase,
    Lr,
    LrSchedule,
    MaxEpochs,
    MaxLen,
    MaxOov,
    MaxSize,
    MinFreq,
    ModelName,
    ModelUri,
    NgramBuckets,
    NgramEpochs,
    NgramLr,
    Ngrams,
    Out,
    Parallel,
    Preset,
    Pretrained,
    RnnTarget,
    Seed,
    Source,
    Space,
    Split,
    SweepName,
    SweepSeed,
    Threshold,
    Timeout,
    TrainSeed,
    Trials,
    ValFraction,
    WordDropout,
    Workers,
    check_force,
)
from sentiflow.flows.views import console, say
from sentiflow.storage.settings import record_source

app = typer.Typer(help="sentiflow: train an LSTM sentiment classifier on reviews, score new ones.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(alerts_app, name="alerts")


@app.command(cls=PREPARE.command)
def prepare(
    source: Source = None, data_root: DataRoot = None, val_fraction: ValFraction = None,
    seed: Seed = None, lowercase: Lowercase = None, html_breaks: HtmlBreaks = None,
    min_freq: MinFreq = None, max_size: MaxSize = None, force: Force = None, workers: Workers = None,
) -> None:
    """Run the data stages, reusing the cached ones.

    When every stage is stored and intact (checksummed), nothing runs: no flow and no Prefect
    server."""
    from sentiflow.flows.views import stage_table

    with user_errors():
        settings = command_settings(data_root=data_root, source=source, workers=workers)
        config = PREPARE.build(val_fraction=val_fraction, seed=seed, lowercase=lowercase,
                               html_breaks=html_breaks, min_freq=min_freq, max_size=max_size)
        force = check_force(force)
        if not force:
            from sentiflow.flows.status import stored_result

            stored = stored_result(settings.fill(config), settings.data_root)
            if stored is not None:
                record_source(settings.data_root, settings.fill(config).source)
                console.print(stage_table(stored))
                say("every stage is stored and intact: nothing to run (no flow run; --force STAGE runs one again)")
                return
        server = start_prefect_early()
        from sentiflow.flows.data_flow import data_flow_for

        server.join()
        result = data_flow_for(settings)(config=config, force=force)
    console.print(stage_table(result))


@app.command(cls=PREPARE.command)
def status(
    source: Source = None, data_root: DataRoot = None, val_fraction: ValFraction = None,
    seed: Seed = None, lowercase: Lowercase = None, html_breaks: HtmlBreaks = None,
    min_freq: MinFreq = None, max_size: MaxSize = None, as_json: AsJson = False,
) -> None:
    """Show how the service stands and which data stages are stored.

    The champion, the last training and scoring runs, what runs now and the last failure (the
    data root's run journal), the next scheduled runs where a Prefect server is configured; then
    each data stage: stored, missing or damaged for this source. Nothing is started and neither
    Prefect nor MLflow is loaded (a run whose process died is marked so first)."""
    with user_errors():
        settings = command_settings(data_root=data_root, source=source)
        config = PREPARE.build(val_fraction=val_fraction, seed=seed, lowercase=lowercase,
                               html_breaks=html_breaks, min_freq=min_freq, max_size=max_size)
        config = settings.fill(config)  # no flow runs: filled here, as a flow fills its own
        from sentiflow.flows.service import service_state
        from sentiflow.flows.status import data_status

        service = service_state(settings)
        rows = data_status(config, settings.data_root)
    if as_json:
        typer.echo(json.dumps({"service": service.as_json(), "stages": [r.__dict__ for r in rows]}, indent=2))
        return
    from sentiflow.flows.views import service_table, status_table

    console.print(service_table(service, settings.data_root))
    console.print(status_table(rows, f"data stages of {config.source} in {settings.data_root}"))


@app.command(cls=TRAIN.command)
def train(
    source: Source = None, data_root: DataRoot = None, preset: Preset = None,
    max_epochs: MaxEpochs = None, batch_size: BatchSize = None, lr: Lr = None,
    lr_schedule: LrSchedule = None, word_dropout: WordDropout = None, average: Average = None,
    max_len: MaxLen = None, train_seed: TrainSeed = None, device: Device = None,
    embed_dim: EmbedDim = None, hidden_dim: HiddenDim = None, cell: Cell = None, layers: Layers = None,
    bidirectional: Bidirectional = None, dropout: Dropout = None, head: Head = None,
    ngrams: Ngrams = None, ngram_buckets: NgramBuckets = None, ngram_epochs: NgramEpochs = None,
    ngram_lr: NgramLr = None, rnn_target: RnnTarget = None,
    pretrained: Pretrained = None,
    freeze_embeddings: FreezeEmbeddings = None, model_name: ModelName = None,
    gate_source: GateSource = None, gate_margin: GateMargin = None,
    val_fraction: ValFraction = None, seed: Seed = None, lowercase: Lowercase = None,
    html_breaks: HtmlBreaks = None, min_freq: MinFreq = None, max_size: MaxSize = None,
    force: Force = None, workers: Workers = None,
) -> None:
    """Prepare the data (cached), train, select the best epoch and register it.

    The champion alias moves only when the gate finds the new model better on the same rows."""
    options = dict(locals())
    with user_errors():
        server = start_prefect_early(launch_now=True)
        settings = command_settings(data_root=data_root, source=source, workers=workers)
        config = TRAIN.of(options)
        force = check_force(force)
        from sentiflow.flows.runs import with_settings
        from sentiflow.flows.train_flow import train_flow
        from sentiflow.flows.views import print_trained

        server.join()
        outcome = with_settings(train_flow, settings)(config=config, force=force)
    print_trained(outcome, outcome.tracking_uri)


@app.command(cls=SWEEP.command)
def sweep(
    trials: Trials = None, timeout: Timeout = None, parallel: Parallel = None, name: SweepName = None,
    space: Space = None, sweep_seed: SweepSeed = None,
    source: Source = None, data_root: DataRoot = None, preset: Preset = None,
    max_epochs: MaxEpochs = None, batch_size: BatchSize = None, lr: Lr = None,
    lr_schedule: LrSchedule = None, word_dropout: WordDropout = None, average: Average = None,
    max_len: MaxLen = None, train_seed: TrainSeed = None, device: Device = None,
    embed_dim: EmbedDim = None, hidden_dim: HiddenDim = None, cell: Cell = None, layers: Layers = None,
    bidirectional: Bidirectional = None, dropout: Dropout = None, head: Head = None,
    ngrams: Ngrams = None, ngram_buckets: NgramBuckets = None, ngram_epochs: NgramEpochs = None,
    ngram_lr: NgramLr = None, rnn_target: RnnTarget = None,
    pretrained: Pretrained = None,
    freeze_embeddings: FreezeEmbeddings = None, model_name: ModelName = None,
    gate_source: GateSource = None, gate_margin: GateMargin = None,
    val_fraction: ValFraction = None, seed: Seed = None, lowercase: Lowercase = None,
    html_breaks: HtmlBreaks = None, min_freq: MinFreq = None, max_size: MaxSize = None,
    workers: Workers = None,
) -> None:
    """Search the training options with Optuna; the best trial goes through the gate.

    Each trial is an ordinary training (MLflow child runs under one parent run), pruned on its
    per-epoch val_acc. The training options given here are fixed for every trial and left out
    of the search. Killed, the same command continues the sweep."""
    options = dict(locals())
    with user_errors():
        server = start_prefect_early(launch_now=True)
        settings = command_settings(data_root=data_root, source=source, workers=workers)
        config = SWEEP.of({**options, "space": str(space) if space else None})
        from sentiflow.flows.sweep_flow import sweep_flow_for
        from sentiflow.flows.views import print_swept

        server.join()
        outcome = sweep_flow_for(settings)(config=config)
    print_swept(outcome)


@app.command(cls=SCORE.command)
def score(
    source: Source = None, data_root: DataRoot = None, model: ModelUri = None, out: Out = None,
    split: Split = None, threshold: Threshold = None, max_oov: MaxOov = None, workers: Workers = None,
    force: Annotated[bool, typer.Option("--force", help="Score again even when cached.")] = False,
) -> None:
    """Score reviews with a registered model and report drift.

    Writes predictions Parquet (id, prob_pos, pred, label, status, oov_share) and an evaluation
    run in MLflow: metrics where the source has labels, and how far the reviews are from the
    model's training data. Drift warnings are printed."""
    with user_errors():
        server = start_prefect_early(launch_now=True)
        settings = command_settings(data_root=data_root, source=source, workers=workers)
        config = SCORE.build(model=model, out=str(out) if out else None, split=split, threshold=threshold,
                             max_oov=max_oov)
        from sentiflow.flows.runs import with_settings
        from sentiflow.flows.score_flow import prewarm, score_flow
        from sentiflow.flows.views import print_scored

        prewarm(settings)  # while the server starts
        server.join()
        outcome = with_settings(score_flow, settings)(config=config, force=force)
    print_scored(outcome)


@app.command(cls=PREDICT.command)
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="Reviews to score; none (or '-'): one review per line from standard input.")] = None,
    model: ModelUri = None, data_root: DataRoot = None, threshold: Threshold = None, max_oov: MaxOov = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per review.")] = False,
) -> None:
    """Print P(positive) for each review given on the command line or standard input.

    With --json, each review's status and OOV share too (its share of tokens outside the model's
    vocabulary): the same answer as `score` and the served model give."""
    from sentiflow.tasks.scoring.predict import predict_rows, read_lines

    if not texts or texts == ["-"]:  # bytes that are not UTF-8 are kept: status not_text
        texts = read_lines(sys.stdin.buffer)
    with user_errors():
        settings = command_settings(data_root=data_root)
        config = PREDICT.build(model=model, threshold=threshold, max_oov=max_oov)
        from sentiflow.storage.tracking import configure

        configure(settings)
        rows = predict_rows(config.model, texts, config.params.threshold, config.params.max_oov)
    from sentiflow.flows.views import prediction_line

    for row in rows:
        if as_json:
            text = row["text"]
            typer.echo(json.dumps({**row, "text": text if isinstance(text, str) else repr(text)},
                                  ensure_ascii=False))
        else:
            typer.echo(prediction_line(row))


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, UTC); '' for none.")] = RETRAIN_CRON,
    limit: Annotated[Optional[int], typer.Option(help="Flow runs at once at most.")] = 1,
) -> None:
    """Serve the deployments train/weekly, score/on-demand and sweep/search from this process.

    Scheduled and triggered runs execute here, no worker needed (Ctrl-C stops)."""
    from prefect import serve as prefect_serve

    from sentiflow.flows.deployments import runner_deployments

    command_settings()  # runs of the environment's data root whose process died: marked first
    prefect_serve(*runner_deployments(cron or None), limit=limit)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    data_root: DataRoot = None,
) -> None:
    """Start the MLflow UI on the store sentiflow writes to.

    That is the SQLite file under the data root, or MLFLOW_TRACKING_URI; with a tracking server,
    its address is printed instead."""
    import os

    from sentiflow.storage.redact import redact
    from sentiflow.storage.tracking import ui_address

    with user_errors():
        settings = command_settings(data_root=data_root)
        uri = settings.resolved_tracking_uri
    if uri.startswith("http"):
        say(f"MLflow tracking server: {redact(uri)} (open it in a browser)")
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        from sentiflow.flows.views import err_console

        err_console.print(f"[bold red]error:[/] no MLflow store at {uri}: run `sentiflow train` first")
        raise typer.Exit(1)
    say(f"MLflow UI on {ui_address(host, port, uri, settings.experiment)} for {redact(uri)} (Ctrl-C stops)")
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"]
    sys.stdout.flush()  # exec replaces the process: what is buffered would be lost
    # the store's URI (a PostgreSQL DSN may hold a password) by environment: `ps` shows a command line
    os.execvpe(cmd[0], cmd, {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri})


@app.command()
def stages(data_root: DataRoot = None, as_json: AsJson = False) -> None:
    """List the stored stages: stage, key, rows, size and when it was made.

    A part's shards (tokenize, encode) show as a count, with how many it shares with an earlier
    part (reused, not recomputed)."""
    with user_errors():
        root = command_settings(data_root=data_root).data_root
    if as_json:
        from sentiflow.storage.store import Store

        typer.echo(json.dumps(Store(root).list(), indent=2))
        return
    from sentiflow.flows.status import stored_stages
    from sentiflow.flows.views import stages_table

    console.print(stages_table(stored_stages(root), f"stages in {root}"))


def main() -> None:
    """The ``sentiflow`` script (``flows/lifecycle.py``: ``run_and_exit``)."""
    run_and_exit(app)


if __name__ == "__main__":
    main()
