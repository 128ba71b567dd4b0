"""One settings object: environment variables prefixed ``SENTIFLOW_``, defaults that need no server."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SOURCE = "stanfordnlp/imdb"


class Settings(BaseSettings):
    """Where things live. Every field reads ``SENTIFLOW_<FIELD>``; the tracking URI also reads
    the standard ``MLFLOW_TRACKING_URI``."""

    model_config = SettingsConfigDict(env_prefix="SENTIFLOW_", extra="ignore", populate_by_name=True)

    data_root: Path = Field(Path("data"), description="Stage store root: <data_root>/<stage>/<key>/")
    source: str = Field(DEFAULT_SOURCE, description="Hugging Face dataset id or local path")
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

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_root / 'mlflow.db').resolve()}"

    @property
    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
