"""The registered model on the MLflow side: logging it from code, resolving and loading it.

``log_model`` logs a model from code (MLflow 3): ``served_model.py`` is its ``python_model``, so
nothing is unpickled on load; its code is ``sentiflow.tasks.core`` (the modules
``sentiflow.tasks.stage.model_code`` lists), under the package name ``sentiflow``, so it needs no
sentiflow install and puts no generic name on ``sys.path``; its artifacts are the config,
vocabulary and weights; its requirements are inference's alone (no Prefect). Its signature:
review values in (of any type: a row that is not text gets its status), one record per row out
(``prob_pos``, ``status``, ``oov_share``), and the param ``max_oov``.
``models:/sentiflow@champion`` then scores raw text with nothing else at hand, in ``mlflow models
serve`` too. ``resolve_model`` turns a model URI into a fixed ``ModelRef``; ``load_scorer``
downloads one as a ``Scorer``.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, Schema
from pydantic import BaseModel

from sentiflow.storage.redact import redact
from sentiflow.tasks import stage
from sentiflow.tasks.core.inference import Scorer, score_texts
from sentiflow.tasks.core.rows import records

ARTIFACTS = ("config", "vocab", "weights")
# optional: the training split's lengths and OOV shares (sentiflow.tasks.scoring.drift); older models lack it
TRAIN_STATS = "train_stats"
MODEL_CODE = Path(__file__).resolve().with_name("served_model.py")
# the signature's example: reviews, and a blank row (so prob_pos and oov_share are optional)
EXAMPLE = ["A moving, beautifully acted film.", "Dull, clumsy and far too long.", "   "]
# the served model's params: max_oov 1 cuts no row (an OOV share is at most 1)
PARAMS = {"max_oov": 1.0}
LOGGED_MODEL_URI = re.compile(r"^models:/m-[0-9a-f]{32}$")  # MLflow 3's logged model (a version's source)
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+|latest))$")


class ModelError(ValueError):
    """A model URI that cannot be resolved, or a model that is not a sentiflow model."""


class ModelRef(BaseModel):
    """A resolved model: ``uri`` never moves (an alias is resolved to its version)."""

    requested: str  # as the user gave it, e.g. models:/sentiflow@champion
    uri: str  # models:/sentiflow/3, or the runs:/ URI or path as given
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    model_id: str | None = None  # MLflow 3's logged model: metrics logged with it show on its page
    model_uuid: str  # unique to one logged model: the score stage's key uses it


def resolve_model(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH`` or a local model
    folder → a ``ModelRef``; a ``ModelError`` saying what is wrong otherwise."""
    where = f"(tracking URI {redact(mlflow.get_tracking_uri())})"
    name = version = None
    m = MODEL_URI.match(uri)
    if LOGGED_MODEL_URI.match(uri):
        resolved = uri
    elif uri.startswith("models:/"):
        if not m:
            raise ModelError(f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION "
                             "or models:/NAME/latest")
        name = m["name"]
        try:
            client = MlflowClient()
            if m["version"] == "latest":
                found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"],
                                                     max_results=1)
                if not found:
                    raise ModelError(f"model {uri!r}: {name!r} has no versions {where}")
                mv = found[0]
            else:
                mv = (client.get_model_version_by_alias(name, m["alias"]) if m["alias"]
                      else client.get_model_version(name, m["version"]))
        except MlflowException as e:
            raise ModelError(f"model {uri!r} not found {where}: {e.message}") from None
        version = str(mv.version)
        resolved = f"models:/{name}/{version}"
    elif uri.startswith("runs:/") or Path(uri).expanduser().is_dir():
        resolved = uri if uri.startswith("runs:/") else str(Path(uri).expanduser().resolve())
    else:
        raise ModelError(f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION, "
                         "runs:/RUN_ID/PATH or a model folder")
    try:
        info = mlflow.models.get_model_info(resolved)
    except (MlflowException, OSError) as e:
        raise ModelError(f"model {uri!r} cannot be read {where}: {getattr(e, 'message', e)}") from None
    artifacts = (info.flavors.get("python_function") or {}).get("artifacts") or {}
    missing = [a for a in ARTIFACTS if a not in artifacts]
    if missing:
        raise ModelError(f"model {uri!r} is not a sentiflow model: it lacks the {', '.join(missing)} "
                         f"artifact(s) of one (flavors: {', '.join(info.flavors) or 'none'})")
    return ModelRef(requested=uri, uri=resolved, name=name, version=version, run_id=info.run_id,
                    model_id=getattr(info, "model_id", None), model_uuid=info.model_uuid)


