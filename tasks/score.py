"""Stage 8, score: a registered model + any reviews → ``predictions.parquet`` (``id``,
``prob_pos``, ``pred``, ``label`` where the source has labels, ``status``) and ``stats.json``.

Exactly one output row per input row, in input order. A row that cannot be scored keeps its
place with a null ``prob_pos``/``pred`` and a ``status`` saying why (``null``, ``empty``,
``not_text``); ``ok`` rows are scored.

Reviews stream through in batches (``batch_rows``): read, checked, tokenized and encoded with the
model's own vocabulary by worker processes (one batch each), then scored by this process with
all cores, written as one row group: the input is never held whole in memory. When the
source's test part was already tokenized and encoded by the data stages with the model's
tokenizer settings and vocabulary (the same bytes), those encoded shards are scored instead and
nothing is tokenized again.

The stage key covers the model (its logged model's uuid), the source's fingerprint, the split and
threshold, and the code: rescoring the same reviews with the same model is served from the store.
"""

from __future__ import annotations

import logging
import itertools
import multiprocessing as mp
import tempfile
import time
from contextlib import closing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, Field

from sentiflow.storage.store import StageRef, Store, file_sha256
from sentiflow.tasks import encode, ingest, stage
from sentiflow.tasks import tokenize as tokenize_stage
from sentiflow.tasks.metrics import classification_metrics
from sentiflow.tasks.score_sources import OK, STATUSES, ReviewBatch, Split, as_text, open_reviews, status_of
from sentiflow.tasks.inference import Encoded, Scorer
from sentiflow.tasks.serving import ModelRef, download_model
from sentiflow.tasks.text import TokenizeParams, Vocab, tokenize_texts

STAGE = "score"
BATCH_ROWS = 4096  # reviews read, prepared and scored at a time
log = logging.getLogger("sentiflow.score")
# every module that decides a prediction or a row's id, label or status (not training's: a change
# to the training loop changes no score)
CODE = ["sentiflow.tasks.score", "sentiflow.tasks.score_sources", "sentiflow.tasks.sources",
        "sentiflow.tasks.reviews",
        "sentiflow.tasks.ingest", "sentiflow.tasks.encode", "sentiflow.tasks.inference",
        "sentiflow.tasks.text", "sentiflow.tasks.model"]


class ScoreParams(BaseModel):
    split: Split = Field("auto", description="auto: the source's test part if it has one, else all of it")
    threshold: float = Field(0.5, gt=0, lt=1, description="pred = 1 where prob_pos > threshold")


class ScoreStats(BaseModel):
    rows: int = 0
    statuses: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    labeled: bool = False
    labeled_rows: int = 0  # scored rows with a label: what the metrics are computed on
    confusion: list[list[int]] = [[0, 0], [0, 0]]  # [[tn, fp], [fn, tp]]
    seconds: float = 0.0
    reused: str | None = None  # the encode stage scored instead of tokenizing, if any

    @property
    def reviews_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float] | None:
        return classification_metrics(np.array(self.confusion)) if self.labeled_rows else None


def out_schema(labeled: bool) -> pa.Schema:
    fields = [("id", pa.string()), ("prob_pos", pa.float32()), ("pred", pa.int8())]
    return pa.schema([*fields, *([("label", pa.int8())] if labeled else []), ("status", pa.string())])


# -- preparing batches: check, tokenize, encode (in worker processes) -----------------------------

_worker: dict[str, Any] = {}


def _init_worker(itos: list[str], params: TokenizeParams, quiet: bool = True) -> None:
    if quiet:  # a worker process (see sentiflow.tasks.tokenize): it never logs, it ends with its parent
        logging.disable(logging.CRITICAL)
        tokenize_stage.exit_with_parent()
    _worker.update(vocab=Vocab(itos), params=params)


