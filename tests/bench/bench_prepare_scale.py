"""Benchmark of `sentiflow prepare` as the data grows. Prints JSON.

Builds, from the shared IMDb copy, a 4x source (every review four times, ids made unique) and the
same source with 10 % new reviews appended, then runs the whole `sentiflow prepare` command:

* memory: the peak of the command's process tree (the flow's process and its tokenizer workers:
  the sum of their RSS, sampled every 0.1 s, and the flow process's own peak) on IMDb and on 4x;
* incremental data: a cold `prepare` of 4x, then `prepare` of 4x + 10 % on the same data root,
  whose unchanged shards are reused (the shard task counts, Cached vs Completed, are printed).

    .venv/bin/python tests/bench/bench_prepare_scale.py --imdb ../shared/data/imdb

Each command is a fresh process (imports and Prefect's ephemeral server included in its time).
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

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
SENTIFLOW = [sys.executable, "-m", "sentiflow.flows.cli"]


def times(imdb: Path, out: Path, copies: int, extra: float = 0.0) -> Path:
    """IMDb ``copies`` times over (ids ``<source_id>#<copy>``), plus ``extra`` of its train part
    appended as new reviews (ids ``new#<n>``), as a folder of train.parquet and test.parquet."""
    out.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        table = pq.read_table(imdb / f"{part}.parquet", columns=["text", "label", "source_id"])
        tables = []
        for k in range(copies):
            ids = pc.binary_join_element_wise(table.column("source_id"), pa.scalar(f"{k}"), "#")
            tables.append(table.set_column(2, "source_id", ids))
        if extra and part == "train":
            n = int(round(table.num_rows * copies * extra))
            new = table.slice(0, n)
            ids = pa.array([f"new#{i}" for i in range(n)])
            # reviews not seen before: the text reversed by sentence halves, so tokens differ in order
            texts = pa.array([t[len(t) // 2:] + " " + t[:len(t) // 2] for t in new.column("text").to_pylist()])
            tables.append(pa.table({"text": texts, "label": new.column("label"), "source_id": ids}))
        pq.write_table(pa.concat_tables(tables), out / f"{part}.parquet", row_group_size=8192)
    return out


def run_prepare(source: Path, data_root: Path, log: Path) -> dict:
    """``sentiflow prepare`` in a fresh process; its seconds, peak tree RSS and own peak RSS."""
    env = {**os.environ, "SENTIFLOW_DATA_ROOT": str(data_root), "PREFECT_LOGGING_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([*SENTIFLOW, "prepare", "--source", str(source)], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    main = psutil.Process(proc.pid)
    peak_tree = peak_main = 0
    while proc.poll() is None:
        try:
            procs = [main, *main.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs if p.is_running()]
            peak_tree, peak_main = max(peak_tree, sum(rss)), max(peak_main, rss[0])
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"prepare failed:\n{log.read_text()[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_tree_mb": round(peak_tree / 2**20),
            "peak_main_mb": round(peak_main / 2**20), "table": _shard_lines(log.read_text())}


def _shard_lines(text: str) -> list[str]:
    """The rows of the command's table for the per-shard stages (their shards reused / computed)."""
    return [" ".join(line.replace("│", " ").split()) for line in text.splitlines()
            if line.startswith("│") and ("tokenize-" in line or "encode-" in line)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imdb", type=Path, default=ROOT.parent / "shared/data/imdb")
    ap.add_argument("--copies", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sentiflow-scale-"))
    big = times(args.imdb.resolve(), tmp / "imdb-x4", args.copies)
    grown = times(args.imdb.resolve(), tmp / "imdb-x4-plus10", args.copies, extra=0.10)
    rows = {name: pq.read_metadata(p / "train.parquet").num_rows + pq.read_metadata(p / "test.parquet").num_rows
            for name, p in (("x4", big), ("x4+10%", grown))}

    imdb = run_prepare(args.imdb.resolve(), tmp / "data-x1", tmp / "x1.log")
    cold = run_prepare(big, tmp / "data-x4", tmp / "x4.log")
    appended = run_prepare(grown, tmp / "data-x4", tmp / "x4-plus10.log")
    print(json.dumps({
        "reviews": {"x1": 50_000, **rows},
        "prepare_x1": imdb, "prepare_x4_cold": cold, "prepare_x4_plus10_after_x4": appended,
        "peak_tree_ratio_x4_over_x1": round(cold["peak_tree_mb"] / imdb["peak_tree_mb"], 3),
        "peak_main_ratio_x4_over_x1": round(cold["peak_main_mb"] / imdb["peak_main_mb"], 3),
        "append_time_ratio": round(appended["seconds"] / cold["seconds"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
