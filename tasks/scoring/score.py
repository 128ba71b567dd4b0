"""Stage 8, score: a registered model + any reviews → ``predictions.parquet`` (``id``,
``prob_pos``, ``pred``, ``label`` where the source has labels, ``status``, ``oov_share``) and
``stats.json``.

Exactly one output row per input row, in input order. A row that cannot be scored keeps its
place with a null ``prob_pos``/``pred`` and a ``status`` saying why (``null``, ``empty``,
``not_text``, or ``out_of_domain``: more of its tokens outside the model's vocabulary than
``max_oov`` allows); ``ok`` rows are scored. ``oov_share``: the share of the review's tokens
outside the vocabulary (null where it was not tokenized, or has no token).

A review longer than the model's character budget (``Scorer.max_chars``:
``sentiflow.tasks.core.text.char_budget``, 100,000 characters unless ``max_len`` asks more) is
read only up to it (``open_reviews``: a 1 GB review costs no more than that once read, besides
what its format makes the reader hold) and scored on its first part; ``ScoreStats.cut`` counts
such rows.

How far the reviews are from the model's training data (``sentiflow.tasks.scoring.drift``): the run's
review lengths and OOV shares (``ScoreStats.profile``) are compared with the training split's,
which the model carries (``train_stats.json``); the result (``ScoreStats.drift``) holds the drift
metrics and warnings. A model logged without it still scores, with a note instead.

A row's status, probability and OOV share are those ``sentiflow.tasks.core.inference.score_texts``
gives (the rules of ``sentiflow.tasks.core.rows``): the same as ``sentiflow predict`` and the
served model give. Reviews stream through in batches (``batch_rows``): read, checked, tokenized
and encoded with the model's own vocabulary by worker processes (``score_pool``, one batch each),
then judged (``Scorer.judge``) and scored by this process with all cores, written as one row
group: the input is never held whole in memory. When the source's test part was already
tokenized and encoded by the data stages with the model's tokenizer settings and vocabulary (the
same bytes), those encoded shards are scored instead and nothing is tokenized again.

The stage key covers the model (its logged model's uuid), the source's fingerprint, the split and
threshold, and the code: rescoring the same reviews with the same model is served from the store.
On Dask the stage is scored in parts and assembled (``score_dask``), with the same key and output.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, Field

from sentiflow.storage.store import StageRef, Store, file_sha256
from sentiflow.tasks import stage
from sentiflow.tasks.core.inference import Encoded, Scorer
from sentiflow.tasks.core.rows import OK, STATUSES
from sentiflow.tasks.core.text import MAX_REVIEW_CHARS, TokenizeParams
from sentiflow.tasks.cpu import release_memory, tune_cpu
from sentiflow.tasks.data import encode
from sentiflow.tasks.data import tokenize as tokenize_stage
from sentiflow.tasks.data.shards import shards_of
from sentiflow.tasks.metrics import classification_metrics
from sentiflow.tasks.scoring import drift as drift_stats
from sentiflow.tasks.scoring.drift import Drift, Profile, TrainStats
from sentiflow.tasks.scoring.score_config import ScoreParams
from sentiflow.tasks.scoring.score_pool import prepared, tokenizer_processes, torch_threads
from sentiflow.tasks.scoring.score_sources import ReviewBatch, Split, open_reviews
from sentiflow.tasks.scoring.serving import TRAIN_STATS, ModelRef, download_model

STAGE = "score"
BATCH_ROWS = 4096  # reviews read, prepared and scored at a time
# reviews scored between two looks at the tokenizers (the PyTorch threads follow what they do)
SCORE_CHUNK = 512
log = logging.getLogger("sentiflow.score")
# every module that decides a prediction or a row's id, label or status (not training's: a change
# to the training loop changes no score); the row rules and score_texts are the model's code
CODE = ["sentiflow.tasks.scoring.score", "sentiflow.tasks.scoring.score_pool",
        "sentiflow.tasks.scoring.score_dask", "sentiflow.tasks.scoring.score_sources",
        "sentiflow.tasks.data.sources", "sentiflow.tasks.data.reviews", "sentiflow.tasks.scoring.drift",
        "sentiflow.tasks.data.ingest", "sentiflow.tasks.data.encode", *stage.model_code()]


class ScoreStats(BaseModel):
    rows: int = 0
    statuses: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    # ok rows longer than the model's character budget, scored on their first part (not counted
    # when the cached encode stage is scored: the data stages cut at the same budget)
    cut: int = 0
    max_chars: int | None = None  # that budget (Scorer.max_chars)
    labeled: bool = False
    labeled_rows: int = 0  # scored rows with a label: what the metrics are computed on
    confusion: list[list[int]] = [[0, 0], [0, 0]]  # [[tn, fp], [fn, tp]]
    seconds: float = 0.0
    reused: str | None = None  # the encode stage scored instead of tokenizing, if any
    profile: Profile = Field(default_factory=Profile)  # lengths and OOV shares of the tokenized rows
    drift: Drift | None = None  # against the model's training split; None: the model has no stats
    drift_note: str | None = None  # why there is no comparison

    @property
    def reviews_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float] | None:
        return classification_metrics(np.array(self.confusion)) if self.labeled_rows else None


def out_schema(labeled: bool) -> pa.Schema:
    fields = [("id", pa.string()), ("prob_pos", pa.float32()), ("pred", pa.int8())]
    return pa.schema([*fields, *([("label", pa.int8())] if labeled else []), ("status", pa.string()),
                      ("oov_share", pa.float32())])


# -- scoring --------------------------------------------------------------------------------------

class Writer:
    """Writes scored batches and keeps the counts."""

    def __init__(self, out_file: Path, labeled: bool, threshold: float, stats: ScoreStats):
        self.writer = pq.ParquetWriter(out_file, out_schema(labeled), compression="zstd")
        self.labeled, self.threshold, self.stats = labeled, threshold, stats
        self.last_log = time.perf_counter()

    def write(self, ids: list[str], statuses: list[str], probs: np.ndarray,
              labels: list[int | None] | None, oov: np.ndarray) -> None:
        """``probs``: of the ``ok`` rows, in order; ``oov``: every row's OOV share (NaN: none)."""
        ok = np.array([s == OK for s in statuses], dtype=bool)
        prob = np.zeros(len(ids), np.float32)
        prob[ok] = probs
        pred = (prob > self.threshold).astype(np.int8)
        cols = [pa.array(ids, pa.string()), pa.array(prob, mask=~ok), pa.array(pred, mask=~ok)]
        if self.labeled:
            labels = labels if labels is not None else [None] * len(ids)
            cols.append(pa.array(labels, pa.int8()))
            lab = np.array([-1 if v is None else v for v in labels], np.int8)
            has = ok & (lab >= 0)
            cm = np.array(self.stats.confusion) + np.array(
                [[int(((lab == t) & (pred == p) & has).sum()) for p in (0, 1)] for t in (0, 1)])
            self.stats.confusion = cm.tolist()
            self.stats.labeled_rows += int(has.sum())
        cols.append(pa.array(statuses, pa.string()))
        cols.append(pa.array(oov.astype(np.float32), mask=np.isnan(oov)))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.writer.schema))
        self.stats.rows += len(ids)
        for s in statuses:
            self.stats.statuses[s] += 1
        if time.perf_counter() - self.last_log > 10:
            self.last_log = time.perf_counter()
            log.info("scored %d reviews", self.stats.rows)

    def close(self) -> None:
        self.writer.close()


