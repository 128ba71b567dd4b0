"""What the commands print: tables and summary lines, built from what the flows return.

Plain formatting only: every figure shown here was computed by a flow or a stage; nothing is read
from a store or scored here.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def say(text: str) -> None:
    """A line as is: no markup, no highlighting, no wrapping mid-word."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def warn(text: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {text}", soft_wrap=True, highlight=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def stage_table(result) -> Table:
    """A data flow's result (``PreparedData``): each task run's state, key, rows and shards."""
    table = Table(title="data stages")
    for col in ("task", "state", "key", "rows", "shards"):
        table.add_column(col)
    refs = result.refs()
    for name, state in result.states.items():
        ref = refs[name]
        shards = result.shards.get(name)
        table.add_row(name, state, ref.key, str(ref.manifest().get("total_rows", "")),
                      shard_counts(shards) if shards else "")
    return table


def shard_counts(states: dict[str, int]) -> str:
    """A part's shard tasks: "44: 40 reused, 4 computed" (Cached = reused)."""
    total = sum(states.values())
    reused = states.get("Cached", 0)
    rest = ", ".join(f"{n} {s.lower()}" for s, n in states.items() if s not in ("Cached", "Completed"))
    return f"{total}: {reused} reused, {states.get('Completed', 0)} computed" + (f", {rest}" if rest else "")


def status_table(rows: list[Any], title: str) -> Table:
    """``sentiflow status``: each planned task run's state (cached green, else yellow)."""
    table = Table(title=title)
    for col in ("task", "state", "key", "shards"):
        table.add_column(col)
    for r in rows:
        style = "green" if r.state == "cached" else "yellow"
        table.add_row(r.task, f"[{style}]{r.state}[/]", r.key, r.shards)
    return table


