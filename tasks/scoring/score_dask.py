"""The score stage on Dask: its input cut into parts, each scored on its own (one Dask task each,
``score_part``), then assembled in order into the stage's folder (``run``, the ``score`` task on
Dask): the same predictions, counts and stage key as scoring in one process
(``sentiflow.tasks.scoring.score``), whose batch scoring each part runs.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.core.inference import Scorer
from sentiflow.tasks.core.text import MAX_REVIEW_CHARS
from sentiflow.tasks.cpu import tune_cpu
from sentiflow.tasks.scoring import drift as drift_stats
from sentiflow.tasks.scoring.score import (
    BATCH_ROWS,
    STAGE,
    ScoreStats,
    Writer,
    cached_encoding,
    judge_drift,
    out_schema,
    plan,
    planner,
    score_batches,
    score_shards,
    spec,
)
from sentiflow.tasks.scoring.score_config import PART_ROWS, ScoreParams
from sentiflow.tasks.scoring.score_sources import SourcePart, part_batches, plan_parts
from sentiflow.tasks.scoring.serving import TRAIN_STATS, ModelRef, download_model

log = logging.getLogger("sentiflow.score")


class ScorePart(BaseModel):
    """One part of a score stage's input, scored on its own (one Dask task): contiguous rows of
    the source, or one encoded shard of the data stages. Its predictions and counts go to the
    work folder, which every Dask worker sees at the same path (the data root's filesystem)."""

    index: int
    folder: str
    model_files: dict[str, str]  # config, vocab, weights: downloaded once, into the work folder
    labeled: bool  # the whole source's: a part's file has a label column when any part has one
    source: SourcePart | None = None
    encoded: str | None = None

    @property
    def out_file(self) -> Path:
        return Path(self.folder) / f"part-{self.index:05d}.parquet"

    @property
    def stats_file(self) -> Path:
        return Path(self.folder) / f"part-{self.index:05d}.json"


class ScoreWork(BaseModel):
    """A score stage cut into parts, in order, with its work folder: ``<root>/score/.tmp-parts-*``
    (removed by ``discard``; a stale one is swept by the store like any ``.tmp-*`` folder)."""

    folder: str
    labeled: bool
    reused: str | None = None
    started: float  # time.time() when planned: the stage's seconds run from here
    parts: list[ScorePart]
    train_stats: str | None = None  # the model's train_stats.json in the work folder, if it has one

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def plan_work(model: ModelRef, source: str, source_fp: str, params: ScoreParams, root: Path | str,
              part_rows: int = PART_ROWS) -> ScoreWork:
    """Download the model into a new work folder and cut the input into parts: the data stages'
    encoded shards when they can be reused (``cached_encoding``), else ranges of the source
    (``plan_parts``). Raises the source's errors that ``open_reviews`` raises at once."""
    started = time.time()
    root = Path(root).resolve()
    folder = root / STAGE / f".tmp-parts-{plan(root, params, model, source_fp).key}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        files = download_model(model, folder / "model")
        scorer = _load(files)
        reuse = (cached_encoding(root, files["vocab"], scorer.tokenize, source_fp, params.split)
                 if scorer.max_chars == MAX_REVIEW_CHARS else None)  # the data stages' cut
        common = {"folder": str(folder), "model_files": {k: str(v) for k, v in files.items()}}
        stats_file = str(files[TRAIN_STATS]) if TRAIN_STATS in files else None
        if reuse is not None:
            log.info("scoring the cached encode stage %s (no tokenizing)", reuse.key)
            parts = [ScorePart(index=i, labeled=True, encoded=str(shard), **common)
                     for i, shard in enumerate(reuse.shards())]
            return ScoreWork(folder=str(folder), labeled=True, reused=reuse.key, started=started, parts=parts,
                             train_stats=stats_file)
        labeled, ranges = plan_parts(source, params.split, part_rows)
        parts = [ScorePart(index=i, labeled=labeled, source=r, **common) for i, r in enumerate(ranges)]
        return ScoreWork(folder=str(folder), labeled=labeled, started=started, parts=parts, train_stats=stats_file)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _load(files: dict[str, Any]) -> Scorer:
    return Scorer.from_files(Path(files["config"]), Path(files["vocab"]), Path(files["weights"]))


_part_scorer: dict[str, Scorer] = {}  # a worker process's model, loaded once per work folder


def score_part(part: ScorePart, params: ScoreParams, batch_rows: int = BATCH_ROWS) -> ScoreStats:
    """Score one part in this process (no tokenizer pool: a Dask worker may not fork one) into
    ``part.out_file`` (one row group per batch), its counts into ``part.stats_file``."""
    scorer = _part_scorer.get(part.folder)
    if scorer is None:
        scorer = _load(part.model_files)
        _part_scorer.clear()
        _part_scorer[part.folder] = scorer
    started = time.perf_counter()
    stats = ScoreStats(labeled=part.labeled, max_chars=scorer.max_chars)
    tune_cpu()
    with closing(Writer(part.out_file, part.labeled, params.threshold, stats)) as writer:
        if part.encoded is not None:
            score_shards(scorer, [Path(part.encoded)], writer, params.max_oov)
        else:
            score_batches(scorer, part_batches(part.source, batch_rows, scorer.max_chars), writer, 1, params.max_oov)
    stats.seconds = time.perf_counter() - started
    part.stats_file.write_text(stats.model_dump_json())
    return stats


def assemble(work: ScoreWork, out_dir: Path) -> ScoreStats:
    """The parts' predictions, in order, into ``out_dir/predictions.parquet`` (a row group at a
    time: never the whole file in memory) and their counts summed into ``stats.json``."""
    stats = ScoreStats(labeled=work.labeled, reused=work.reused)
    cm = np.zeros((2, 2), np.int64)
    with closing(pq.ParquetWriter(out_dir / "predictions.parquet", out_schema(work.labeled),
                                  compression="zstd")) as writer:
        for part in work.parts:
            done = ScoreStats.model_validate_json(part.stats_file.read_text())  # missing: the part never ran
            f = pq.ParquetFile(part.out_file)
            for g in range(f.num_row_groups):
                writer.write_table(f.read_row_group(g))
            stats.rows += done.rows
            stats.labeled_rows += done.labeled_rows
            stats.cut += done.cut
            stats.max_chars = done.max_chars
            for k, v in done.statuses.items():
                stats.statuses[k] += v
            cm += np.array(done.confusion)
            stats.profile.add(done.profile)
    stats.confusion = cm.tolist()
    judge_drift(stats, drift_stats.read_train_stats(work.train_stats))
    stats.seconds = time.time() - work.started
    (out_dir / "stats.json").write_text(stats.model_dump_json(indent=2))
    log.info("assembled %d parts: %d reviews in %.1f s (%.0f/s)", len(work.parts), stats.rows, stats.seconds,
             stats.reviews_per_second)
    return stats


# -- the stage, assembled from its parts -----------------------------------------------------------

def run(work: ScoreWork, model: ModelRef, source_fp: str, params: ScoreParams, root: Path | str,
        force: bool = False) -> StageRef:
    """The score stage from ``work`` whose parts were all scored (``score_part``)."""
    return stage.run_stage(root, spec(params, model, source_fp), lambda out: assemble(work, out), force)


@stage.stage_task("score", planner)
def assemble_task(model: ModelRef, source: str, source_fingerprint: str, params: ScoreParams, root: str,
                  work: ScoreWork, force: bool = False) -> StageRef:
    """The ``score`` task on Dask: the same cache key as ``score.score_task`` (the stage key)."""
    return run(work, model, source_fingerprint, params, root, force)
