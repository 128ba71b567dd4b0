"""Stage 5, encode: each tokenize shard + the vocab → ``id``, ``label``, ``ids: list<int32>``,
``length: int32``. A shard is a stage of its own (``encode-shard``, keyed by its tokenize shard and
the vocab); a part's shards are then gathered (``encode``: ``part-NNNNN.parquet``, what training,
the gate and scoring read)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.core.text import Vocab
from sentiflow.tasks.data.shards import gathered, plan_gather, run_gather
from sentiflow.tasks.data.tokenize import TOKENS

STAGE = "encode"  # a part's shards gathered (sentiflow.tasks.data.shards)
SHARD_STAGE = "encode-shard"  # one shard
GATHERED = {"encoded.parquet": "part"}
log = logging.getLogger("sentiflow.encode")
SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int8()),
                    ("ids", pa.list_(pa.int32())), ("length", pa.int32())])


def encode_table(tokens: pa.Table, vocab: Vocab) -> pa.Table:
    ids = vocab.encode(tokens.column("tokens"))
    length = pc.list_value_length(ids).cast(pa.int32())
    return pa.Table.from_arrays([tokens.column("id"), tokens.column("label"), ids, length], schema=SCHEMA)


ENCODED = "encoded.parquet"


def encode_shard(tokens_file: Path, vocab: Vocab, out_dir: Path) -> int:
    """One tokenize shard → ``encoded.parquet``; returns its token count."""
    out = encode_table(pq.read_table(tokens_file), vocab)
    pq.write_table(out.combine_chunks(), out_dir / ENCODED, compression="zstd")
    return len(out.column("ids").combine_chunks().values)


@lru_cache(maxsize=4)
def _vocab(path: Path, sha256: str) -> Vocab:
    """A vocabulary read once per process for the many shards encoded with it (by file and hash)."""
    return Vocab.read(path)


def vocab_of(ref: StageRef) -> Vocab:
    return _vocab(ref.file("vocab.parquet"), ref.manifest()["files"]["vocab.parquet"]["sha256"])


# -- stages and tasks ----------------------------------------------------------------------------

def _code() -> str:
    return stage.code_version([__name__, stage.TEXT_CODE])


def shard_spec(tokens: StageRef, vocab: StageRef) -> stage.StageSpec:
    return stage.StageSpec(SHARD_STAGE, None, (stage.input_token(tokens), stage.input_token(vocab)), _code())


def plan_shard(root: Path | str, tokens: StageRef, vocab: StageRef) -> StageRef:
    return shard_spec(tokens, vocab).ref(root)


def run_shard(tokens: StageRef, vocab: StageRef, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(root, shard_spec(tokens, vocab),
                           lambda out: encode_shard(tokens.file(TOKENS), vocab_of(vocab), out), force)


def plan(root: Path | str, tokens: StageRef, vocab: StageRef) -> StageRef:
    """A gathered tokenize part's shards encoded with ``vocab``, gathered."""
    return plan_gather(root, STAGE, [plan_shard(root, t, vocab) for t in gathered(tokens)],
                       stage.input_token(tokens))


def run(tokens: StageRef, vocab: StageRef, root: Path | str, force: bool = False) -> StageRef:
    """Every shard of a gathered tokenize part encoded (reused where valid), then gathered: the
    plain path, no Prefect."""
    done = [run_shard(t, vocab, root, force) for t in gathered(tokens)]
    return run_gather(STAGE, done, GATHERED, root, stage.input_token(tokens), force)


@stage.stage_task("encode", lambda p: plan_shard(p["root"], p["tokens"], p["vocab"]), per_shard=True)
def encode_task(tokens: StageRef, vocab: StageRef, part: str, index: int, root: str,
                force: bool = False) -> StageRef:
    return run_shard(tokens, vocab, root, force)
