"""Every configuration model refuses a key it does not know, in one line naming the key and the
nearest valid one (tasks/config.py): through pydantic, through the command line's error line and
through the flow's own parameter validation. (A Prefect server refusing such a deployment run:
tests/test_deployments.py.) The settings fill a flow's empty sources in one place."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import BaseModel, ValidationError

from sentiflow.flows.data_flow import DataConfig
from sentiflow.flows.train_flow import TrainFlowConfig, train_flow
from sentiflow.storage.settings import Settings
from sentiflow.tasks.config import error_line, nested_model
from sentiflow.tasks.core.model import ModelParams
from sentiflow.tasks.release.gate import GateParams
from sentiflow.tasks.scoring.score_config import ScoreConfig
from sentiflow.tasks.training.train import TrainConfig, TrainParams

FORMS = (TrainFlowConfig, DataConfig, ScoreConfig, TrainConfig)


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every model its fields hold, at every depth."""
    found = {model}
    for info in model.model_fields.values():
        inner = nested_model(info.annotation)
        if inner is not None:
            found |= _models(inner)
    return found


ALL = sorted(set().union(*map(_models, FORMS)), key=lambda m: m.__name__)


def _refused(model: type[BaseModel], data: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return error_line(caught.value)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.__name__)
def test_every_configuration_model_refuses_an_unknown_key(model):
    assert model.model_config.get("extra") == "forbid"
    line = _refused(model, {"no_such_key": 1})
    assert "unknown key 'no_such_key'" in line and "\n" not in line


@pytest.mark.parametrize("model, data, key, nearest", [
    (TrainFlowConfig, {"train": {"max_epoch": 3}}, "train.max_epoch", "train.max_epochs"),
    # given at the top, found where it lives
    (TrainFlowConfig, {"max_epoch": 3}, "max_epoch", "train.max_epochs"),
    (TrainParams, {"max_epoch": 3}, "max_epoch", "max_epochs"),
    # a right name in the wrong place: where it belongs
    (TrainFlowConfig, {"train": {"hidden_dim": 64}}, "train.hidden_dim", "model.hidden_dim"),
    (DataConfig, {"vocab": {"min_frequency": 2}}, "vocab.min_frequency", "vocab.min_freq"),
    (ScoreConfig, {"params": {"treshold": 0.7}}, "params.treshold", "params.threshold"),
    (GateParams, {"margn": 0.1}, "margn", "margin"),
])
def test_an_unknown_key_is_named_with_the_nearest_valid_one(model, data, key, nearest):
    assert _refused(model, data) == f"unknown key {key!r} (did you mean {nearest!r}?)"


def test_a_name_near_several_fields_names_them_all_and_none_near_lists_the_valid_keys():
    assert _refused(TrainFlowConfig, {"seed": 3}) == "unknown key 'seed' (did you mean 'data.split.seed' or 'train.seed'?)"
    assert _refused(TrainFlowConfig, {"train": {"seed": 1, "sed": 2}}) == \
        "unknown key 'train.sed' (did you mean 'train.seed'?)"  # the one beside it
    line = _refused(DataConfig, {"split": {"zzz": 1}})
    assert line == "unknown key 'split.zzz' (valid keys of 'split': val_fraction, seed)"


def test_the_models_of_the_model_code_forbid_unknown_keys_alone():
    """tasks/core imports nothing of sentiflow: pydantic's own refusal, worded on one line; in a
    form, the form names the key and the nearest one."""
    assert _refused(ModelParams, {"hiden_dim": 8}) == "unknown key 'hiden_dim'"
    assert "'model.hidden_dim'" in _refused(TrainFlowConfig, {"model": {"hiden_dim": 8}})


def test_other_errors_are_one_line_each_naming_the_field_and_the_value():
    line = _refused(TrainFlowConfig, {"train": {"lr": -1}, "preset": "fastest"})
    assert line.startswith("preset: Input should be 'fast', 'default', 'best', 'rnn' or 'seed' (got 'fastest'); ")
    assert line.endswith("train.lr: Input should be greater than 0 (got -1)")


def test_the_flow_refuses_an_unknown_key_when_a_run_starts():
    """Prefect validates a flow run's parameters with the form before the flow's body runs: a
    run that reached the flow with an unknown key fails at once, with the form's line."""
    with pytest.raises(ParameterTypeError) as caught:
        train_flow.validate_parameters({"config": {"max_epoch": 3}})
    assert "config: unknown key 'max_epoch' (did you mean 'train.max_epochs'?)" in str(caught.value)
    given = train_flow.validate_parameters({"config": {"preset": "best", "model": {"hidden_dim": 8}}})["config"]
    assert given.model_fields_set == {"preset", "model"} and given.model.model_fields_set == {"hidden_dim"}


def test_the_settings_fill_empty_sources_once_and_nothing_else():
    settings = Settings(source="/data/imdb", gate_source="/data/gate.csv")
    filled = settings.fill(TrainFlowConfig())
    assert (filled.data.source, filled.gate.source) == ("/data/imdb", "/data/gate.csv")
    assert filled.model_dump(exclude={"data": {"source"}, "gate": {"source"}}) == \
        TrainFlowConfig().model_dump(exclude={"data": {"source"}, "gate": {"source"}})
    given = TrainFlowConfig(data=DataConfig(source="/mine"), gate=GateParams(source="/my-gate.csv"))
    assert settings.fill(given) is given  # named already: nothing to fill
    assert settings.fill(ScoreConfig()).source == "/data/imdb"
    assert Settings(gate_source=None).fill(TrainFlowConfig()).gate.source is None  # the run's test split
    assert TrainFlowConfig().data.source is None  # nothing read when a form is made
