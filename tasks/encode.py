"""Stage 5, encode: token shards + vocab → shards of ``id``, ``label``, ``ids: list<int32>``,
``length: int32`` (one output shard per input shard)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.progress import progress
from sentiflow.tasks.text import Vocab

STAGE = "encode"
log = logging.getLogger("sentiflow.encode")
SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int8()),
                    ("ids", pa.list_(pa.int32())), ("length", pa.int32())])


def encode_table(tokens: pa.Table, vocab: Vocab) -> pa.Table:
    ids = vocab.encode(tokens.column("tokens"))
    length = pc.list_value_length(ids).cast(pa.int32())
    return pa.Table.from_arrays([tokens.column("id"), tokens.column("label"), ids, length], schema=SCHEMA)


def encode_shards(shards: list[Path], vocab: Vocab, out_dir: Path) -> int:
    total = 0
    with progress(log, "encode", len(shards), "shards") as bar:
        for shard in shards:
            out = encode_table(pq.read_table(shard), vocab)
            pq.write_table(out, out_dir / shard.name, compression="zstd")
            total += len(out.column("ids").combine_chunks().values)
            bar.advance()
    return total


# -- stage and task ------------------------------------------------------------------------------

def spec(tokens: StageRef, vocab: StageRef) -> stage.StageSpec:
    return stage.StageSpec(STAGE, None, (stage.input_token(tokens), stage.input_token(vocab)),
                           stage.code_version([__name__, "sentiflow.tasks.text"]))


def plan(root: Path | str, tokens: StageRef, vocab: StageRef) -> StageRef:
    return spec(tokens, vocab).ref(root)


def run(tokens: StageRef, vocab: StageRef, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(
        root, spec(tokens, vocab),
        lambda out: encode_shards(tokens.shards(), Vocab.read(vocab.file("vocab.parquet")), out), force,
    )


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["tokens"], p["vocab"])


@stage.stage_task("encode", _planner, task_run_name="encode-{part}")
def encode_task(tokens: StageRef, vocab: StageRef, part: str, root: str, force: bool = False) -> StageRef:
    return run(tokens, vocab, root, force)