def score(scorer: Scorer, source: str, out_dir: Path, params: ScoreParams = ScoreParams(),
          workers: int = 1, batch_rows: int = BATCH_ROWS, reuse: StageRef | None = None,
          train_stats: TrainStats | None = None) -> ScoreStats:
    """Score ``source`` into ``out_dir/predictions.parquet``; returns the counts and timing, and
    the drift against ``train_stats`` (the model's training split) when given."""
    started = time.perf_counter()
    stats = ScoreStats(reused=reuse.key if reuse else None, max_chars=scorer.max_chars)
    tune_cpu()
    _score(scorer, source, out_dir, params, workers, batch_rows, reuse, stats)
    judge_drift(stats, train_stats)
    stats.seconds = time.perf_counter() - started
    (out_dir / "stats.json").write_text(stats.model_dump_json(indent=2))
    log.info("scored %d reviews in %.1f s (%.0f/s): %s", stats.rows, stats.seconds,
             stats.reviews_per_second, ", ".join(f"{k} {v}" for k, v in stats.statuses.items() if v))
    if stats.cut:
        log.warning("%d reviews longer than %d characters were scored on their first %d",
                    stats.cut, scorer.max_chars, scorer.max_chars)
    return stats


NO_TRAIN_STATS = (f"the model carries no {drift_stats.STATS_FILE} (logged before drift checks): "
                  "no comparison with its training data")


