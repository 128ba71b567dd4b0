"""The `sentiflow prepare` command as a user types it: cold (a fresh data root, nothing stored)
against warm (the same root again: every stage stored, so nothing runs and no Prefect server
starts), each in a new process. Prints JSON.

    .venv/bin/python tests/bench/bench_prepare_cli.py --source ../shared/data/imdb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the process tree), output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "imdb"))
    ap.add_argument("--warm-runs", type=int, default=3)
    args = ap.parse_args()
    sentiflow = str(Path(sys.executable).parent / "sentiflow")
    with tempfile.TemporaryDirectory(prefix="sentiflow-bench-") as tmp:
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "HF_HUB_OFFLINE": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        cmd = [sentiflow, "prepare", "--source", args.source, "--data-root", f"{tmp}/data"]
        timed([sentiflow, "--help"], env)  # imports warm in the page cache, as for a user's second command
        cold_s, cold_cpu, out = timed(cmd, env)
        assert "Completed" in out, out[-2000:]
        warm = []
        for _ in range(args.warm_runs):
            s, cpu, out = timed(cmd, env)
            assert "nothing to run" in out, out[-2000:]
            warm.append((s, cpu))
    best = min(s for s, _ in warm)
    print(json.dumps({
        "source": args.source, "load_average": os.getloadavg(),
        "cold_seconds": round(cold_s, 2), "cold_cpu_seconds": round(cold_cpu, 2),
        "warm_seconds": [round(s, 2) for s, _ in warm], "warm_cpu_seconds": [round(c, 2) for _, c in warm],
        "warm_over_cold": round(best / cold_s, 4),
        "warm_over_cold_median": round(sorted(s for s, _ in warm)[len(warm) // 2] / cold_s, 4),
    }, indent=2))


if __name__ == "__main__":
    main()
