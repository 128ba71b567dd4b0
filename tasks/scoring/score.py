"""Stage 8, score: a registered model + any reviews → ``predictions.parquet`` (``id``,
``prob_pos``, ``pred``, ``label`` where the source has labels, ``status``, ``oov_share``) and
``stats.json``.

Exactly one output row per input row, in input order. A row that cannot be scored keeps its
place with a null ``prob_pos``/``pred`` and a ``status`` saying why (``null``, ``empty``,
``not_text``, or ``out_of_domain``: more of its tokens outside the model's vocabulary than
``max_oov`` allows); ``ok`` rows are scored. ``oov_share``: the share of the review's tokens
outside the vocabulary (null where it was not tokenized, or has no token).

How far the reviews are from the model's training data (``sentiflow.tasks.scoring.drift``): the run's
review lengths and OOV shares (``ScoreStats.profile``) are compared with the training split's,
which the model carries (``train_stats.json``); the result (``ScoreStats.drift``) holds the drift
metrics and warnings. A model logged without it still scores, with a note instead.

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

import itertools
import logging
import multiprocessing as mp
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager, nullcontext
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
from sentiflow.tasks.core.text import TokenizeParams, Vocab, tokenize_texts
from sentiflow.tasks.cpu import release_memory, tune_cpu
from sentiflow.tasks.data import encode
from sentiflow.tasks.data import tokenize as tokenize_stage
from sentiflow.tasks.data.shards import shards_of
from sentiflow.tasks.metrics import classification_metrics
from sentiflow.tasks.scoring import drift as drift_stats
from sentiflow.tasks.scoring.drift import Drift, Profile, TrainStats
from sentiflow.tasks.scoring.score_config import PART_ROWS, ScoreParams
from sentiflow.tasks.scoring.score_sources import (
    OK,
    OUT_OF_DOMAIN,
    STATUSES,
    ReviewBatch,
    SourcePart,
    Split,
    as_text,
    open_reviews,
    part_batches,
    plan_parts,
    status_of,
)
from sentiflow.tasks.scoring.serving import TRAIN_STATS, ModelRef, download_model

STAGE = "score"
BATCH_ROWS = 4096  # reviews read, prepared and scored at a time
# batches prepared ahead of the one scored at most: enough for the tokenizers to finish IMDb's
# test part (25,000 reviews) while it is scored, and a bound on memory whatever the input's size
AHEAD = 6
# reviews scored between two looks at the tokenizers (the PyTorch threads follow what they do)
SCORE_CHUNK = 512
log = logging.getLogger("sentiflow.score")
# every module that decides a prediction or a row's id, label or status (not training's: a change
# to the training loop changes no score)
CODE = ["sentiflow.tasks.scoring.score", "sentiflow.tasks.scoring.score_sources", "sentiflow.tasks.data.sources",
        "sentiflow.tasks.data.reviews", "sentiflow.tasks.scoring.drift", "sentiflow.tasks.data.ingest",
        "sentiflow.tasks.data.encode", *stage.model_code()]


class ScoreStats(BaseModel):
    rows: int = 0
    statuses: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
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


# -- preparing batches: check, tokenize, encode (in worker processes) -----------------------------

_worker: dict[str, Any] = {}


def _init_worker(itos: list[str], params: TokenizeParams) -> None:
    """A worker process (see sentiflow.tasks.data.tokenize): it never logs, it ends with its parent, it
    trims its heap after each batch as the scoring process does (``release_memory``)."""
    logging.disable(logging.CRITICAL)
    tokenize_stage.exit_with_parent()
    _worker.update(vocab=Vocab(itos), params=params, trim=True)


def _prepare(texts: list[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """In a worker process: ``_prepare_with`` its vocabulary and settings, then trim its heap."""
    prepared = _prepare_with(texts, _worker["vocab"], _worker["params"])
    if _worker["trim"]:
        release_memory()
    return prepared


def _prepare_with(texts: list[Any], vocab: Vocab, params: TokenizeParams) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Raw values → (status per row, token ids of the ``ok`` rows, their offsets)."""
    statuses = [status_of(t) for t in texts]
    ok = [as_text(t) for t, s in zip(texts, statuses) if s == OK]
    ids = vocab.encode(tokenize_texts(ok, params))
    return statuses, ids.values.to_numpy(zero_copy_only=False), ids.offsets.to_numpy()