def judge_drift(stats: ScoreStats, train_stats: TrainStats | None) -> None:
    """``stats.drift``: the run's profile against the training split's; a note without one."""
    if train_stats is None:
        stats.drift_note = NO_TRAIN_STATS
        return
    stats.drift = drift_stats.compare(train_stats, stats.profile)
    for warning in stats.drift.warnings:
        log.warning("drift: %s", warning)


def _score(scorer: Scorer, source: str, out_dir: Path, params: ScoreParams, workers: int, batch_rows: int,
           reuse: StageRef | None, stats: ScoreStats) -> None:
    if reuse is not None:  # the data stages' encoded test part: every row ok, every row labeled
        stats.labeled = True
        with closing(Writer(out_dir / "predictions.parquet", True, params.threshold, stats)) as writer:
            score_shards(scorer, reuse.shards(), writer, params.max_oov)
    else:
        stream = open_reviews(source, params.split, batch_rows, scorer.max_chars)
        stats.labeled = stream.labeled
        with closing(Writer(out_dir / "predictions.parquet", stream.labeled, params.threshold, stats)) as writer:
            score_batches(scorer, stream.batches, writer, workers, params.max_oov)


def _score_rows(scorer: Scorer, writer: Writer, max_oov: float | None, ids: list[str],
                labels: list[int | None] | None, statuses: list[str], flat: np.ndarray, offsets: np.ndarray,
                threads: Callable[[], int] | None = None, cut: int = 0) -> None:
    """One batch: a status per row, and the token ids of its ``ok`` rows (whole reviews, or
    their first ``Scorer.max_chars`` characters for the ``cut`` longer ones: ``flat``,
    ``offsets``), judged as ``score_texts`` judges them (``Scorer.judge``: OOV shares,
    the ``max_oov`` cut). Their lengths and OOV shares go to the run's profile; the rows still
    ``ok`` are scored (with ``threads()`` PyTorch threads, asked again every ``SCORE_CHUNK``
    reviews, when given)."""
    writer.stats.cut += cut
    judged = scorer.judge(statuses, flat, offsets, max_oov)
    writer.stats.profile.add(Profile.of(judged.lengths, judged.unk))
    probs = _predict(scorer, judged.to_score, threads)
    writer.write(ids, judged.statuses, probs, labels, judged.oov_share)


def _predict(scorer: Scorer, data: Encoded, threads: Callable[[], int] | None) -> np.ndarray:
    """P(positive) per row, in chunks of ``SCORE_CHUNK`` reviews of similar lengths (the batches
    the whole would have been cut into), each with ``threads()`` PyTorch threads when given, the
    heap trimmed after each: the big blocks the allocator keeps (``tune_cpu``) would otherwise
    fragment it, and memory would grow with the input."""
    order = np.argsort(data.lengths, kind="stable")
    probs = np.empty(len(data), np.float32)
    for start in range(0, len(order), SCORE_CHUNK):
        rows = np.sort(order[start:start + SCORE_CHUNK])
        keep = np.zeros(len(data), bool)
        keep[rows] = True
        if threads is not None:
            torch.set_num_threads(threads())
        probs[rows] = scorer.predict_encoded(data.subset(keep))
        release_memory()
    return probs


def score_shards(scorer: Scorer, shards: list[Path], writer: Writer, max_oov: float | None = None) -> None:
    """Encoded shards of the data stages (``id``, ``label``, ``ids``): every row tokenized and labeled."""
    for shard in shards:
        data = Encoded.from_table(pq.read_table(shard, columns=["id", "label", "ids"]))  # whole reviews
        _score_rows(scorer, writer, max_oov, data.ids, data.labels.astype(np.int8).tolist(), [OK] * len(data),
                    data.flat, data.offsets)
        release_memory()


