"""Progress of long stages: a bar on an interactive terminal, and log lines (which Prefect
collects, see ``PREFECT_LOGGING_EXTRA_LOGGERS``) at every tenth of the way."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator


class Progress:
    def __init__(self, logger: logging.Logger, desc: str, total: int, unit: str):
        self.logger, self.desc, self.total, self.unit = logger, desc, max(total, 1), unit
        self.done = 0
        self.next_log = 0.1
        self.started = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(desc, total=self.total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if self.done / self.total >= self.next_log or self.done >= self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.logger.info(
                "%s: %d/%d %s (%.0f%%, %.0f %s/s)",
                self.desc, self.done, self.total, self.unit,
                100 * self.done / self.total, rate, self.unit,
            )
            while self.next_log <= self.done / self.total:
                self.next_log += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def progress(logger: logging.Logger, desc: str, total: int, unit: str = "items") -> Iterator[Progress]:
    bar = Progress(logger, desc, total, unit)
    try:
        yield bar
    finally:
        bar.close()
