"""Stage 3, tokenize: each shard of reviews → ``id``, ``label``, ``tokens: list<string>`` (and its
token counts), with spaCy's English tokenizer (``spacy.blank("en")``, the same rules as
``en_core_web_sm``), lower-cased. A shard is a stage of its own (``tokenize-shard``), keyed by its
content (``sentiflow.tasks.data.shards``); a part's shards are then gathered (``tokenize``).

The tokenizer itself (settings, ``<br />`` handling, the character budget, ``tokenize_texts``)
lives in ``sentiflow.tasks.core.text``, which the served model carries too. A review is cut to
``MAX_REVIEW_CHARS`` characters before it is tokenized (the stage does not know ``max_len``),
in Arrow before its text is copied into Python (``kept_texts``). The stored token lists are
``list<string>`` (32-bit offsets: a shard holds fewer than 2^31 tokens), what encode reads.

Locally, shards are tokenized in parallel by a process pool (``worker_pool``, one for the data
flow run, forked by the thread of the first shard that needs tokenizing, with spaCy imported just
before); a shard's task hands the worker the file names, the worker reads the shard, tokenizes
with ``Doc.to_array`` (no Python ``Token`` objects), writes its output and returns only a count,
so the flow's process never holds a shard's text. On Dask each shard is one Dask task.

Why the pool forks (where the platform can), although a Prefect flow has ~6 threads alive. A
forked child gets a copy of every lock as it was; one held by another thread stays held, so the
child must not touch what those threads use (the forking thread holds the pool's lock: the child
never takes it). The workers only run the spaCy tokenizer (built before the fork, by the forking
thread), numpy and pyarrow (which re-creates its thread pools
after a fork), and they never log: ``_worker_init`` turns logging off, so Prefect's API log
handler and its worker thread, absent in the child, are never reached. ``forkserver`` (workers
forked from a clean server process that preloads this module) was tried and measured with
``tests/bench/bench_data.py`` on the 2-core machine: it must import spaCy and Prefect once more
(~4-5 s of a ~15 s stage) before any worker starts. Tokenize speed-up over the single-process
loop: fork 1.76x and 1.80x; forkserver with one pool per call 1.18x, with one pool reused for the
process 1.35x; the aim is >= 1.7x. Python 3.12+ warns (DeprecationWarning) when forking a
multi-threaded process; on platforms without fork the pool uses spawn.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.core.text import (  # noqa: F401
    MAX_REVIEW_CHARS,
    TokenizeParams,
    _tokenizer,
    kept_texts,
    spacy_version,
    tokenize_text,
    tokenize_texts,
)
from sentiflow.tasks.data.shards import Shard, plan_gather, run_gather, shards_of

STAGE = "tokenize"  # a part's shards gathered (sentiflow.tasks.data.shards)
SHARD_STAGE = "tokenize-shard"  # one shard
log = logging.getLogger("sentiflow.tokenize")
SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int8()), ("tokens", pa.list_(pa.string()))])
TOKENS, COUNTS = "tokens.parquet", "counts.parquet"
# a gathered part: the shards' tokens as part-NNNNN.parquet (vocab reads the counts from the shards)
GATHERED = {TOKENS: "part"}


def tokenize_shard(in_file: Path, out_dir: Path, params: TokenizeParams) -> int:
    """One shard of reviews → ``tokens.parquet`` (id, label, tokens) and ``counts.parquet``
    (token, count: what vocab merges). Returns its token count."""
    table = pq.read_table(in_file, columns=["id", "text", "label"])
    tokens = tokenize_texts(kept_texts(table.column("text"), MAX_REVIEW_CHARS), params)
    out = pa.Table.from_arrays([table.column("id"), table.column("label"),
                                tokens.cast(SCHEMA.field("tokens").type)], schema=SCHEMA)
    pq.write_table(out.combine_chunks(), out_dir / TOKENS, compression="zstd")
    pq.write_table(count_tokens(tokens), out_dir / COUNTS, compression="zstd")
    return len(tokens.values)


def count_tokens(tokens: pa.ListArray | pa.LargeListArray) -> pa.Table:
    """Each distinct token and how often it occurs, by token."""
    vc = pc.value_counts(pc.list_flatten(tokens))
    counts = pa.table({"token": vc.field("values").cast(pa.string()), "count": vc.field("counts")})
    return counts.sort_by("token")


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """End this worker process when the process that started it is gone, however it died
    (SIGKILL included). A worker's task pipe does not tell: its siblings hold copies of both
    ends. A daemon thread watches the parent's pid instead."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init() -> None:
    """Workers never log: the handlers they inherit (Prefect's API handler among them) belong to
    threads of the parent that do not exist here. They end with their parent."""
    logging.disable(logging.CRITICAL)
    exit_with_parent()


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers inherit the imported spaCy and its tokenizer (importing spaCy alone takes
    # ~3.5 s) - see the module docstring. Elsewhere (macOS, Windows) spawn.
    _tokenizer()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_worker_init)


