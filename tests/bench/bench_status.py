"""``sentiflow status`` on a data root the quick start built (``make train``, then ``make score``):
the whole command's wall time, median of ``--repeat`` runs, against a baseline in the same run:
``python -c "import prefect"``, the floor every command paid before status stopped importing
Prefect (and MLflow). Prints JSON.

    .venv/bin/python tests/bench/bench_status.py --data-root data [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "SENTIFLOW_DATA_ROOT": args.data_root}
    env.pop("PREFECT_API_URL", None)  # the embedded default, as the quick start
    status = [str(BIN / "sentiflow"), "status"]
    baseline = [sys.executable, "-c", "import prefect"]
    wall(status, env)  # the file cache warm for both
    times: dict[str, list[float]] = {"status": [], "import_prefect": []}
    for _ in range(args.repeat):  # interleaved: the machine's load falls on both alike
        times["status"].append(wall(status, env))
        times["import_prefect"].append(wall(baseline, env))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"status_seconds": round(median["status"], 3),
                      "import_prefect_seconds": round(median["import_prefect"], 3),
                      "ratio": round(median["status"] / median["import_prefect"], 3),
                      "repeat": args.repeat, "data_root": args.data_root}, indent=2))


if __name__ == "__main__":
    main()
