"""The run journal: one small JSON file per flow run under ``<data root>/runs/``.

A flow run of sentiflow writes its record when it starts (``running``, with the process that runs
it) and again when it ends (``completed``, ``failed`` with the error's message, ``crashed``). Prefect
and MLflow stay the records of the runs; the journal mirrors, per data root, what ``sentiflow
status`` shows without importing either (a second, no server), and it is how a run whose process
died is found: its record still says ``running`` while its process is gone. A SIGKILL leaves no
chance to write anything else, so the next command looks (``sentiflow.flows.reaper``).

A process is known by its host, the kernel's boot id, its pid and its start time in clock ticks:
a pid the kernel gave to another process since, or a machine rebooted, is not the run's process.
On another host nothing can be told from here; the Prefect server says (a worker, or the zombie
automation, marks such a run Crashed).

Each record is written to a temporary name and renamed: a reader never sees half a record. A
record that cannot be read is skipped, never an error: the journal informs, it does not decide.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

RUNS = "runs"  # the journal's folder under the data root
ENDED = ("completed", "failed", "crashed", "cancelled")


class Process(BaseModel):
    host: str
    boot: str  # /proc/sys/kernel/random/boot_id; "" where there is none
    pid: int
    ticks: int  # the process's start time since boot, in clock ticks; 0 where unknown

    @classmethod
    def this(cls) -> Process:
        return cls(host=socket.gethostname(), boot=_boot_id(), pid=os.getpid(), ticks=_start_ticks(os.getpid()))

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_gone(self) -> bool:
        """On this host: the process ended (or the machine restarted since). Another host's
        process is never called gone from here."""
        if not self.is_local():
            return False
        if self.boot and self.boot != _boot_id():
            return True
        if self.ticks:
            return _start_ticks(self.pid) != self.ticks  # 0: no such process; else another one
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class RunRecord(BaseModel):
    id: str  # the Prefect flow run's id
    flow: str  # train, score, prepare-data
    name: str  # the flow run's name, as in the Prefect and MLflow UIs
    state: str = "running"  # running, then one of ENDED
    message: str = ""  # why it failed or crashed
    started: datetime
    ended: datetime | None = None
    api: str  # the Prefect API it ran against: a server's URL, or "ephemeral"
    tracking: str  # the MLflow tracking URI, credentials removed
    process: Process
    outcome: dict[str, Any] = {}  # what it produced: a version and the gate's verdict, rows scored

    @property
    def running(self) -> bool:
        return self.state == "running"


def now() -> datetime:
    return datetime.now(timezone.utc)


class Journal:
    def __init__(self, data_root: Path | str):
        self.folder = Path(data_root) / RUNS

    def path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.json"

    def write(self, record: RunRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{record.id}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(record.model_dump_json(indent=1))
            os.replace(tmp, self.path(record.id))
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, run_id: str) -> RunRecord | None:
        try:
            return RunRecord.model_validate_json(self.path(run_id).read_bytes())
        except (OSError, ValidationError, ValueError):
            return None

    def records(self) -> list[RunRecord]:
        """Every readable record, the newest start first."""
        if not self.folder.is_dir():
            return []
        found = (self.read(p.stem) for p in self.folder.glob("*.json"))
        return sorted((r for r in found if r is not None), key=lambda r: r.started, reverse=True)

    def end(self, record: RunRecord, state: str, message: str = "", **outcome: Any) -> RunRecord:
        ended = record.model_copy(update={"state": state, "message": message, "ended": now(),
                                          "outcome": {**record.outcome, **outcome}})
        self.write(ended)
        return ended

    def dead(self) -> list[RunRecord]:
        """Records still ``running`` whose process on this host is gone."""
        return [r for r in self.records() if r.running and r.process.is_gone()]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (after the command's closing parenthesis: field 20); 0 when
    there is no such process or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[19])
