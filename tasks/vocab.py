"""Stage 4, vocab: proper-train tokens → ``vocab.parquet`` (``token``, ``id``, ``count``).

Specials first (``<unk>`` = 0, ``<pad>`` = 1), then tokens by descending count, ties by token.
``min_freq`` drops rare tokens; ``max_size`` caps the number of non-special tokens.
The ``Vocab`` itself (token ↔ id) lives in ``sentiflow.tasks.text``, which the served model
carries too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage
from sentiflow.tasks.text import PAD, SPECIALS, UNK, Vocab  # noqa: F401

STAGE = "vocab"


class VocabParams(BaseModel):
    min_freq: int = Field(1, ge=1, description="Keep tokens seen at least this often")
    max_size: int | None = Field(25_000, ge=1, description="At most this many tokens besides specials")


def build_vocab(token_lists: Iterable[pa.ChunkedArray | pa.ListArray], params: VocabParams) -> Vocab:
    """Count tokens (in Arrow), keep ``min_freq``+, order by count desc then token, cap."""
    flat = [pc.list_flatten(c) for c in token_lists]
    chunks = [chunk for f in flat for chunk in (f.chunks if isinstance(f, pa.ChunkedArray) else [f])]
    vc = pc.value_counts(pa.chunked_array(chunks, type=pa.string()))
    counts = pa.table({"token": vc.field("values"), "count": vc.field("counts")})
    counts = counts.filter(pc.and_(pc.greater_equal(counts["count"], params.min_freq),
                                   pc.invert(pc.is_in(counts["token"], pa.array(SPECIALS)))))
    counts = counts.sort_by([("count", "descending"), ("token", "ascending")])
    if params.max_size is not None:
        counts = counts.slice(0, params.max_size)
    return Vocab([*SPECIALS, *counts["token"].to_pylist()], [0, 0, *counts["count"].to_pylist()])


def vocab_from_shards(shards: list[Path], params: VocabParams) -> Vocab:
    return build_vocab((pq.read_table(s, columns=["tokens"]).column("tokens") for s in shards), params)


# -- stage and task ------------------------------------------------------------------------------

def spec(params: VocabParams, tokens: StageRef) -> stage.StageSpec:
    return stage.StageSpec(STAGE, params, (stage.input_token(tokens),), stage.code_version([__name__, "sentiflow.tasks.text"]))


def plan(root: Path | str, params: VocabParams, tokens: StageRef) -> StageRef:
    return spec(params, tokens).ref(root)


def run(params: VocabParams, tokens: StageRef, root: Path | str, force: bool = False) -> StageRef:
    return stage.run_stage(
        root, spec(params, tokens),
        lambda out: vocab_from_shards(tokens.shards(), params).write(out / "vocab.parquet"), force,
    )


def _planner(p: dict[str, Any]) -> StageRef:
    return plan(p["root"], p["params"], p["tokens"])


@stage.stage_task("vocab", _planner)
def vocab_task(params: VocabParams, tokens: StageRef, root: str, force: bool = False) -> StageRef:
    return run(params, tokens, root, force)
