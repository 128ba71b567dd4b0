"""The ``sentiflow`` command line, through typer's runner (in process) and as installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sentiflow.flows.cli import app

runner = CliRunner()
COMMANDS = ["prepare", "train", "stages"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and command in result.output


def test_top_level_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_prepare_then_stages_json(imdb_folder, data_root):
    result = runner.invoke(app, ["prepare", "--source", str(imdb_folder), "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output
    assert "encode-test" in result.output
    listed = runner.invoke(app, ["stages", "--data-root", str(data_root), "--json"])
    rows = json.loads(listed.output)
    by_stage = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r["rows"])
    assert sorted(by_stage["encode"]) == [40, 100, 160]
    assert by_stage["ingest"] == [300] and by_stage["vocab"][0] > 2
    table = runner.invoke(app, ["stages", "--data-root", str(data_root)])
    assert table.exit_code == 0 and "tokenize" in table.output


def test_prepare_rejects_unknown_force_stage(data_root):
    result = runner.invoke(app, ["prepare", "--force", "bogus", "--data-root", str(data_root)])
    assert result.exit_code != 0
    assert "bogus" in result.output


def test_bad_source_is_one_clear_error_not_a_traceback(tmp_path, data_root):
    """As installed: the user sees the message naming the file, and the exit code is non-zero."""
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood film,1\nbad film,maybe\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sentiflow.flows.cli", "prepare", "--source", str(bad), "--data-root", str(data_root)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{bad}, row 2, column 'label'" in errors[0]
    assert not list(data_root.glob("*/*")) or all(
        p.name != "ingest" for p in data_root.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["prepare", "--html-breaks", "foo"], "html_breaks"),
    (["prepare", "--val-fraction", "1.5"], "val_fraction"),
    (["train", "--cell", "transformer"], "cell"),
])
def test_bad_option_values_are_one_clear_error(args, fragment, data_root):
    result = runner.invoke(app, [*args, "--data-root", str(data_root)])
    assert result.exit_code == 1
    assert fragment in result.output and "Traceback" not in result.output
