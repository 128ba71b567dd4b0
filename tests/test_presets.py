"""Training presets are plain sets of the ordinary options: ``--preset NAME`` gives the
configuration that typing its options gives (parsed by the real command line), options typed as
well win, and an unknown name is one clear error."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.testing import CliRunner

from sentiflow.flows.cli import TRAIN, app
from sentiflow.flows.presets import PRESETS, describe, with_preset

runner = CliRunner()


def _parsed(args: list[str]) -> dict:
    """The train command's options as click parses ``args`` (nothing runs)."""
    command = typer.main.get_command(app).commands["train"]
    ctx = command.make_context("train", list(args))
    return {k: v for k, v in ctx.params.items() if k in TRAIN.paths}


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_is_its_options_typed(name):
    typed = TRAIN.build(**_parsed(shlex.split(describe(name)) if PRESETS[name] else []))
    assert TRAIN.build(**with_preset(name, _parsed([]))) == typed


def test_options_typed_win_over_the_preset():
    config = TRAIN.build(**with_preset("fast", _parsed(["--max-epochs", "2", "--hidden-dim", "64"])))
    assert config.train.max_epochs == 2 and config.model.hidden_dim == 64  # typed
    assert config.model.embed_dim == PRESETS["fast"]["embed_dim"] and config.model.head == "last+max"  # preset


def test_fast_is_the_seed_kind_of_model_without_pretrained_vectors():
    config = TRAIN.build(**with_preset("fast", _parsed([])))
    assert config.train.pretrained is None and not config.model.bidirectional


def test_an_unknown_preset_is_one_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "fastest", "--data-root", str(tmp_path)])
    assert result.exit_code != 0
    assert "fastest" in result.output and "best" in result.output
