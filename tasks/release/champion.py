"""The current champion, read for the gate: its registry entry, its training run, its own rows
in the stage store, its model files.

Every read is inside ``errors.retried``: an outage is tried again and, if it lasts, ends the
selection with ``ChampionUnreachable`` before anything is written (no verdict, no marker), so a
rerun judges again. What is really gone (``errors.classify``) makes a ``Champion`` with a
``problem``: the gate keeps it and says why.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sentiflow.storage.store import Store
from sentiflow.storage.tracking import CHAMPION
from sentiflow.tasks.core.inference import Scorer
from sentiflow.tasks.release.errors import ChampionGone, reading, retried
from sentiflow.tasks.release.gate import Champion, GateRows, champion_rows
from sentiflow.tasks.scoring.serving import download_model, resolve_model

log = logging.getLogger("sentiflow.champion")

# the answers that mean "no champion": no registered model of that name, or no such alias on it
_NO_CHAMPION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def find_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version of ``name`` holding the ``champion`` alias; None when there is none. An
    outage is retried (``errors.retried``), never taken for "no champion"."""

    def lookup(_attempt: int) -> ModelVersion | None:
        try:
            return client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as e:
            if e.error_code in _NO_CHAMPION:
                return None
            raise

    return retried(lookup, f"the champion of {name}")


def load_champion(client: MlflowClient, store: Store, name: str, version: ModelVersion, main: GateRows,
                  guarded: bool, tmp: Path) -> Champion:
    """The champion ``version`` of ``name`` ready to score: its model from MLflow (files under
    ``tmp``) and, when ``guarded`` (no gate source), its own test split (``champion_rows``, from
    the stage keys its training run recorded). A part of it that is gone makes a ``Champion``
    with that ``problem``; an outage outlasting the retries is a ``ChampionUnreachable``."""
    what = f"champion version {version.version}"

    def attempt(n: int) -> Champion:
        guard = None
        if guarded:
            with reading(f"its training run {version.run_id}"):
                params = client.get_run(version.run_id).data.params
            with reading("its own test split"):
                guard = champion_rows(store, params, main)
        log.info("%s: downloading its model (try %d)", what, n)
        with reading("its model"):
            tmp.mkdir(parents=True, exist_ok=True)
            files = download_model(resolve_model(f"models:/{name}/{version.version}"),
                                   Path(tempfile.mkdtemp(prefix="try-", dir=tmp)))
            scorer = Scorer.from_files(files["config"], files["vocab"], files["weights"])
        return Champion(str(version.version), scorer, files["vocab"], guard)

    try:
        return retried(attempt, what)
    except ChampionGone as e:
        return Champion(str(version.version), problem=str(e))
