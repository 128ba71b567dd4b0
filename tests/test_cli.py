"""The ``sentiflow`` command line, through typer's runner (in process) and as installed."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

# Prefect sets up its log handlers on the streams of the moment when it is first imported: here,
# not inside an invocation whose captured streams are closed when it returns (help imports it)
import sentiflow.flows.data_flow  # noqa: F401
from sentiflow.flows import cli
from sentiflow.flows.cli import PREDICT, PREPARE, SCORE, TRAIN, app

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
    assert sum(by_stage["encode"]) == 300 and 100 in by_stage["encode"]  # train + val = 200, test
    assert by_stage["ingest"] == [300] and by_stage["vocab"][0] > 2
    assert sorted(by_stage["encode-shard"]) == sorted(by_stage["encode"])  # a shard a part here
    table = runner.invoke(app, ["stages", "--data-root", str(data_root)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "tokenize" in table.output
    assert "(3 folders)" in table.output and "1: 0 reused" in table.output


def _flow_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs())


@pytest.mark.usefixtures("prefect_harness")
def test_warm_prepare_runs_no_flow_and_a_damaged_file_runs_one(imdb_folder, data_root):
    """Everything stored and intact: the table, all Cached, and no flow run (no Prefect server
    needed). A shard whose bytes changed (same size) is caught by its checksum: the flow runs and
    rebuilds it."""
    args = ["prepare", "--source", str(imdb_folder), "--data-root", str(data_root), "--workers", "1"]
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    runs = _flow_runs()
    warm = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert warm.exit_code == 0, warm.output
    assert "nothing to run" in warm.output and "Completed" not in warm.output
    assert warm.output.count("Cached") == 9 and "1: 1 reused, 0 computed" in warm.output
    assert _flow_runs() == runs

    shard = next((data_root / "encode-shard").glob("*/encoded.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.chmod(0o644)
    shard.unlink()  # gathered folders hold hard links to it: write a new file, not through them
    shard.write_bytes(bytes(data))
    repaired = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert repaired.exit_code == 0, repaired.output
    assert "nothing to run" not in repaired.output
    assert "1: 0 reused, 1 computed" in repaired.output  # the damaged shard, computed again
    assert _flow_runs() == runs + 1
    assert runner.invoke(app, args).output.count("nothing to run") == 1


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


@pytest.mark.usefixtures("prefect_harness")
def test_commands_leave_the_environment_alone(imdb_folder, data_root, tmp_path):
    """Settings are built from a command's options and the environment, then passed down as
    arguments: no command writes os.environ (not --data-root, not MLflow's tracking URI)."""
    before = dict(os.environ)
    for args, code in [
        (["prepare", "--source", str(imdb_folder), "--data-root", str(data_root), "--workers", "1"], 0),
        (["stages", "--data-root", str(data_root), "--json"], 0),
        (["predict", "--model", "models:/nope@champion", "--data-root", str(tmp_path / "p"), "a review"], 1),
        (["ui", "--data-root", str(tmp_path / "none")], 1),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == code, result.output
        assert dict(os.environ) == before, args
    assert (data_root / "encode").is_dir()  # the --data-root given, not ./data
    assert (tmp_path / "p" / "mlflow.db").exists()  # predict's store: under its --data-root


def _model_defaults():
    from sentiflow.flows.data_flow import DataConfig
    from sentiflow.flows.score_flow import ScoreConfig
    from sentiflow.flows.train_flow import TrainFlowConfig

    return DataConfig(), TrainFlowConfig(), ScoreConfig()


def test_cli_defaults_are_the_models_defaults():
    data, train, score = _model_defaults()
    # nothing given: the configurations the models default to, the pipeline's head among them
    assert PREPARE.build() == data
    assert TRAIN.build() == train and TRAIN.build().model.head == "max"
    assert SCORE.build() == score and PREDICT.build() == score
    # the CLI writes no default of its own: every option that sets a field defaults to "not given"
    for command, fields in (("prepare", PREPARE), ("train", TRAIN), ("score", SCORE), ("predict", PREDICT)):
        params = inspect.signature(getattr(cli, command)).parameters
        assert {name: params[name].default for name in fields.paths} == dict.fromkeys(fields.paths), command
    # options given land on their fields, the rest keep the defaults; 0 stands for "no limit"
    given = TRAIN.build(head="max", lr=0.01, max_len=0, max_size=0, seed=7, bidirectional=True, train_seed=3)
    assert (given.model.head, given.train.lr, given.train.max_len, given.data.vocab.max_size) == ("max", 0.01, None, None)
    assert (given.data.split.seed, given.train.seed, given.model.bidirectional) == (7, 3, True)
    assert given.model.hidden_dim == train.model.hidden_dim and given.data.tokenize == train.data.tokenize
    assert TRAIN.defaults()["max_len"] == 0 and TRAIN.defaults()["max_size"] == data.vocab.max_size


# What ``--help`` must show as each option's ``[default: ...]`` (None: no such tag), written out
# here, not read from the configurations the help is built from: the defaults docs/training.md
# states (a bidirectional LSTM of 128 over GloVe 6B 50-d, max-pool, dropout 0.3, Adam 2e-3 on a
# cosine, averaged at 0.998, 8 epochs) and the data stages' (20 % held out, seed 1234, a vocabulary
# of 25,000). Options read from the environment name their default in their text instead.
_DATA_HELP = {"--source": None, "--data-root": None, "--val-fraction": "0.2", "--seed": "1234",
              "--lowercase": "lowercase", "--html-breaks": "space", "--min-freq": "1", "--max-size": "25000",
              "--force": None, "--workers": None, "--help": None}
_HELP_DEFAULTS = {
    "prepare": _DATA_HELP,
    "train": {**_DATA_HELP, "--preset": None, "--max-epochs": "3", "--batch-size": "64", "--lr": "0.002",
              "--lr-schedule": "cosine", "--word-dropout": "0.0", "--average": "0.998", "--max-len": "0",
              "--train-seed": "1234", "--device": "auto", "--embed-dim": "50", "--hidden-dim": "128",
              "--cell": "lstm", "--layers": "1", "--bidirectional": "no-bidirectional", "--dropout": "0.3",
              "--head": "max", "--ngrams": "3", "--ngram-buckets": "8388608", "--ngram-epochs": "3",
              "--ngram-lr": "0.002", "--rnn-target": "residual",
              "--pretrained": "glove-6b-50d",
              "--freeze-embeddings": "no-freeze-embeddings", "--model-name": "sentiflow", "--gate-source": None,
              "--gate-margin": "0.0"},
    "score": {"--source": None, "--data-root": None, "--model": "models:/sentiflow@champion", "--out": None,
              "--split": "auto", "--threshold": "0.5", "--max-oov": None, "--workers": None, "--force": None,
              "--help": None},
    "predict": {"--model": "models:/sentiflow@champion", "--data-root": None, "--threshold": "0.5",
                "--max-oov": None, "--json": None, "--help": None},
}


@pytest.mark.parametrize("command", list(_HELP_DEFAULTS))
def test_help_shows_the_models_defaults(command):
    # wide enough that no option's line wraps before its [default: ...]
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    shown = {}
    for line in result.output.splitlines():
        text = line.strip("│ ")
        if text.startswith("--"):  # an option's own line (its name first)
            found = re.search(r"\[default: ([^\]]*)\]", text)
            shown[text.split()[0]] = found.group(1) if found else None
    assert shown == _HELP_DEFAULTS[command]
    if command in ("prepare", "train"):  # the stage names --force takes, in the data flow's order
        assert "ingest, split, tokenize, vocab, encode" in result.output
