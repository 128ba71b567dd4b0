"""Stage 4, vocab: proper-train tokens → ``vocab.parquet`` (``token``, ``id``, ``count``).

Each tokenize shard stored its token counts; vocab merges them (``merge_counts``), so it reads
the distinct tokens of each shard, never every token list.

Specials first (``<unk>`` = 0, ``<pad>`` = 1), then tokens by descending count, ties by token.
``min_freq`` drops rare tokens; ``max_size`` caps the number of non-special tokens.
The ``Vocab`` itself (token ↔ id) lives in ``sentiflow.tasks.core.text``, which the served model
carries too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from sentiflow.storage.store import StageError, StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.core.text import PAD, SPECIALS, UNK, Vocab  # noqa: F401
from sentiflow.tasks.data.shards import gathered
from sentiflow.tasks.data.tokenize import COUNTS, count_tokens

STAGE = "vocab"


class VocabParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_freq: int = Field(1, ge=1, description="Keep tokens seen at least this often")
    max_size: int | None = Field(25_000, ge=1, description="At most this many tokens besides specials")


def merge_counts(counts: Iterable[pa.Table], every: int = 32) -> pa.Table:
    """Per-shard token counts summed into one table (token, count), merged every ``every`` shards
    so that memory holds the distinct tokens, not every shard's list of them."""
    merged: list[pa.Table] = []

    def fold(tables: list[pa.Table]) -> pa.Table:
        t = pa.concat_tables(tables).group_by("token").aggregate([("count", "sum")])
        return t.rename_columns(["token", "count"]).select(["token", "count"])

    for table in counts:
        merged.append(table.select(["token", "count"]))
        if len(merged) >= every:
            merged = [fold(merged)]
    empty = pa.table({"token": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    return fold(merged) if merged else empty


def vocab_from_counts(counts: pa.Table, params: VocabParams) -> Vocab:
    """Keep ``min_freq``+, order by count desc then token, cap at ``max_size``; specials first."""
    counts = counts.filter(pc.and_(pc.greater_equal(counts["count"], params.min_freq),
                                   pc.invert(pc.is_in(counts["token"], pa.array(SPECIALS)))))
    counts = counts.sort_by([("count", "descending"), ("token", "ascending")])
    if params.max_size is not None:
        counts = counts.slice(0, params.max_size)
    return Vocab([*SPECIALS, *counts["token"].to_pylist()], [0, 0, *counts["count"].to_pylist()])


def build_vocab(token_lists: Iterable[pa.ChunkedArray | pa.ListArray], params: VocabParams) -> Vocab:
    """The vocabulary of lists of token lists (counted here; the stage merges stored counts)."""
    def counted() -> Iterator[pa.Table]:
        for tokens in token_lists:
            chunks = tokens.chunks if isinstance(tokens, pa.ChunkedArray) else [tokens]
            for chunk in chunks:
                yield count_tokens(chunk)
    return vocab_from_counts(merge_counts(counted()), params)


def vocab_from_shards(tokens: StageRef, params: VocabParams) -> Vocab:
    """The vocabulary of a gathered tokenize part, from its shards' stored counts."""
    def counts() -> Iterator[pa.Table]:
        for shard in gathered(tokens):
            try:
                yield pq.read_table(shard.file(COUNTS))
            except (OSError, pa.ArrowInvalid) as e:
                raise StageError(f"tokenize {tokens.key}: the counts of its shard {shard.key} cannot be "
                                 f"read ({e}); run prepare again to rebuild it") from e
    return vocab_from_counts(merge_counts(counts()), params)


# -- stage and task ------------------------------------------------------------------------------

def spec(params: VocabParams, tokens: StageRef) -> stage.StageSpec:
    return stage.StageSpec(STAGE, params, (stage.input_token(tokens),),
                           stage.code_version([__name__, stage.TEXT_CODE]))


def plan(root: Path | str, params: VocabParams, tokens: StageRef) -> StageRef:
    return spec(params, tokens).ref(root)


def run(params: VocabParams, tokens: StageRef, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(
        root, spec(params, tokens),
        lambda out: vocab_from_shards(tokens, params).write(out / "vocab.parquet"), force,
    )


@stage.stage_task("vocab", lambda p: plan(p["root"], p["params"], p["tokens"]))
def vocab_task(params: VocabParams, tokens: StageRef, root: str, force: bool = False) -> StageRef:
    return run(params, tokens, root, force)
