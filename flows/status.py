"""``sentiflow status``: which data stages are stored for the current source and settings, without
running anything (like ``dvc status``). No Prefect server, no spaCy, no torch, no MLflow.

Each stage's key is planned from its inputs, as the flow plans it; a stage whose input is not
stored cannot be planned further and is reported as waiting for it. A stored folder is checked
by its manifest (its key, and every file present with the recorded size), not by checksum: this
is a quick look; ``prepare`` checksums every file before it trusts one.

``stored_result`` is ``prepare``'s no-op path: when every stage of the plan is stored and every
file passes its checksum, it returns what the data flow would (all Cached) without starting
Prefect's server or running a flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sentiflow.flows.data_flow import PARTS, SHARDS_FROM, DataConfig, PreparedData
from sentiflow.storage.store import StageRef, Store, file_sha256
from sentiflow.tasks.data import encode, ingest, split, tokenize, vocab
from sentiflow.tasks.data.reviews import fingerprint
from sentiflow.tasks.data.shards import plan_gather, shards_of
from sentiflow.tasks.stage import input_token


@dataclass
class StageStatus:
    task: str  # as the data flow names its task runs: ingest, tokenize-train, ...
    state: str  # "cached", "missing", "damaged: <why>", or "waits for <task>"
    key: str = ""
    shards: str = ""  # per-shard stages: "<stored>/<all> shards stored"


def _state(store: Store, ref: StageRef) -> str:
    problem = store.problem(ref, checksums=False)
    return "cached" if problem is None else ("missing" if problem == "missing" else f"damaged: {problem}")


def data_status(config: DataConfig, root: Path | str) -> list[StageStatus]:
    """The data stages of ``config`` (its source resolved) in ``root``, in stage order."""
    return _plan(config, root)[0]


@dataclass
class _Planned:
    refs: dict[str, StageRef]  # task run name → its (gathered) stage folder
    shards: dict[str, list[StageRef]]  # per-part run name → its shard folders


def stored_result(config: DataConfig, root: Path | str) -> PreparedData | None:
    """The data flow's result when every stage is stored and intact (checksums included), else
    None (something is to be run)."""
    rows, planned = _plan(config, root)
    if any(r.state != "cached" for r in rows):
        return None
    store, digest = Store(root), _digest_once()
    every = [*planned.refs.values(), *(r for refs in planned.shards.values() for r in refs)]
    if any(store.problem(ref, digest=digest) is not None for ref in every):
        return None  # a damaged file: the flow rebuilds it
    return PreparedData.from_refs(planned.refs, {name: "Cached" for name in planned.refs},
                                  {name: {"Cached": len(refs)} for name, refs in planned.shards.items()})


def _digest_once() -> Callable[[Path], str]:
    """``file_sha256`` that reads each file once: a gathered folder's files are hard links to its
    shards' (the same inode), so checking both would hash every byte twice."""
    seen: dict[tuple[int, int, int, int], str] = {}

    def digest(path: Path) -> str:
        st = path.stat()
        inode = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if inode not in seen:
            seen[inode] = file_sha256(path)
        return seen[inode]

    return digest


def _plan(config: DataConfig, root: Path | str) -> tuple[list[StageStatus], _Planned]:
    store = Store(root)
    out: list[StageStatus] = []
    planned = _Planned({}, {})

    def add(task: str, ref: StageRef | None, waits_for: str = "", shards: str = "") -> bool:
        if ref is None:
            out.append(StageStatus(task, f"waits for {waits_for}"))
            return False
        state = _state(store, ref)
        out.append(StageStatus(task, state, ref.key, shards))
        planned.refs[task] = ref
        return state == "cached"

    ingested = ingest.plan(root, fingerprint(config.source), config.ingest)
    have = {"ingest": add("ingest", ingested)}
    split_ref = split.plan(root, config.split, ingested) if have["ingest"] else None
    have["split"] = add("split", split_ref, "ingest")
    sources = {"ingest": ingested, "split": split_ref}
    tokens: dict[str, list[StageRef] | None] = {}
    gathered: dict[str, StageRef | None] = {}
    for part in PARTS:
        source = sources[SHARDS_FROM[part]]
        if not have[SHARDS_FROM[part]]:
            tokens[part] = gathered[part] = None
            add(f"tokenize-{part}", None, SHARDS_FROM[part])
            continue
        tokens[part] = [tokenize.plan_shard(root, config.tokenize, s) for s in shards_of(source, part)]
        planned.shards[f"tokenize-{part}"] = tokens[part]
        gathered[part] = plan_gather(root, tokenize.STAGE, tokens[part], input_token(source, part))
        have[f"tokenize-{part}"] = add(f"tokenize-{part}", gathered[part], shards=_shards(store, tokens[part]))
    vocab_ref = (vocab.plan(root, config.vocab, gathered["train"])
                 if have.get("tokenize-train") else None)
    have["vocab"] = add("vocab", vocab_ref, "tokenize-train")
    for part in PARTS:
        if not (have["vocab"] and tokens[part] is not None):
            add(f"encode-{part}", None, "vocab" if not have["vocab"] else f"tokenize-{part}")
            continue
        shards = [encode.plan_shard(root, t, vocab_ref) for t in tokens[part]]
        planned.shards[f"encode-{part}"] = shards
        add(f"encode-{part}", plan_gather(root, encode.STAGE, shards, input_token(gathered[part])),
            shards=_shards(store, shards))
    return out, planned


def _shards(store: Store, refs: list[StageRef]) -> str:
    stored = sum(store.problem(r, checksums=False) is None for r in refs)
    return f"{stored}/{len(refs)} shards stored"
