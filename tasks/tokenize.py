"""Stage 3, tokenize: one split's reviews → Parquet shards of ``id``, ``label``,
``tokens: list<string>``, with spaCy's English tokenizer (``spacy.blank("en")``, the same rules
as ``en_core_web_sm``), lower-cased.

The tokenizer itself (settings, ``<br />`` handling, ``tokenize_texts``) lives in
``sentiflow.tasks.text``, which the served model carries too.

Shards are tokenized in parallel by a process pool; each worker gets its shard's reviews,
tokenizes with ``Doc.to_array`` (no Python ``Token`` objects), writes its shard and returns only
a count.

Why the pool forks (where the platform can), although a Prefect flow has ~6 threads alive. A
forked child gets a copy of every lock as it was; one held by another thread stays held, so the
child must not touch what those threads use. The workers only run the spaCy tokenizer (built
before the fork, by the forking thread), numpy and pyarrow (which re-creates its thread pools
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import spacy

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.progress import progress
from sentiflow.tasks.text import TokenizeParams, _tokenizer, tokenize_text, tokenize_texts  # noqa: F401

STAGE = "tokenize"
log = logging.getLogger("sentiflow.tokenize")
SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int8()), ("tokens", pa.list_(pa.string()))])


def _tokenize_shard(ids: list[str], texts: list[str], labels: list[int], out_file: str,
                    params: TokenizeParams) -> int:
    """Worker: one shard's reviews → one Parquet file. Returns its token count."""
    tokens = tokenize_texts(texts, params)
    out = pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(labels, pa.int8()), tokens], schema=SCHEMA)
    pq.write_table(out, out_file, compression="zstd")
    return len(tokens.values)


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


def tokenize_file(in_file: Path, out_dir: Path, params: TokenizeParams, workers: int = 1) -> int:
    """Tokenize a Parquet file of reviews into ``part-NNNNN.parquet`` shards in ``out_dir``."""
    table = pq.read_table(in_file, columns=["id", "text", "label"])
    n = table.num_rows
    columns = {c: table.column(c).to_pylist() for c in ("id", "text", "label")}
    bounds = [(s, min(s + params.shard_rows, n)) for s in range(0, n, params.shard_rows)] or [(0, 0)]
    jobs = [(columns["id"][a:b], columns["text"][a:b], columns["label"][a:b],
             str(out_dir / f"part-{i:05d}.parquet"), params) for i, (a, b) in enumerate(bounds)]
    total = 0
    with progress(log, f"tokenize {in_file.name}", n, "reviews") as bar:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                total += _tokenize_shard(*job)
                bar.advance(len(job[0]))
        else:
            with _pool(min(workers, len(jobs))) as pool:
                for job, count in zip(jobs, pool.map(_tokenize_shard, *zip(*jobs))):
                    total += count
                    bar.advance(len(job[0]))
    return total


# -- stage and task ------------------------------------------------------------------------------

def spec(params: TokenizeParams, source: StageRef, part: str) -> stage.StageSpec:
    return stage.StageSpec(STAGE, params, (stage.input_token(source, part),),
                           stage.code_version([__name__, "sentiflow.tasks.text"], f"spacy=={spacy.__version__}"))


def plan(root: Path | str, params: TokenizeParams, source: StageRef, part: str) -> StageRef:
    return spec(params, source, part).ref(root)


def run(params: TokenizeParams, source: StageRef, part: str, root: Path | str,
        workers: int = 1, force: bool = False) -> StageRef:
    return stage.run_stage(
        root, spec(params, source, part),
        lambda out: tokenize_file(source.file(f"{part}.parquet"), out, params, workers), force,
    )


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["params"], p["source"], p["part"])


@stage.stage_task("tokenize", _planner, task_run_name="tokenize-{part}")
def tokenize_task(params: TokenizeParams, source: StageRef, part: str, root: str,
                  workers: int = 1, force: bool = False) -> StageRef:
    return run(params, source, part, root, workers, force)
