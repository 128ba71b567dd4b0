"""The ``sentiflow`` command line: a typed layer over the flows."""

from __future__ import annotations

import json
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

DataRoot = Annotated[Optional[Path], typer.Option(
    "--data-root", help="Stage store root [env: SENTIFLOW_DATA_ROOT; default: ./data]")]


@contextmanager
def _user_errors():
    """Bad input ends with one clear line (the file, row and column) and exit code 1."""
    from tasks.sources import SourceError

    try:
        yield
    except SourceError as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@app.command()
def prepare(
    source: Annotated[Optional[str], typer.Option(
        help="Hugging Face dataset id, Parquet/CSV file or folder, aclImdb folder or .tar.gz "
             "[env: SENTIFLOW_SOURCE; default: stanfordnlp/imdb]")] = None,
    data_root: DataRoot = None,
    val_fraction: Annotated[float, typer.Option(help="Share of train held out for validation")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the stratified split")] = 1234,
    lowercase: Annotated[bool, typer.Option(help="Lower-case tokens")] = True,
    html_breaks: Annotated[str, typer.Option(help="'space': <br /> tags become spaces; 'keep'")] = "space",
    min_freq: Annotated[int, typer.Option(help="Vocabulary: minimum token count")] = 1,
    max_size: Annotated[int, typer.Option(help="Vocabulary: most tokens besides specials (0 = no cap)")] = 25_000,
    force: Annotated[Optional[list[str]], typer.Option(
        "--force", help="Recompute this stage even when cached (repeatable): "
                        "ingest, split, tokenize, vocab, encode")] = None,
    workers: Annotated[int, typer.Option(help="Tokenizer processes (0 = all cores)")] = 0,
) -> None:
    """Run the data stages (ingest → split → tokenize → vocab → encode), reusing cached ones."""
    from flows.data_flow import STAGES, DataConfig, prepare_data
    from storage.settings import get_settings
    from tasks.split import SplitParams
    from tasks.tokenize import TokenizeParams
    from tasks.vocab import VocabParams

    for stage in force or []:
        if stage not in STAGES:
            raise typer.BadParameter(f"{stage!r} is not one of {', '.join(STAGES)}", param_hint="--force")
    config = DataConfig(
        source=source or get_settings().source,
        split=SplitParams(val_fraction=val_fraction, seed=seed),
        tokenize=TokenizeParams(lowercase=lowercase, html_breaks=html_breaks),
        vocab=VocabParams(min_freq=min_freq, max_size=max_size or None),
    )
    with _user_errors():
        result = prepare_data(config=config, data_root=str(data_root) if data_root else None,
                              force=force or [], workers=workers)
    table = Table(title="data stages")
    for col in ("task", "state", "key", "rows"):
        table.add_column(col)
    refs = {"ingest": result.ingest, "split": result.split, "vocab": result.vocab,
            **{f"tokenize-{k}": v for k, v in result.tokens.items()},
            **{f"encode-{k}": v for k, v in result.encoded.items()}}
    for name, state in result.states.items():
        ref = refs[name]
        table.add_row(name, state, ref.key, str(ref.manifest().get("total_rows", "")))
    console.print(table)


@app.command()
def stages(
    data_root: DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the stored stages: stage, key, rows, size, created."""
    from storage.settings import get_settings
    from storage.store import Store

    rows = Store(data_root or get_settings().data_root).list()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"stages in {data_root or get_settings().data_root}")
    for col in ("stage", "key", "rows", "size", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["stage"], r["key"], f"{r['rows']:,}", _human_bytes(r["bytes"]), r["created"])
    console.print(table)


if __name__ == "__main__":
    app()
