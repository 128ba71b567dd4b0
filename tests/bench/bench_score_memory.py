"""Scoring memory: the peak of ``sentiflow score`` at IMDb's test part and at 4x it, each in a
fresh process on a fresh data root (nothing cached), printed as JSON.

How memory is counted, three ways, for the whole command:

* ``tree_pss_mb``: the peak over time of the summed PSS (``/proc/PID/smaps_rollup``) of the
  command's process and all its descendants (the tokenizer worker processes), sampled every
  0.2 s. PSS splits each page shared by N processes (a forked worker shares the parent's pages
  until it writes them) into N parts, so the sum is the physical memory the command holds: the
  figure the 1.2x aim is judged on.
* ``tree_rss_mb``: the same with RSS: pages shared by fork counted once per process (an upper
  bound).
* ``maxrss_mb``: the kernel's exact peak RSS of the command's own process (``wait4``), which is
  the largest single process; no sampling.

The input is the IMDb test reviews repeated to the size with distinct ids (row groups of 5,000
rows, ``bench_score.make_input``). A champion must exist in the tracking store named:

    .venv/bin/python tests/bench/bench_score_memory.py --tracking-uri sqlite:////tmp/sfb/data/mlflow.db \
        --sizes 25000 100000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_score import make_input, scoring_arguments


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(d))
    return tree


def _tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; zeros for one that is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.by_process: dict[str, int] = {}  # role → peak PSS (kB) of any process in that role
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            sizes = [_rollup(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(r for r, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
            for pid, (_, pss) in zip(pids, sizes):
                role = self._role(pid)
                self.by_process[role] = max(self.by_process.get(role, 0), pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._stop.wait(self.every)

    def _role(self, pid: int) -> str:
        """The command itself, a Prefect server it started, or a child (a tokenizer worker)."""
        if pid == self.pid:
            return "command"
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "gone"
        return "prefect_server" if "server" in cmd else "child"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {"seconds": round(time.perf_counter() - started, 1), "tree_pss_mb": round(sampler.peak_pss / 1024),
            "tree_rss_mb": round(sampler.peak_rss / 1024), "maxrss_mb": round(usage.ru_maxrss / 1024),
            "processes": sampler.peak_processes,
            "peak_pss_mb_by_process": {k: round(v / 1024) for k, v in sorted(sampler.by_process.items())}}


def main() -> None:
    args = scoring_arguments().parse_args()

    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri, "PREFECT_HOME": tempfile.mkdtemp(),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    results = {"model": args.model, "cpus": os.cpu_count(), "workers": args.workers, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-score-mem-") as tmp:
        tmp = Path(tmp)
        # not measured: the first command on a new PREFECT_HOME creates Prefect's database
        warm = make_input(Path(args.source), 100, tmp / "warm.parquet")
        measure([sys.executable, "-m", "sentiflow.flows.cli", "score", "--model", args.model, "--source", str(warm),
                 "--data-root", str(tmp / "data-warm")], env)
        for n in args.sizes:
            src = make_input(Path(args.source), n, tmp / f"reviews-{n}.parquet")
            cmd = [sys.executable, "-m", "sentiflow.flows.cli", "score", "--model", args.model, "--source", str(src),
                   "--out", str(tmp / f"out-{n}.parquet"), "--data-root", str(tmp / f"data-{n}"),
                   "--workers", str(args.workers)]
            results["sizes"][n] = row = measure(cmd, env)
            print(json.dumps({n: row}), file=sys.stderr, flush=True)
    sizes = sorted(results["sizes"])
    if len(sizes) > 1:
        first, last = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
        results["ratio"] = {k: round(last[k] / first[k], 3) for k in ("tree_pss_mb", "tree_rss_mb", "maxrss_mb")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
