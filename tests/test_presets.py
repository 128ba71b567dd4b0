"""Training presets: values keyed by field path, applied by the training flow's own function
(``apply_preset``) over the defaults and under the values given. ``--preset NAME`` gives the
configuration that typing its options gives (parsed by the real command line); ``seed`` is the
seed's model as its parameters were; an unknown name is one clear error."""

from __future__ import annotations

import shlex
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from sentiflow.flows.cli import app
from sentiflow.flows.options import TRAIN
from sentiflow.flows.presets import PRESETS, Preset, apply_preset, describe
from sentiflow.flows.train_flow import TrainFlowConfig
from sentiflow.tasks.config import field_paths
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.training.train import TrainConfig, TrainParams

runner = CliRunner()


def _parsed(args: list[str]) -> dict:
    """The train command's options as click parses ``args`` (nothing runs)."""
    command = typer.main.get_command(app).commands["train"]
    ctx = command.make_context("train", list(args))
    return {k: v for k, v in ctx.params.items() if k in TRAIN.paths}


def _trained(config: TrainFlowConfig) -> dict:
    """What a run of ``config`` trains: the preset applied, its name left out."""
    return apply_preset(config).model_dump(exclude={"preset"})


def test_the_form_offers_every_preset_and_each_names_real_fields():
    assert list(get_args(Preset)) == list(PRESETS)
    paths = set(field_paths(TrainFlowConfig))
    for name, values in PRESETS.items():
        assert set(values) <= paths, name
        applied = apply_preset(TrainFlowConfig(preset=name))
        for path, value in values.items():
            part, field = path.split(".")
            assert getattr(getattr(applied, part), field) == value, (name, path)


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_is_its_options_typed(name):
    options = shlex.split(describe(name, TRAIN.paths, TRAIN.zero_is_none)) if PRESETS[name] else []
    typed = TRAIN.build(**_parsed(options))
    assert typed.preset is None and _trained(TRAIN.build(**_parsed(["--preset", name]))) == _trained(typed)


def test_values_given_win_over_the_preset_at_every_depth():
    given = TrainFlowConfig(preset="fast", train=TrainParams(max_epochs=2),
                            model=ModelParams(hidden_dim=64, bidirectional=True))
    config = apply_preset(given)
    assert (config.train.max_epochs, config.model.hidden_dim) == (2, 64)  # given
    assert config.model.bidirectional  # given, though it is the default the preset changes
    assert (config.model.embed_dim, config.model.head, config.train.pretrained) == (100, "last+max", None)
    assert config.preset == "fast" and apply_preset(config) == config
    # the same from the command line's options, and from a deployment run's parameters (JSON)
    typed = TRAIN.build(**_parsed(["--preset", "fast", "--max-epochs", "2", "--hidden-dim", "64",
                                   "--bidirectional"]))
    sent = TrainFlowConfig.model_validate({"preset": "fast", "train": {"max_epochs": 2},
                                           "model": {"hidden_dim": 64, "bidirectional": True}})
    assert apply_preset(typed) == apply_preset(sent) == config


def test_no_preset_changes_nothing():
    config = TrainFlowConfig(model=ModelParams(hidden_dim=8))
    assert apply_preset(config) is config
    assert _trained(TrainFlowConfig(preset="default")) == TrainFlowConfig().model_dump(exclude={"preset"})


def test_seed_is_the_seed_model_as_its_parameters_were():
    """The values ModelParams and TrainParams defaulted to before the pipeline's model took
    their place (written out here), every other field at the pipeline's default."""
    config = apply_preset(TrainFlowConfig(preset="seed"))
    assert config.model == ModelParams(embed_dim=100, hidden_dim=128, cell="lstm", layers=1, bidirectional=False,
                                       dropout=0.3, head="last", ngrams=0)
    assert config.train == TrainParams(max_epochs=8, batch_size=64, lr=2e-3, lr_schedule="constant", average=None,
                                       pretrained=None, word_dropout=0.0, max_len=None, seed=1234)
    assert TrainConfig(model=config.model, train=config.train) != TrainConfig()


def test_fast_is_the_seed_kind_of_model_without_pretrained_vectors():
    config = apply_preset(TrainFlowConfig(preset="fast"))
    assert config.train.pretrained is None and not config.model.bidirectional


def test_describe_names_paths_or_options():
    assert describe("rnn") == "model.ngrams=0, model.bidirectional=True, train.max_epochs=8"
    assert describe("default") == "(the defaults)"
    assert describe("best", TRAIN.paths, TRAIN.zero_is_none) == "--bidirectional --max-epochs 5"
    assert describe("seed", TRAIN.paths, TRAIN.zero_is_none).split() == [
        "--ngrams", "0", "--embed-dim", "100", "--no-bidirectional", "--head", "last", "--max-epochs", "8",
        "--pretrained", "none", "--lr-schedule", "constant", "--average", "0"]


def test_an_unknown_preset_is_one_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "fastest", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "preset" in line and "fastest" in line and "best" in line  # one line: tasks/config.py
    assert "validation error" not in result.output