def service_table(state: Any, data_root: Any) -> Table:
    """``sentiflow status``'s first table: the champion, the last runs, what runs now, the last
    failure, the next scheduled runs (``sentiflow.flows.service``)."""
    from sentiflow.flows.service import when

    mode = f"Prefect server {state.api}" if state.api else "embedded (no Prefect server)"
    table = Table(title=f"service: {data_root}, {mode}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    c = state.champion
    table.add_row("champion", "none yet (no training of this data root promoted one)" if c is None else
                  f"{c.outcome.get('model')} v{c.outcome.get('version')}, test {_pct(c.outcome.get('test_acc'))}, "
                  f"promoted {when(c.ended)} by {c.name}; gate: {_gate(c.outcome)}")
    t = state.last_training
    table.add_row("last training", "none" if t is None else f"{t.name}: {_state(t)} {when(t.ended or t.started)}"
                  + (f"; v{t.outcome['version']} {'promoted' if t.outcome.get('promoted') else 'not promoted'}: "
                     f"{t.outcome.get('reason')}" if t.outcome.get("version") else ""))
    s = state.last_scoring
    table.add_row("last scoring", "none" if s is None else f"{s.name}: {_state(s)} {when(s.ended or s.started)}"
                  + (f"; {s.outcome['rows']:,} rows" if s.outcome.get("rows") is not None else "")
                  + (f", accuracy {_pct(s.outcome['accuracy'])}" if s.outcome.get("accuracy") is not None else "")
                  + ("; [yellow]drift warning[/]" if s.outcome.get("drift") else ""))
    if state.running:
        table.add_row("running now", "; ".join(f"{r.name} since {when(r.started)} (pid {r.process.pid} on "
                                               f"{r.process.host})" for r in state.running))
    f = state.last_failure
    table.add_row("last failure", "none" if f is None else
                  f"[red]{f.name}: {f.state} {when(f.ended or f.started)}[/]: {f.message}")
    if not state.api:
        table.add_row("scheduled", "no Prefect server configured: schedules run under `sentiflow serve` or a worker")
    elif state.scheduled_error:
        table.add_row("scheduled", f"[yellow]the server did not answer: {state.scheduled_error}[/]")
    else:
        table.add_row("scheduled", "; ".join(f"{r.deployment} at {when(r.at)}" for r in state.scheduled)
                      or "nothing scheduled")
    return table


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _state(record: Any) -> str:
    colour = {"completed": "green", "running": "cyan"}.get(record.state, "red")
    return f"[{colour}]{record.state}[/]"


def _gate(outcome: dict[str, Any]) -> str:
    if outcome.get("champion_acc") is None:
        return f"{_pct(outcome.get('challenger_acc'))}, {outcome.get('reason')}"
    return (f"{_pct(outcome.get('challenger_acc'))} against v{outcome.get('champion_version')}'s "
            f"{_pct(outcome.get('champion_acc'))} on the same rows")


def print_trained(outcome: Any, tracking_uri: str) -> None:
    """``sentiflow train``'s result: the data stages, the run, the best epoch, the registration
    and the gate's verdict."""
    s = outcome.selected
    console.print(stage_table(outcome.data))
    say(f"MLflow run: {outcome.train.run_id}  (tracking URI {tracking_uri})")
    say_selected(s, f"best epoch {s.best_epoch}")


def say_selected(s: Any, best: str) -> None:
    """A selection's lines: ``best`` with its accuracies, the registration, the gate's verdict."""
    say(f"{best}: val_acc {s.val_acc:.4f}" + (f", test_acc {s.test_acc:.4f}" if s.test_acc is not None else ""))
    say(f"registered {s.model_name} version {s.version} as @{s.alias}  (models:/{s.model_name}@{s.alias})")
    if s.gate is not None:
        say(f"champion gate: {'promoted' if s.gate.promote else 'not promoted'}: {s.gate.reason}")


def print_swept(outcome: Any) -> None:
    """``sentiflow sweep``'s result: a row per trial, the best, the registration, the gate."""
    from rich.table import Table

    table = Table("trial", "state", "val_acc", "epochs", "MLflow run", title=f"sweep {outcome.name}")
    for t in outcome.trials:
        state = f"pruned after {t.pruned_at}" if t.pruned_at is not None else "complete"
        mark = " (best)" if t.number == outcome.best.number else ""
        table.add_row(f"{t.number}{mark}", state, f"{t.value:.4f}", f"{t.epochs}/{t.max_epochs}", t.run_id)
    console.print(table)
    pruned = sum(t.pruned_at is not None for t in outcome.trials)
    say(f"{len(outcome.trials)} trials, {pruned} pruned ({outcome.epochs_saved} epochs saved); parent MLflow run "
        f"{outcome.parent_run_id}" + (f"; resumed trial(s) {outcome.requeued}" if outcome.requeued else ""))
    say_selected(outcome.selected, f"best: trial {outcome.best.number}, epoch {outcome.selected.best_epoch}")


def print_scored(outcome: Any) -> None:
    """``sentiflow score``'s result: rows by status, speed, metrics where labelled, drift."""
    s, m = outcome.stats, outcome.stats.metrics()
    say(f"model {outcome.model.requested} → {outcome.model.uri}")
    say(f"{s.rows:,} rows ({', '.join(f'{k} {v:,}' for k, v in s.statuses.items() if v)}) "
        f"in {s.seconds:.1f} s, {s.reviews_per_second:,.0f} reviews/s"
        + (" (cached)" if outcome.state == "Cached" else ""))
    if m:
        say(f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}"
            f"  F1 {m['f1']:.4f}  on {s.labeled_rows:,} labeled rows;"
            f"  MLflow evaluation run {outcome.evaluation_run_id}")
    print_drift(s)
    say(f"predictions: {outcome.predictions}")


def print_drift(stats: Any) -> None:
    """The drift against the model's training split: a line of figures, each warning on stderr."""
    d = stats.drift
    if d is None:
        say(f"drift: not measured ({stats.drift_note})")
        return
    mt = d.metrics
    if "drift_length_psi" in mt:
        say(f"drift against the training split: length PSI {mt['drift_length_psi']:.3f}, "
            f"OOV share PSI {mt['drift_oov_psi']:.3f}; tokens outside the vocabulary "
            f"{100 * mt['oov_token_share']:.2f} % (training {100 * mt.get('train_oov_token_share', 0):.2f} %)")
    for w in d.warnings:
        warn(w)


def prediction_line(row: dict[str, Any]) -> str:
    """``sentiflow predict``'s line for a row: probability, label and the review's start; or its
    status where it has no probability."""
    text = row["text"]
    snippet = " ".join((text if isinstance(text, str) else repr(text)).split())
    snippet = snippet[:70] + "…" if len(snippet) > 71 else snippet
    prob = row["prob_pos"]
    return f"{prob:.4f}  {row['label']}  {snippet}" if prob is not None else f"-       {row['status']}  {snippet}"


def stages_table(rows: list[dict[str, Any]], title: str) -> Table:
    """``sentiflow stages``: the stored stages (rows of ``flows.status.stored_stages``)."""
    table = Table(title=title)
    for col in ("stage", "key", "rows", "size", "created", "shards"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["stage"], r["key"], f"{r['rows']:,}",
                      human_bytes(r["bytes"]), r["created"], r["shards"])
    return table
