"""Stage 3, tokenize: one split's reviews → Parquet shards of ``id``, ``label``,
``tokens: list<string>``, with spaCy's English tokenizer (``spacy.blank("en")``, the same rules
as ``en_core_web_sm``), lower-cased.

``<br />`` tags. IMDb reviews mark paragraphs with ``<br /><br />``. Left in, spaCy splits each
into ``<``, ``br`` and ``/><br`` pieces that teach the model nothing about sentiment and make
"br" one of the most frequent words. By default (``html_breaks="space"``) every ``<br>``,
``<br/>`` or ``<br />`` tag is replaced by a space before tokenizing; ``"keep"`` leaves the text
as it is, as the seed did. Whitespace-only tokens (from double spaces or newlines) are dropped.

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
import re
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import spacy
from prefect import task
from pydantic import BaseModel, Field
from spacy.attrs import IS_SPACE, LOWER, ORTH

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.progress import progress

STAGE = "tokenize"
log = logging.getLogger("sentiflow.tokenize")
BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int8()), ("tokens", pa.list_(pa.string()))])


class TokenizeParams(BaseModel):
    lowercase: bool = Field(True, description="Lower-case every token (the seed's setting)")
    html_breaks: Literal["space", "keep"] = Field(
        "space", description="'space': replace <br /> tags by a space; 'keep': tokenize them"
    )
    shard_rows: int = Field(2500, ge=1, description="Reviews per output shard")


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    return spacy.blank("en").tokenizer


def clean(text: str, params: TokenizeParams) -> str:
    return BR_TAG.sub(" ", text) if params.html_breaks == "space" else text


def tokenize_text(text: str, params: TokenizeParams = TokenizeParams()) -> list[str]:
    """The reference: one review, the plain spaCy loop. ``tokenize_texts`` gives the same."""
    doc = _tokenizer()(clean(text, params))
    return [t.lower_ if params.lowercase else t.text for t in doc if not t.is_space]


def tokenize_texts(texts: list[str], params: TokenizeParams = TokenizeParams()) -> pa.ListArray:
    """Many reviews → ``list<string>``, through token hashes (``Doc.to_array``): each distinct
    string is looked up once per batch instead of once per token."""
    tok = _tokenizer()
    attr = LOWER if params.lowercase else ORTH
    hashes, offsets = [], [0]
    for text in texts:
        arr = tok(clean(text, params)).to_array([attr, IS_SPACE])
        keep = arr[arr[:, 1] == 0, 0]
        hashes.append(keep)
        offsets.append(offsets[-1] + len(keep))
    flat = np.concatenate(hashes) if hashes else np.array([], dtype=np.uint64)
    uniq, inverse = np.unique(flat, return_inverse=True)
    strings = tok.vocab.strings
    values = pa.array([strings[int(h)] for h in uniq], type=pa.string()).take(pa.array(inverse))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _tokenize_shard(ids: list[str], texts: list[str], labels: list[int], out_file: str,
                    params: TokenizeParams) -> int:
    """Worker: one shard's reviews → one Parquet file. Returns its token count."""
    tokens = tokenize_texts(texts, params)
    out = pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(labels, pa.int8()), tokens], schema=SCHEMA)
    pq.write_table(out, out_file, compression="zstd")
    return len(tokens.values)


def _worker_init() -> None:
    """Workers never log: the handlers they inherit (Prefect's API handler among them) belong to
    threads of the parent that do not exist here."""
    logging.disable(logging.CRITICAL)


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
                           stage.code_version(__name__, f"spacy=={spacy.__version__}"))


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


@task(name="tokenize", task_run_name="tokenize-{part}", cache_key_fn=stage.cache_key_fn(_planner))
def tokenize_task(params: TokenizeParams, source: StageRef, part: str, root: str,
                  workers: int = 1, force: bool = False) -> StageRef:
    return run(params, source, part, root, workers, force)