_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0  # within worker_pool: the size of the pool started at the first shard to tokenize
_POOL_LOCK = threading.Lock()


@contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Within: shards are tokenized by a pool of ``workers`` processes, whichever thread runs a
    shard's task. The pool (and spaCy, which its processes inherit) starts at the first shard that
    needs tokenizing, so a run whose shards are all stored imports neither. ``workers <= 1``, or
    outside (a Dask worker): in the task's own process."""
    global _POOL, _POOL_WORKERS
    if workers <= 1 or _POOL_WORKERS:
        yield
        return
    _POOL_WORKERS = workers
    try:
        yield
    finally:
        with _POOL_LOCK:
            pool, _POOL, _POOL_WORKERS = _POOL, None, 0
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _started_pool() -> ProcessPoolExecutor | None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None and _POOL_WORKERS:
            pool = _pool(_POOL_WORKERS)
            pool.submit(int).result()  # a forking pool starts all its processes at the first task
            _POOL = pool
        return _POOL


def _tokenize(in_file: Path, out_dir: Path, params: TokenizeParams) -> int:
    pool = _started_pool()
    if pool is None:
        return tokenize_shard(in_file, out_dir, params)
    return pool.submit(tokenize_shard, in_file, out_dir, params).result()


# -- stages and tasks ----------------------------------------------------------------------------

def _code() -> str:
    return stage.code_version([__name__, stage.TEXT_CODE], f"spacy=={spacy_version()}")


def shard_spec(params: TokenizeParams, shard: Shard) -> stage.StageSpec:
    return stage.StageSpec(SHARD_STAGE, params, (shard.token,), _code())


def plan_shard(root: Path | str, params: TokenizeParams, shard: Shard) -> StageRef:
    return shard_spec(params, shard).ref(root)


def run_shard(params: TokenizeParams, shard: Shard, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(root, shard_spec(params, shard),
                           lambda out: _tokenize(shard.path, out, params), force)


def plan(root: Path | str, params: TokenizeParams, source: StageRef, part: str) -> StageRef:
    """The gathered tokens of ``part``'s shards in ``source`` (an ingest or split folder)."""
    return plan_gather(root, STAGE, [plan_shard(root, params, s) for s in shards_of(source, part)],
                       stage.input_token(source, part))


def run(params: TokenizeParams, source: StageRef, part: str, root: Path | str, workers: int = 1,
        force: bool = False) -> StageRef:
    """Every shard of ``part`` tokenized (reused where valid; by ``workers`` processes), then the
    part gathered: the plain path, no Prefect."""
    shards = shards_of(source, part)
    with worker_pool(min(workers, len(shards))):
        if not _POOL_WORKERS:
            done = [run_shard(params, s, root, force) for s in shards]
        else:  # the pool's processes run the shards; these threads only wait for them
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as threads:
                done = list(threads.map(lambda s: run_shard(params, s, root, force), shards))
    return run_gather(STAGE, done, GATHERED, root, stage.input_token(source, part), force)


@stage.stage_task("tokenize", lambda p: plan_shard(p["root"], p["params"], p["shard"]), per_shard=True)
def tokenize_task(params: TokenizeParams, shard: Shard, part: str, index: int, root: str,
                  force: bool = False) -> StageRef:
    return run_shard(params, shard, root, force)