def score_batches(scorer: Scorer, batches: Iterator[ReviewBatch], writer: Writer, workers: int,
                  max_oov: float | None = None) -> None:
    """With ``workers`` >= 2, PyTorch scores with the cores the tokenizers leave, all of them once
    tokenizing is done (``score_pool.prepared``); with fewer, as the process is set up."""
    beside = workers - tokenizer_processes(workers)
    # closed on any error too: the worker pool goes with the failed run
    with closing(prepared(batches, scorer, workers)) as batches_prepared, \
            (torch_threads(torch.get_num_threads()) if workers >= 2 else nullcontext()):
        for batch, (statuses, flat, offsets, cut), tokenizing in batches_prepared:
            threads = (lambda busy=tokenizing: max(1, beside) if busy() else workers) if workers >= 2 else None
            _score_rows(scorer, writer, max_oov, batch.ids, batch.labels, statuses, flat.astype(np.int64),
                        offsets.astype(np.int64), threads, cut)
            release_memory()


def read_stats(ref: StageRef) -> ScoreStats:
    return ScoreStats.model_validate_json(ref.file("stats.json").read_text())


# -- reusing the data stages ----------------------------------------------------------------------

def cached_encoding(root: Path | str, vocab_file: Path, tokenize: TokenizeParams, source_fp: str,
                    split: Split) -> StageRef | None:
    """The data stages' encoded test part of this source, made with this tokenizer setting and
    this vocabulary (byte for byte), when it is in the store and valid; else None. Any ingest of
    the source (whatever its shard size) will do: the shards hold its test reviews in order."""
    if split not in ("auto", "test"):
        return None
    store = Store(root)
    entries = store.list()
    sha = file_sha256(vocab_file)
    vocabs = [store.ref("vocab", e["key"]) for e in entries if e["stage"] == "vocab"]
    vocabs = [v for v in vocabs if v.manifest()["files"].get("vocab.parquet", {}).get("sha256") == sha]
    for entry in entries:
        if entry["stage"] != "ingest" or entry["inputs"] != [source_fp]:
            continue
        ingested = store.ref("ingest", entry["key"])
        if not store.is_valid(ingested) or not sum(s.rows for s in shards_of(ingested, "test")):
            continue
        tokens = tokenize_stage.plan(root, tokenize, ingested, "test")
        if not store.is_valid(tokens):
            continue
        for vocab in vocabs:
            encoded = encode.plan(root, tokens, vocab)
            if store.is_valid(encoded):
                return encoded
    return None


# -- stage and task -------------------------------------------------------------------------------

def spec(params: ScoreParams, model: ModelRef, source_fp: str) -> stage.StageSpec:
    import spacy

    return stage.StageSpec(STAGE, params, (f"model:{model.model_uuid}", f"source:{source_fp}"),
                           stage.code_version(CODE, f"spacy=={spacy.__version__}", f"torch=={torch.__version__}"))


def plan(root: Path | str, params: ScoreParams, model: ModelRef, source_fp: str) -> StageRef:
    return spec(params, model, source_fp).ref(root)


def run(model: ModelRef, source: str, source_fp: str, params: ScoreParams, root: Path | str,
        workers: int = 1, batch_rows: int = BATCH_ROWS, force: bool = False) -> StageRef:
    """The score stage, scored in this process (``workers`` cores: tokenizer processes and
    PyTorch's threads). On Dask: ``score_dask.run``."""
    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sentiflow-model-") as tmp:
            files = download_model(model, Path(tmp))
            scorer = Scorer.from_files(files["config"], files["vocab"], files["weights"])
            reuse = (cached_encoding(root, files["vocab"], scorer.tokenize, source_fp, params.split)
                     if scorer.max_chars == MAX_REVIEW_CHARS else None)  # the data stages' cut
            if reuse is not None:
                log.info("scoring the cached encode stage %s (no tokenizing)", reuse.key)
            score(scorer, source, out, params, workers, batch_rows, reuse,
                  drift_stats.read_train_stats(files.get(TRAIN_STATS)))

    return stage.run_stage(root, spec(params, model, source_fp), build, force)


def planner(p: dict[str, Any]) -> StageRef:
    """The stage's folder from a score task's parameters (its cache key)."""
    return plan(p["root"], p["params"], p["model"], p["source_fingerprint"])


@stage.stage_task("score", planner)
def score_task(model: ModelRef, source: str, source_fingerprint: str, params: ScoreParams, root: str,
               workers: int = 1, batch_rows: int = BATCH_ROWS, force: bool = False) -> StageRef:
    return run(model, source, source_fingerprint, params, root, workers, batch_rows, force)
