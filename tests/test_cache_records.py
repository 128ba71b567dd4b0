"""A stage task's Prefect cache record is read by sentiflow's own reader (issue 19, item 5).

A record lives in Prefect's result storage, which may be a volume others write. Prefect's own
reader decodes a record with the serializer the record names (``pickle``: unpickled) and its JSON
decoder imports and calls the classes a record names (``__class__``, ``__exc_type__``). Here a
real stage task (``stage.stage_task``, ``stage.run_stage``, a real Prefect server) runs once, its
record is replaced by such a record, and the next run must import and call nothing from it: the
task runs (reusing its valid folder, or building a damaged one), returns the right reference,
and leaves a good record, served as "Cached" on the run after.

Each hostile record is also handed to Prefect's own reader at the end (``ResultRecord
.deserialize``), which does leave the marker: the records are hostile, and only sentiflow's
reader keeps them harmless.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel, model_validator

from sentiflow.storage.store import StageRef, Store, stable_hash
from sentiflow.tasks import stage
from tests.conftest import capture_log

pytestmark = pytest.mark.usefixtures("prefect_harness")


# -- a stage of its own: one small file from its parameters ---------------------------------------

class EchoParams(BaseModel):
    text: str


def _spec(params: EchoParams) -> stage.StageSpec:
    return stage.StageSpec("echo", params, (), "1")


@stage.stage_task("echo", lambda p: _spec(p["params"]).ref(p["root"]))
def echo_task(params: EchoParams, root: str, force: bool = False) -> StageRef:
    return stage.run_stage(root, _spec(params), lambda out: (out / "text.txt").write_text(params.text))


def run_echo(root: Path, text: str = "hello") -> tuple[str, StageRef]:
    """One flow run of ``echo_task``: the task run's state name and its result."""
    from prefect import flow

    @flow(name="echo-records")
    def echo_flow(params: EchoParams, root: str) -> tuple[str, StageRef]:
        state = echo_task(params, root, return_state=True)
        return state.name, state.result()

    return echo_flow(EchoParams(text=text), str(root))


def record_file(ref: StageRef) -> Path:
    """The record file of ``ref`` in Prefect's local result storage: named by its stage, its key
    and its folder's path."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    name = f"sentiflow-{ref.stage}-{ref.key}-{stable_hash(str(ref.path))[:12]}"
    path = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()) / name
    assert path.is_file(), name
    return path


def assert_good_record(path: Path, ref: StageRef) -> None:
    """The record holds ``ref``'s three fields as plain JSON, and sentiflow's reader reads it."""
    from sentiflow.tasks import stage_records

    assert json.loads(path.read_bytes()) == {"stage": ref.stage, "key": ref.key, "path": str(ref.path)}
    assert stage_records.read_record(path.name) == ref


# -- hostile records: what each would do under Prefect's own reader --------------------------------

class Tripwire(Exception):
    """An exception whose construction leaves a marker file: Prefect's JSON decoder constructs
    the class a record names in ``__exc_type__``."""

    def __init__(self, message: str):
        Path(message).touch()
        super().__init__(message)


class TripwireModel(BaseModel):
    """A model whose validation leaves a marker file: Prefect's JSON decoder validates into the
    class a record names in ``__class__``."""

    marker: str

    @model_validator(mode="after")
    def _touch(self) -> "TripwireModel":
        Path(self.marker).touch()
        return self


class _Plant:
    """Unpickling this calls ``os.makedirs(marker)``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def prefect_record(path: Path, serializer: dict, result: str) -> bytes:
    """A record as Prefect writes one: its metadata (naming a serializer) and its result."""
    return json.dumps({"metadata": {"storage_key": str(path), "expiration": None, "serializer": serializer,
                                    "prefect_version": "3.9.1", "storage_block_id": None},
                       "result": result}).encode()


