"""Shards: the unit of caching, parallel work and reuse.

A part of the data (train, val or test) is a list of shards. Ingest and split write a part's
shards into their own folder; from there each shard goes through tokenize and encode on its own,
as a stage of its own (``tokenize-shard/<key>/``, ``encode-shard/<key>/``), keyed by its content:
the SHA-256 of the input file (``Shard.token``), never its place. A shard whose reviews did not
change is therefore reused whichever source, run or position it came from, and each is one task
(a process of the local pool, or a Dask task).

``gather`` then collects a part's shard outputs into one folder (``tokenize/<key>/``,
``encode/<key>/``) of ``part-NNNNN.parquet`` files, hard links to the shards' files (copies where
the filesystem has none), keyed by the shards' keys in order: what training, scoring and the gate
read, as before shards were stages of their own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel

from sentiflow.storage.store import StageRef
from sentiflow.tasks import stage

GATHER_CODE = "1"


class Shard(BaseModel):
    """One input shard: the folder that holds it, its file, and its size and SHA-256 as that
    folder's manifest records them."""

    source: StageRef
    name: str
    sha256: str
    rows: int

    @property
    def path(self) -> Path:
        return self.source.file(self.name)

    @property
    def token(self) -> str:
        """How the shard enters a key: its content, not its place."""
        return f"sha256:{self.sha256}"


def shards_of(ref: StageRef, part: str) -> list[Shard]:
    """``part``'s shards (``<part>-NNNNN.parquet``) in a stage folder, in order, from its manifest."""
    manifest = ref.manifest()
    names = sorted(n for n in manifest["files"] if n.startswith(f"{part}-") and n.endswith(".parquet")
                   and n[len(part) + 1:-len(".parquet")].isdigit())
    return [Shard(source=ref, name=n, sha256=manifest["files"][n]["sha256"], rows=manifest["rows"][n])
            for n in names]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (another filesystem, or one without them): a copy
        shutil.copyfile(src, dst)


def gather(shards: list[StageRef], files: dict[str, str], out_dir: Path) -> None:
    """Shard ``i``'s file ``name`` → ``<prefix>-<i>.parquet`` in ``out_dir``, for each
    ``name → prefix`` of ``files``."""
    for i, ref in enumerate(shards):
        for name, prefix in files.items():
            _link(ref.file(name), out_dir / f"{prefix}-{i:05d}.parquet")


def gathered(ref: StageRef) -> list[StageRef]:
    """The shard folders a gathered part was made of, in order (its manifest's inputs)."""
    store_root = ref.path.parent.parent
    out = []
    for token in ref.manifest()["inputs"]:
        stage_name, key, _ = stage.read_input_token(token)
        if stage_name.endswith("-shard"):
            out.append(StageRef(stage=stage_name, key=key, path=store_root / stage_name / key))
    return out


def gather_spec(stage_name: str, shards: list[StageRef], origin: str) -> stage.StageSpec:
    """The key of a gathered part: its shards in order, and ``origin``, the input its shards were
    made from (``stage.input_token``: the ingest or split part for tokenize, the tokenize part for
    encode), so that its manifest leads back to the reviews (the gate reads their text)."""
    return stage.StageSpec(stage_name, None, (origin, *(stage.input_token(r) for r in shards)),
                           stage.code_version(__name__, GATHER_CODE))


def plan_gather(root: Path | str, stage_name: str, shards: list[StageRef], origin: str) -> StageRef:
    return gather_spec(stage_name, shards, origin).ref(root)


def run_gather(stage_name: str, shards: list[StageRef], files: dict[str, str], root: Path | str,
               origin: str, force: bool = False) -> StageRef:
    return stage.run_stage(root, gather_spec(stage_name, shards, origin),
                           lambda out: gather(shards, files, out), force)


@stage.stage_task("gather", lambda p: plan_gather(p["root"], p["stage_name"], p["shards"],
                                                  stage.input_token(p["source"], p["source_part"])),
                  task_run_name="{stage_name}-{part}")
def gather_task(stage_name: str, part: str, shards: list[StageRef], files: dict[str, str], source: StageRef,
                source_part: str, root: str, force: bool = False) -> StageRef:
    """``part``'s shards gathered; ``source`` (and ``source_part`` of it) is what they were made from."""
    return run_gather(stage_name, shards, files, root, stage.input_token(source, source_part), force)
