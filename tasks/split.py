"""Stage 2, split: ingest's train part → ``train.parquet`` (proper-train) and ``val.parquet``,
seeded and stratified by label. Rows keep their original order inside each part.

A source too small to give both parts at least one review is refused with a ``SourceError``.
numpy's version is part of the code version: its ``Generator`` streams may change between
releases, and with them which reviews are held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.sources import SourceError

STAGE = "split"


class SplitParams(BaseModel):
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each label held out")
    seed: int = Field(1234, description="Seed of the stratified shuffle")


def split_indices(labels: np.ndarray, params: SplitParams) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of proper-train and validation: per label, a seeded ``val_fraction``."""
    rng = np.random.default_rng(params.seed)
    val = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_val = int(round(len(rows) * params.val_fraction))
        val.append(rng.permutation(rows)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def split(train_file: Path, out_dir: Path, params: SplitParams) -> None:
    table = pq.read_table(train_file)
    train_idx, val_idx = split_indices(table.column("label").to_numpy(), params)
    for part, idx in (("train", train_idx), ("validation", val_idx)):
        if len(idx) == 0:
            raise SourceError(
                f"split: {table.num_rows} training review(s) with val_fraction "
                f"{params.val_fraction} leave the {part} part empty; use a larger source "
                "or another --val-fraction"
            )
    pq.write_table(table.take(train_idx), out_dir / "train.parquet", compression="zstd")
    pq.write_table(table.take(val_idx), out_dir / "val.parquet", compression="zstd")


# -- stage and task ------------------------------------------------------------------------------

def spec(params: SplitParams, ingested: StageRef) -> stage.StageSpec:
    return stage.StageSpec(STAGE, params, (stage.input_token(ingested, "train"),),
                           stage.code_version(__name__, f"numpy=={np.__version__}"))


def plan(root: Path | str, params: SplitParams, ingested: StageRef) -> StageRef:
    return spec(params, ingested).ref(root)


def run(params: SplitParams, ingested: StageRef, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(
        root, spec(params, ingested),
        lambda out: split(ingested.file("train.parquet"), out, params), force,
    )


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["params"], p["ingested"])


@stage.stage_task("split", _planner)
def split_task(params: SplitParams, ingested: StageRef, root: str, force: bool = False) -> StageRef:
    return run(params, ingested, root, force)
