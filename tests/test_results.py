"""Nothing unpickled (issues 10, 19): the stage tasks' cache records are plain JSON, the StageRef's
fields, and a cached stage is served from them as a ``StageRef``."""

from __future__ import annotations

import json
from pathlib import Path

from sentiflow.flows.data_flow import DataConfig, prepare_data
from sentiflow.storage.store import StageRef
from tests.conftest import write_imdb_folder


def test_stage_cache_records_are_json_and_serve_stage_refs(tmp_path, prefect_harness):
    src = write_imdb_folder(tmp_path / "src", n_train=60, n_test=20)
    first = prepare_data(config=DataConfig(source=str(src)), data_root=str(tmp_path / "data"), workers=1)
    second = prepare_data(config=DataConfig(source=str(src)), data_root=str(tmp_path / "data"), workers=1)
    assert set(second.states.values()) == {"Cached"}
    assert second.refs() == first.refs() and all(isinstance(r, StageRef) for r in second.refs().values())

    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    storage = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value())
    records = {}
    for ref in first.refs().values():
        matches = list(storage.glob(f"sentiflow-{ref.stage}-{ref.key}-*"))
        assert len(matches) == 1, (ref.stage, ref.key, sorted(p.name for p in storage.iterdir())[:5])
        records[ref.stage + ref.key] = matches[0]
    for path in records.values():
        raw = path.read_bytes()
        stored = json.loads(raw)  # the whole record is the reference, as plain JSON
        assert set(stored) == {"stage", "key", "path"}
        assert b"pickle" not in raw.lower() and b"__class__" not in raw and not raw.startswith(b"\x80")
        assert Path(stored["path"]).name == stored["key"]