def tokenizer_processes(workers: int) -> int:
    """Of ``workers`` cores, the tokenizer processes: half (at least one); the other half score.
    Tokenizing a review and its forward pass cost about the same CPU time here (25,000 IMDb
    reviews: ~13 s of spaCy, ~15 s of one-thread LSTM)."""
    return max(1, workers // 2)


def _prepared(batches: Iterator[ReviewBatch], scorer: Scorer, workers: int,
              ) -> Iterator[tuple[ReviewBatch, tuple[list[str], np.ndarray, np.ndarray], Callable[[], bool]]]:
    """Each batch with its prepared form, in order, and a function that tells whether tokenizing
    goes on at that moment. With ``workers`` >= 2, a pool of ``tokenizer_processes`` prepares up
    to ``AHEAD`` batches ahead while this process scores the current one (a pipeline: both
    phases run at once, each on its own cores; ``_score_batches`` gives PyTorch the rest of the
    cores while the tokenizers work, all of them while they wait). Taking turns instead (all
    cores tokenizing, then all scoring) lost to it on the shared 2-core machine, where two
    OpenMP threads beside any other busy process spin: see docs/benchmarks.md."""
    if workers <= 1:  # here: no global state, so a Dask worker may score parts in several threads
        for b in batches:
            yield b, _prepare_with(b.texts, scorer.vocab, scorer.tokenize), lambda: False
        return
    tokenize_stage._tokenizer()  # built before the fork (see sentiflow.tasks.data.tokenize): workers only use it
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    n = tokenizer_processes(workers)
    batches = ramped(batches)
    with ProcessPoolExecutor(n, mp_context=mp.get_context(method), initializer=_init_worker,
                             initargs=(scorer.vocab.itos, scorer.tokenize)) as pool:
        pending = deque((b, pool.submit(_prepare, b.texts)) for b in itertools.islice(batches, AHEAD))

        def tokenizing() -> bool:
            return any(not future.done() for _, future in pending)

        while pending:
            batch, future = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append((following, pool.submit(_prepare, following.texts)))
            yield batch, future.result(), tokenizing


def ramped(batches: Iterator[ReviewBatch], first: int = 512) -> Iterator[ReviewBatch]:
    """The same rows, the first batch cut into pieces of ``first``, 2 × ``first``, … rows: the
    pipeline's scoring waits only for a small first piece to be tokenized, not a whole batch."""
    head = next(batches, None)
    if head is None:
        return
    start, size = 0, first
    while start < len(head.ids):
        end = min(start + size, len(head.ids))
        yield ReviewBatch(head.ids[start:end], head.texts[start:end],
                          None if head.labels is None else head.labels[start:end])
        start, size = end, size * 2
    yield from batches


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- scoring --------------------------------------------------------------------------------------

class _Writer:
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
    stats = ScoreStats(reused=reuse.key if reuse else None)
    tune_cpu()
    _score(scorer, source, out_dir, params, workers, batch_rows, reuse, stats)
    judge_drift(stats, train_stats)
    stats.seconds = time.perf_counter() - started
    (out_dir / "stats.json").write_text(stats.model_dump_json(indent=2))
    log.info("scored %d reviews in %.1f s (%.0f/s): %s", stats.rows, stats.seconds,
             stats.reviews_per_second, ", ".join(f"{k} {v}" for k, v in stats.statuses.items() if v))
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
        with closing(_Writer(out_dir / "predictions.parquet", True, params.threshold, stats)) as writer:
            _score_shards(scorer, reuse.shards(), writer, params.max_oov)
    else:
        stream = open_reviews(source, params.split, batch_rows)
        stats.labeled = stream.labeled
        with closing(_Writer(out_dir / "predictions.parquet", stream.labeled, params.threshold, stats)) as writer:
            _score_batches(scorer, stream.batches, writer, workers, params.max_oov)


def _score_rows(scorer: Scorer, writer: _Writer, max_oov: float | None, ids: list[str],
                labels: list[int | None] | None, statuses: list[str], flat: np.ndarray, offsets: np.ndarray,
                threads: Callable[[], int] | None = None) -> None:
    """One batch: a status per row, and the token ids of its ``ok`` rows (whole reviews:
    ``flat``, ``offsets``). Their lengths and OOV shares go to the run's profile; a row whose OOV
    share exceeds ``max_oov`` becomes ``out_of_domain``; the other ``ok`` rows are scored (with
    ``threads()`` PyTorch threads, asked again every ``SCORE_CHUNK`` reviews, when given)."""
    lengths = np.diff(offsets)
    unk = drift_stats.oov_counts(flat, offsets, scorer.vocab.unk_id)
    writer.stats.profile.add(Profile.of(lengths, unk))
    share = drift_stats.oov_shares(lengths, unk)  # per ok row; NaN without a token (never out of domain)
    keep = ~(share > max_oov) if max_oov is not None else np.ones(len(share), bool)
    ok_rows = [i for i, s in enumerate(statuses) if s == OK]
    if not keep.all():
        statuses = list(statuses)
        for i in np.flatnonzero(~keep):
            statuses[ok_rows[i]] = OUT_OF_DOMAIN
    data = Encoded(flat, offsets, np.zeros(len(offsets) - 1, np.float32), []).subset(keep)
    probs = _predict(scorer, data.truncated(scorer.max_len) if scorer.max_len else data, threads)
    oov = np.full(len(statuses), np.nan)
    oov[ok_rows] = share
    writer.write(ids, statuses, probs, labels, oov)


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


def _score_shards(scorer: Scorer, shards: list[Path], writer: _Writer, max_oov: float | None = None) -> None:
    """Encoded shards of the data stages (``id``, ``label``, ``ids``): every row tokenized and labeled."""
    for shard in shards:
        data = Encoded.from_table(pq.read_table(shard, columns=["id", "label", "ids"]))  # whole reviews
        _score_rows(scorer, writer, max_oov, data.ids, data.labels.astype(np.int8).tolist(), [OK] * len(data),
                    data.flat, data.offsets)
        release_memory()


def _score_batches(scorer: Scorer, batches: Iterator[ReviewBatch], writer: _Writer, workers: int,
                   max_oov: float | None = None) -> None:
    """With ``workers`` >= 2, PyTorch scores with the cores the tokenizers leave, all of them once
    tokenizing is done (``_prepared``); with fewer, as the process is set up."""
    beside = workers - tokenizer_processes(workers)
    # closed on any error too: the worker pool goes with the failed run
    with closing(_prepared(batches, scorer, workers)) as prepared, \
            (torch_threads(torch.get_num_threads()) if workers >= 2 else nullcontext()):
        for batch, (statuses, flat, offsets), tokenizing in prepared:
            threads = (lambda busy=tokenizing: max(1, beside) if busy() else workers) if workers >= 2 else None
            _score_rows(scorer, writer, max_oov, batch.ids, batch.labels, statuses, flat.astype(np.int64),
                        offsets.astype(np.int64), threads)
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


# -- in parts: one task per part of the input (on Dask) -------------------------------------------



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
        reuse = cached_encoding(root, files["vocab"], _load(files).tokenize, source_fp, params.split)
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
    stats = ScoreStats(labeled=part.labeled)
    tune_cpu()
    with closing(_Writer(part.out_file, part.labeled, params.threshold, stats)) as writer:
        if part.encoded is not None:
            _score_shards(scorer, [Path(part.encoded)], writer, params.max_oov)
        else:
            _score_batches(scorer, part_batches(part.source, batch_rows), writer, 1, params.max_oov)
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


# -- stage and task -------------------------------------------------------------------------------

def spec(params: ScoreParams, model: ModelRef, source_fp: str) -> stage.StageSpec:
    import spacy

    return stage.StageSpec(STAGE, params, (f"model:{model.model_uuid}", f"source:{source_fp}"),
                           stage.code_version(CODE, f"spacy=={spacy.__version__}", f"torch=={torch.__version__}"))


def plan(root: Path | str, params: ScoreParams, model: ModelRef, source_fp: str) -> StageRef:
    return spec(params, model, source_fp).ref(root)


def run(model: ModelRef, source: str, source_fp: str, params: ScoreParams, root: Path | str,
        workers: int = 1, batch_rows: int = BATCH_ROWS, force: bool = False,
        work: ScoreWork | None = None) -> StageRef:
    """The score stage: scored here (``workers`` tokenizer processes), or, given ``work`` whose
    parts were all scored (``score_part``), assembled from them."""
    def build(out: Path) -> None:
        if work is not None:
            assemble(work, out)
            return
        with tempfile.TemporaryDirectory(prefix="sentiflow-model-") as tmp:
            files = download_model(model, Path(tmp))
            scorer = Scorer.from_files(files["config"], files["vocab"], files["weights"])
            reuse = cached_encoding(root, files["vocab"], scorer.tokenize, source_fp, params.split)
            if reuse is not None:
                log.info("scoring the cached encode stage %s (no tokenizing)", reuse.key)
            score(scorer, source, out, params, workers, batch_rows, reuse,
                  drift_stats.read_train_stats(files.get(TRAIN_STATS)))

    return stage.run_stage(root, spec(params, model, source_fp), build, force)


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["params"], p["model"], p["source_fingerprint"])


@stage.stage_task("score", _planner)
def score_task(model: ModelRef, source: str, source_fingerprint: str, params: ScoreParams, root: str,
               workers: int = 1, batch_rows: int = BATCH_ROWS, force: bool = False,
               work: ScoreWork | None = None) -> StageRef:
    return run(model, source, source_fingerprint, params, root, workers, batch_rows, force, work)