def _prepare(texts: list[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Raw values → (status per row, token ids of the ``ok`` rows, their offsets)."""
    statuses = [status_of(t) for t in texts]
    ok = [as_text(t) for t, s in zip(texts, statuses) if s == OK]
    ids = _worker["vocab"].encode(tokenize_texts(ok, _worker["params"]))
    return statuses, ids.values.to_numpy(zero_copy_only=False), ids.offsets.to_numpy()


def _prepared(batches: Iterator[ReviewBatch], scorer: Scorer, workers: int,
              ) -> Iterator[tuple[ReviewBatch, tuple[list[str], np.ndarray, np.ndarray]]]:
    """Each batch with its prepared form. With workers: ``workers`` batches are prepared at once,
    one per process, then scored here while the workers wait. Phases take turns rather than
    overlap: PyTorch's OpenMP threads spin while they wait, so scoring beside busy tokenizer
    processes was slower than taking turns with all cores each (25,000 reviews on 2 cores:
    overlapped 24.3 s with 2 threads, 18.3 s with 1; in turns see docs/benchmarks.md)."""
    if workers <= 1:
        _init_worker(scorer.vocab.itos, scorer.tokenize, quiet=False)
        for b in batches:
            yield b, _prepare(b.texts)
        return
    tokenize_stage._tokenizer()  # built before the fork (see sentiflow.tasks.tokenize): workers only use it
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker,
                             initargs=(scorer.vocab.itos, scorer.tokenize)) as pool:
        while group := list(itertools.islice(batches, workers)):
            futures = [pool.submit(_prepare, b.texts) for b in group]
            for b, f in zip(group, futures):
                yield b, f.result()


# -- scoring --------------------------------------------------------------------------------------

class _Writer:
    """Writes scored batches and keeps the counts."""

    def __init__(self, out_file: Path, labeled: bool, threshold: float, stats: ScoreStats):
        self.writer = pq.ParquetWriter(out_file, out_schema(labeled), compression="zstd")
        self.labeled, self.threshold, self.stats = labeled, threshold, stats
        self.last_log = time.perf_counter()

    def write(self, ids: list[str], statuses: list[str], probs: np.ndarray,
              labels: list[int | None] | None) -> None:
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
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.writer.schema))
        self.stats.rows += len(ids)
        for s in statuses:
            self.stats.statuses[s] += 1
        if time.perf_counter() - self.last_log > 10:
            self.last_log = time.perf_counter()
            log.info("scored %d reviews", self.stats.rows)

    def close(self) -> None:
        self.writer.close()


def bounded_memory() -> None:
    """CPU settings for scoring: denormals flushed (~1.3x faster here)."""
    torch.set_flush_denormal(True)


def release_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``) after each batch.
    Scoring allocates big tensors of ever-changing sizes; without this the heap fragments and the
    peak grows with the input. Measured in one process here: 875 MB at 25,000 reviews and
    1,396 MB at 100,000 without it; 999 and 1,073 MB with it, at no measurable cost (mapping
    every big allocation on its own instead: 730 and 844 MB, but ~20 % slower)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


def score(scorer: Scorer, source: str, out_dir: Path, params: ScoreParams = ScoreParams(),
          workers: int = 1, batch_rows: int = BATCH_ROWS, reuse: StageRef | None = None) -> ScoreStats:
    """Score ``source`` into ``out_dir/predictions.parquet``; returns the counts and timing."""
    started = time.perf_counter()
    stats = ScoreStats(reused=reuse.key if reuse else None)
    bounded_memory()
    _score(scorer, source, out_dir, params, workers, batch_rows, reuse, stats)
    stats.seconds = time.perf_counter() - started
    (out_dir / "stats.json").write_text(stats.model_dump_json(indent=2))
    log.info("scored %d reviews in %.1f s (%.0f/s): %s", stats.rows, stats.seconds,
             stats.reviews_per_second, ", ".join(f"{k} {v}" for k, v in stats.statuses.items() if v))
    return stats


def _score(scorer: Scorer, source: str, out_dir: Path, params: ScoreParams, workers: int, batch_rows: int,
           reuse: StageRef | None, stats: ScoreStats) -> None:
    if reuse is not None:  # the data stages' encoded test part: every row ok, every row labeled
        stats.labeled = True
        with closing(_Writer(out_dir / "predictions.parquet", True, params.threshold, stats)) as writer:
            for shard in reuse.shards():
                data = Encoded.from_table(pq.read_table(shard, columns=["id", "label", "ids"]), scorer.max_len)
                probs = scorer.predict_encoded(data)
                writer.write(data.ids, [OK] * len(data), probs, data.labels.astype(np.int8).tolist())
                release_memory()
    else:
        stream = open_reviews(source, params.split, batch_rows)
        stats.labeled = stream.labeled
        # closed on any error too: the worker pool and the file handle go with the failed run
        with closing(_Writer(out_dir / "predictions.parquet", stream.labeled, params.threshold, stats)) as writer, \
                closing(_prepared(stream.batches, scorer, workers)) as prepared:
            for batch, (statuses, flat, offsets) in prepared:
                data = Encoded(flat.astype(np.int64), offsets.astype(np.int64),
                               np.zeros(len(offsets) - 1, np.float32), [])
                probs = scorer.predict_encoded(data.truncated(scorer.max_len) if scorer.max_len else data)
                writer.write(batch.ids, statuses, probs, batch.labels)
                release_memory()


def read_stats(ref: StageRef) -> ScoreStats:
    return ScoreStats.model_validate_json(ref.file("stats.json").read_text())


# -- reusing the data stages ----------------------------------------------------------------------

def cached_encoding(root: Path | str, vocab_file: Path, tokenize: TokenizeParams, source_fp: str,
                    split: Split) -> StageRef | None:
    """The data stages' encoded test part of this source, made with this tokenizer setting and
    this vocabulary (byte for byte), when it is in the store and valid; else None."""
    if split not in ("auto", "test"):
        return None
    store = Store(root)
    ingested = ingest.plan(root, source_fp)
    if not store.is_valid(ingested) or not ingested.manifest().get("rows", {}).get("test.parquet"):
        return None
    tokens = tokenize_stage.plan(root, tokenize, ingested, "test")
    if not store.is_valid(tokens):
        return None
    sha = file_sha256(vocab_file)
    for entry in store.list():
        if entry["stage"] != "vocab":
            continue
        vocab = store.ref("vocab", entry["key"])
        if vocab.manifest()["files"].get("vocab.parquet", {}).get("sha256") != sha:
            continue
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
    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sentiflow-model-") as tmp:
            files = download_model(model, Path(tmp))
            scorer = Scorer.from_files(files["config"], files["vocab"], files["weights"])
            reuse = cached_encoding(root, files["vocab"], scorer.tokenize, source_fp, params.split)
            if reuse is not None:
                log.info("scoring the cached encode stage %s (no tokenizing)", reuse.key)
            score(scorer, source, out, params, workers, batch_rows, reuse)

    return stage.run_stage(root, spec(params, model, source_fp), build, force)


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["params"], p["model"], p["source_fingerprint"])


@stage.stage_task("score", _planner)
def score_task(model: ModelRef, source: str, source_fingerprint: str, params: ScoreParams, root: str,
               workers: int = 1, batch_rows: int = BATCH_ROWS, force: bool = False) -> StageRef:
    return run(model, source, source_fingerprint, params, root, workers, batch_rows, force)