def hostile(kind: str, path: Path, marker: Path, ref: StageRef) -> bytes:
    if kind == "pickle":
        payload = base64.encodebytes(pickle.dumps(_Plant(str(marker)))).decode()
        return prefect_record(path, {"type": "pickle", "picklelib": "cloudpickle"}, payload)
    if kind == "exc-type-class":
        return prefect_record(path, {"type": "json"}, json.dumps(
            {"__exc_type__": f"{__name__}.Tripwire", "message": str(marker)}))
    if kind == "exc-type-os-system":
        return prefect_record(path, {"type": "json"}, json.dumps(
            {"__exc_type__": "os.system", "message": f"touch {marker}"}))
    if kind == "class":
        return prefect_record(path, {"type": "json"}, json.dumps(
            {"__class__": f"{__name__}.TripwireModel", "data": {"marker": str(marker)}}))
    if kind == "our-serializer-claimed":  # names sentiflow's serializer, holds a pickle
        payload = base64.encodebytes(pickle.dumps(_Plant(str(marker)))).decode()
        return prefect_record(path, {"type": "sentiflow-stageref"}, payload)
    if kind == "another-stage":  # a well-formed reference, but not the one this record is for
        return json.dumps({"stage": "echo", "key": "0" * 20, "path": str(ref.path.parent / ("0" * 20))}).encode()
    if kind == "truncated":
        return json.dumps({"stage": ref.stage, "key": ref.key, "path": str(ref.path)}).encode()[:-7]
    raise AssertionError(kind)


RUNS_CODE_UNDER_PREFECT = {"pickle", "exc-type-class", "class"}


@pytest.mark.parametrize("kind", ["pickle", "exc-type-class", "exc-type-os-system", "class",
                                  "our-serializer-claimed", "another-stage", "truncated"])
def test_a_hostile_record_is_ignored_and_replaced(tmp_path, kind):
    root, marker = tmp_path / "data", tmp_path / "marker"
    first_state, ref = run_echo(root)
    assert first_state == "Completed"
    assert ref.path == (root / "echo" / ref.key).resolve() and Store(root).is_valid(ref)
    manifest = (ref.path / "manifest.json").stat()
    path = record_file(ref)
    planted = hostile(kind, path, marker, ref)
    path.write_bytes(planted)

    with capture_log("sentiflow.records") as logged:
        state, again = run_echo(root)
    assert not marker.exists()
    assert state == "Completed" and again == ref  # the task ran ...
    after = (ref.path / "manifest.json").stat()  # ... and reused the valid folder
    assert (after.st_ino, after.st_mtime_ns) == (manifest.st_ino, manifest.st_mtime_ns)
    assert any(path.name in r.getMessage() and "not a good stage record" in r.getMessage() for r in logged)
    assert_good_record(path, ref)
    assert run_echo(root) == ("Cached", ref)
    assert not marker.exists()

    # the same bytes under Prefect's own reader: code runs, or (os.system, not an exception
    # class: Prefect 3.9 checks that much) the record is refused; never a reference
    from prefect._internal.result_records import ResultRecord

    if kind in RUNS_CODE_UNDER_PREFECT:
        try:
            ResultRecord.deserialize(planted)
        except Exception:
            pass
        assert marker.exists()
    elif kind == "exc-type-os-system":
        with pytest.raises(ValueError, match="Invalid exception type"):
            ResultRecord.deserialize(planted)
        assert not marker.exists()


def test_a_hostile_record_of_a_damaged_folder_is_ignored_and_the_folder_rebuilt(tmp_path):
    root, marker = tmp_path / "data", tmp_path / "marker"
    _, ref = run_echo(root, "rebuilt")
    (ref.path / "text.txt").write_text("damaged")
    path = record_file(ref)
    path.write_bytes(hostile("pickle", path, marker, ref))

    state, again = run_echo(root, "rebuilt")
    assert not marker.exists()
    assert state == "Completed" and again == ref
    assert Store(root).is_valid(ref) and (ref.path / "text.txt").read_text() == "rebuilt"
    assert_good_record(path, ref)
    assert run_echo(root, "rebuilt") == ("Cached", ref)


def test_an_untouched_record_is_plain_json_and_served_cached(tmp_path):
    root = tmp_path / "data"
    assert run_echo(root, "cached")[0] == "Completed"
    state, ref = run_echo(root, "cached")
    assert state == "Cached" and ref.path == (root / "echo" / ref.key).resolve()
    raw = record_file(ref).read_bytes()
    assert b"pickle" not in raw and b"__class__" not in raw and b"metadata" not in raw
    assert_good_record(record_file(ref), ref)
