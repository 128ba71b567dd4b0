"""One settings object: environment variables prefixed ``SENTIFLOW_``, defaults that need no server.

Settings are built once, where a run starts, and passed down as an argument from there: a CLI
command builds them from its options and the environment (``Settings.load``); a flow run that no
caller gave settings to (a deployment's run on a worker) builds them from the environment when it
starts (``sentiflow.flows.runs``). Nothing reads them from a global, and nothing writes
``os.environ`` to pass one on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SOURCE = "stanfordnlp/imdb"


class Settings(BaseSettings):
    """Where things live. Every field reads ``SENTIFLOW_<FIELD>``; the tracking URI also reads
    the standard ``MLFLOW_TRACKING_URI``."""

    model_config = SettingsConfigDict(env_prefix="SENTIFLOW_", extra="ignore", populate_by_name=True)

    data_root: Path = Field(Path("data"), description="Stage store root: <data_root>/<stage>/<key>/")
    source: str = Field(DEFAULT_SOURCE, description="Hugging Face dataset id or local path")
    gate_source: str | None = Field(
        None, description="A fixed labelled source the champion gate judges challenger and champion "
                          "on; unset: each new run's test split (tasks/gate.py)")
    tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENTIFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default: a SQLite file under the data root",
    )
    experiment: str = Field("sentiflow", description="MLflow experiment name")
    workers: int = Field(0, ge=0, description="Processes for tokenization; 0 = all cores")
    task_runner: Literal["local", "dask"] = Field(
        "local",
        description="Where tokenize and encode run: 'local' in this process (its own tokenizer "
                    "pool), 'dask' on a Dask cluster through prefect-dask (sentiflow.flows.data_flow)",
    )
    dask_address: str | None = Field(
        None,
        description="With task_runner 'dask': an existing scheduler, e.g. tcp://host:8786; "
                    "unset: a temporary LocalCluster of `workers` single-threaded processes. "
                    "Its workers must see the data root at the same path",
    )

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment, with ``overrides`` over it: an entry point's
        options (a CLI command's ``--data-root``, ``--source``, ``--workers``). ``None`` is an
        option not given."""
        return cls(**_given(overrides))

    def updated(self, **overrides: Any) -> Settings:
        """These settings with ``overrides`` over them (``None``: not given), validated; the
        environment is not read again."""
        given = _given(overrides)
        return type(self).model_validate({**self.model_dump(), **given}) if given else self

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_root / 'mlflow.db').resolve()}"

    @property
    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}