def download_model(ref: ModelRef, dst: Path) -> dict[str, Path]:
    """The model's artifacts (config, vocab, weights) as local files under ``dst``."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst)))
    except (MlflowException, OSError) as e:
        raise ModelError(f"model {ref.uri!r} cannot be downloaded: {getattr(e, 'message', e)}") from None
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return {a: local / flavor["artifacts"][a]["path"] for a in (*ARTIFACTS, TRAIN_STATS) if a in flavor["artifacts"]}


def load_scorer(ref: ModelRef, dst: Path) -> Scorer:
    files = download_model(ref, dst)
    return Scorer.from_files(files["config"], files["vocab"], files["weights"])


def pip_requirements() -> list[str]:
    """What inference needs, pinned to this environment's versions (no Prefect)."""
    import pandas
    import pyarrow
    import pydantic
    import spacy

    return [f"torch=={torch.__version__.split('+')[0]}", f"spacy=={spacy.__version__}",
            f"pyarrow=={pyarrow.__version__}", f"pandas=={pandas.__version__}", f"numpy=={np.__version__}",
            f"pydantic=={pydantic.__version__}", f"mlflow=={mlflow.__version__}"]


def _code_folder(dst: Path) -> Path:
    """``dst/sentiflow/tasks/core/`` with the model's code (``stage.model_code``) and the two
    packages' ``__init__`` files (docstrings only): a regular package, so the shipped code is the
    one imported even where another sentiflow is installed."""
    for module in ["sentiflow.tasks", stage.MODEL_PACKAGE, *stage.model_code()]:
        source = Path(importlib.import_module(module).__file__)
        target = dst.joinpath(*module.split("."))
        target = target / "__init__.py" if source.name == "__init__.py" else target.with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return dst / "sentiflow"


def signature(scorer: Scorer) -> ModelSignature:
    """Values of any type in (a string schema would turn a null in a REST ``inputs`` list into the
    text ``"None"``; here each row gets its status instead), one record per row out (inferred
    from ``EXAMPLE``'s), and the params ``PARAMS``."""
    inferred = infer_signature(EXAMPLE, records(*score_texts(scorer, EXAMPLE)), params=PARAMS)
    return ModelSignature(Schema([ColSpec(AnyType())]), inferred.outputs, inferred.params)


def log_model(scorer: Scorer, vocab_file: Path, extra_config: dict[str, Any], tmp: Path,
              train_stats: Path | None = None):
    """Log ``scorer`` as a model from code in the active run; returns MLflow's ``ModelInfo``.
    ``train_stats``: the training split's ``train_stats.json`` (``sentiflow.tasks.scoring.drift``), an
    artifact of the model that scoring compares new reviews with."""
    weights, config = tmp / "weights.pt", tmp / "config.json"
    torch.save(scorer.net.state_dict(), weights)
    config.write_text(json.dumps({"model": scorer.net.params.model_dump(mode="json"),
                                  "tokenize": scorer.tokenize.model_dump(mode="json"),
                                  "max_len": scorer.max_len, **extra_config}, indent=2))
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE),
        artifacts={"config": str(config), "vocab": str(vocab_file), "weights": str(weights),
                   **({TRAIN_STATS: str(train_stats)} if train_stats is not None else {})},
        code_paths=[str(_code_folder(tmp / "code"))],
        signature=signature(scorer),
        input_example=EXAMPLE, pip_requirements=pip_requirements(),
    )
