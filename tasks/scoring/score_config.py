"""What a scoring run is given: ``ScoreParams`` (the score stage's parameters) and
``ScoreConfig`` (the score flow's form in the Prefect UI). Their home imports neither Prefect nor
the stage code, so ``sentiflow predict`` reads the same defaults without loading Prefect."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sentiflow.storage.settings import FromSetting
from sentiflow.storage.tracking import CHAMPION, REGISTERED_MODEL
from sentiflow.tasks.config import Config
from sentiflow.tasks.scoring.score_sources import Split

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
PART_ROWS = 10_000  # rows of a part at least (Parquet: whole row groups, or slices of a bigger one)


class ScoreParams(Config):
    split: Split = Field("auto", description="auto: the source's test part if it has one, else all of it")
    threshold: float = Field(0.5, gt=0, lt=1, description="pred = 1 where prob_pos > threshold")
    max_oov: float | None = Field(None, ge=0, le=1, description="Rows whose share of tokens outside the "
                                  "model's vocabulary exceeds this get status out_of_domain and no "
                                  "probability; empty: every row is scored")


class ScoreConfig(Config):
    """What to score with what (a form in the Prefect UI)."""

    model: str = Field(DEFAULT_MODEL_URI, description="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH")
    source: Annotated[str | None, FromSetting("source")] = Field(
        None, description="Reviews: any training source (its test part by default), or a .txt file "
                          "with one review per line; empty: the settings' source (SENTIFLOW_SOURCE)")
    out: str | None = Field(None, description="Where to write the predictions Parquet (default: the stage folder)")
    params: ScoreParams = ScoreParams()
    part_rows: int = Field(PART_ROWS, ge=1, description="On Dask (SENTIFLOW_TASK_RUNNER=dask): rows per task, "
                                                        "at least: whole Parquet row groups, or equal slices "
                                                        "of a bigger one; one task per CSV/TSV file")
