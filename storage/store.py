"""The stage store: content-addressed folders ``<root>/<stage>/<key>/`` with a manifest.

A folder is built under a temporary name, ``manifest.json`` is written last, and the folder is
renamed into place. A folder is trusted only when its manifest names its key and every file's
size and SHA-256 match; anything else is treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

MANIFEST = "manifest.json"


class StageRef(BaseModel):
    """What tasks pass each other: a stage's name, key and folder. Never the data itself."""

    stage: str
    key: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def shards(self, prefix: str = "part-") -> list[Path]:
        return sorted(self.path.glob(f"{prefix}*.parquet"))

    def read_shards(self, columns: list[str] | None = None) -> pa.Table:
        """All ``part-*.parquet`` shards, in order, as one table."""
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in self.shards())

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def stage_key(stage: str, params: dict[str, Any], inputs: list[str], code: str) -> str:
    """The stage key: a hash of the stage name, its parameters, its input keys and its code."""
    return stable_hash({"stage": stage, "params": params, "inputs": inputs, "code": code})[:20]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def ref(self, stage: str, key: str) -> StageRef:
        return StageRef(stage=stage, key=key, path=(self.root / stage / key).resolve())

    # -- validity -------------------------------------------------------------------------------
    def is_valid(self, ref: StageRef) -> bool:
        return self.problem(ref) is None

    def problem(self, ref: StageRef) -> str | None:
        """Why the folder cannot be trusted, or None when it can."""
        manifest_path = ref.path / MANIFEST
        if not manifest_path.is_file():
            return "missing" if not ref.path.exists() else "no manifest"
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (ValueError, KeyError):
            return "unreadable manifest"
        if manifest.get("key") != ref.key:
            return "manifest names another key"
        present = {p.name for p in ref.path.iterdir() if p.name != MANIFEST}
        if present != set(files):
            return "files differ from manifest"
        for name, meta in files.items():
            p = ref.path / name
            if p.stat().st_size != meta["bytes"] or file_sha256(p) != meta["sha256"]:
                return f"checksum mismatch in {name}"
        return None

    # -- writing --------------------------------------------------------------------------------
    @contextmanager
    def build(
        self, ref: StageRef, params: dict[str, Any], inputs: list[str]
    ) -> Iterator[Path]:
        """Yield a temporary folder; on success write the manifest and rename it into place.

        On any error the temporary folder is removed and an existing folder is left as it was.
        """
        parent = ref.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-{ref.key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.perf_counter()
        try:
            yield tmp
            files = {}
            rows = {}
            for p in sorted(tmp.iterdir()):
                files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                if p.suffix == ".parquet":
                    rows[p.name] = pq.ParquetFile(p).metadata.num_rows
            manifest = {
                "stage": ref.stage,
                "key": ref.key,
                "params": params,
                "inputs": inputs,
                "rows": rows,
                "total_rows": sum(rows.values()),
                "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 3),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            self._replace(tmp, ref.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _replace(tmp: Path, target: Path) -> None:
        if target.exists():  # an invalid folder: move it aside, then drop it
            trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, target)

    # -- listing --------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        out = []
        if not self.root.is_dir():
            return out
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest_path.parent
            if folder.name.startswith("."):
                continue
            try:
                m = json.loads(manifest_path.read_text())
            except ValueError:
                continue
            out.append(
                {
                    "stage": m.get("stage", folder.parent.name),
                    "key": m.get("key", folder.name),
                    "rows": m.get("total_rows", 0),
                    "bytes": sum(f["bytes"] for f in m.get("files", {}).values()),
                    "created": m.get("created"),
                    "path": str(folder),
                }
            )
        out.sort(key=lambda r: (r["created"] or "", r["stage"]))
        return out
