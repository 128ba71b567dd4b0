"""Scoring on Dask against scoring in-process, same input, same run, printed as JSON (used for
docs/scaling.md, "Scoring on Dask").

The score flow, three ways, each on a fresh data root (nothing cached) with the same registered
model, on the IMDb test reviews repeated to ``--rows`` (row groups of ``--row-group`` rows):

* ``local``: in-process, the score task with its pool of 2 tokenizer processes (the default);
* ``dask_new``: ``SENTIFLOW_TASK_RUNNER=dask`` with no address: a temporary LocalCluster of 2
  single-threaded worker processes, started by the flow (its start and the workers' imports
  counted);
* ``dask_warm``: the same on an existing LocalCluster of 2 single-threaded workers
  (``SENTIFLOW_DASK_ADDRESS``) that has scored once before (imports done): the steady state.

and ``dask_tasksN`` (N = 10, 40): the warm cluster on N parts of 10 reviews each, where nearly all
the time is overhead: the slope between the two is the overhead per task, the rest the fixed
overhead of a run (planning, the model's download, the subflow, assembling).

For each: the stage's seconds (``stats.json``: reading to the written predictions; on Dask from
cutting the input into parts to the assembled file), the flow's wall seconds, and on Dask each
``score-part`` task's duration from the Prefect API. From these: the per-row cost of one
single-threaded worker (sum of part durations / rows) and the overhead around the parts (stage
seconds - sum of part durations / workers). The outputs are checked to hold the same rows.

    .venv/bin/python tests/bench/bench_score_dask.py --tracking-uri sqlite:////tmp/sfb/data/mlflow.db \
        --rows 25000 --row-group 2500 --part-rows 2500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow.parquet as pq

from tests.bench.bench_score import make_input

CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def part_durations(flow_run_id: str) -> list[float]:
    """Seconds of each score-part task run under the flow run (its score-parts subflow)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    time.sleep(2)  # task runs report their end asynchronously
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        if not subflows:
            return []
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in subflows])))
    return [(r.end_time - r.start_time).total_seconds() for r in runs
            if r.name.startswith("score-part-") and r.start_time and r.end_time]


def one(mode: str, src: Path, root: Path, args, address: str | None = None) -> dict:
    from sentiflow.flows.runs import with_settings
    from sentiflow.flows.score_flow import ScoreConfig, score_flow
    from sentiflow.storage.settings import Settings

    settings = Settings(data_root=root, tracking_uri=args.tracking_uri, workers=2,
                        task_runner="local" if mode == "local" else "dask", dask_address=address)
    config = ScoreConfig(model=args.model, source=str(src), part_rows=args.part_rows)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    state = with_settings(score_flow, settings)(config=config, return_state=True)
    wall = time.perf_counter() - started
    outcome = state.result()
    parts = part_durations(str(state.state_details.flow_run_id))
    rec = {"mode": mode, "rows": outcome.stats.rows, "stage_s": round(outcome.stats.seconds, 2),
           "flow_wall_s": round(wall, 2), "stage_reviews_per_s": round(outcome.stats.rows / outcome.stats.seconds, 1),
           "load_before": round(load, 2), "predictions": outcome.predictions}
    if parts:
        busy = sum(parts)
        rec.update(parts=len(parts), part_s_mean=round(busy / len(parts), 2), part_s_max=round(max(parts), 2),
                   worker_ms_per_row=round(1000 * busy / outcome.stats.rows, 3),
                   overhead_s=round(outcome.stats.seconds - busy / CLUSTER["n_workers"], 2))
    print(json.dumps(rec), file=sys.stderr, flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models:/sentiflow@champion")
    ap.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'data' / 'mlflow.db'}")
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "imdb" / "test.parquet"))
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--row-group", type=int, default=2_500)
    ap.add_argument("--part-rows", type=int, default=2_500)
    ap.add_argument("--modes", default="local,dask_warm,dask_new,local,dask_warm")
    args = ap.parse_args()

    from distributed import LocalCluster

    results: dict = {"cpus": os.cpu_count(), "rows": args.rows, "row_group": args.row_group,
                     "part_rows": args.part_rows, "runs": [], "overhead": []}
    with tempfile.TemporaryDirectory(prefix="bench-score-dask-") as tmp, LocalCluster(**CLUSTER) as cluster:
        tmp = Path(tmp)
        src = make_input(Path(args.source), args.rows, tmp / "reviews.parquet", args.row_group)
        warm = make_input(Path(args.source), 200, tmp / "warm.parquet", 100)
        # not measured: Prefect's database, MLflow's, and the warm cluster's imports
        one("local", warm, tmp / "warm-local", args)
        one("dask_warm", warm, tmp / "warm-dask", args, cluster.scheduler_address)
        for i, mode in enumerate(args.modes.split(",")):
            if mode.startswith("dask_tasks"):  # N parts of 10 reviews: the overhead per task
                n = int(mode.removeprefix("dask_tasks"))
                tiny = make_input(Path(args.source), 10 * n, tmp / f"tiny-{n}.parquet", 10)
                tiny_args = argparse.Namespace(**{**vars(args), "part_rows": 10})
                results["overhead"].append(one(mode, tiny, tmp / f"{i}-{mode}", tiny_args, cluster.scheduler_address))
                continue
            address = cluster.scheduler_address if mode == "dask_warm" else None
            results["runs"].append(one(mode, src, tmp / f"{i}-{mode}", args, address))
        first = pq.read_table(results["runs"][0]["predictions"])
        for run in results["runs"][1:]:
            other = pq.read_table(run["predictions"])
            ok = np.array([s == "ok" for s in first.column("status").to_pylist()])
            diff = np.abs(first.column("prob_pos").to_numpy(zero_copy_only=False)[ok]
                          - other.column("prob_pos").to_numpy(zero_copy_only=False)[ok])
            run["same_ids_statuses_preds"] = all(first.column(c).equals(other.column(c))
                                                 for c in ("id", "status", "pred", "label"))
            run["max_abs_prob_diff"] = float(diff.max()) if len(diff) else 0.0
    for run in results["runs"] + results["overhead"]:
        run.pop("predictions")
    fixed, per_task = 0.0, 0.0
    if len(results["overhead"]) >= 2:  # stage = fixed + tasks x per_task / workers
        a, b = results["overhead"][0], results["overhead"][-1]
        per_task = (b["stage_s"] - a["stage_s"]) * CLUSTER["n_workers"] / (b["parts"] - a["parts"])
        fixed = a["stage_s"] - a["parts"] * per_task / CLUSTER["n_workers"]
        results["overhead_per_task_s"], results["overhead_fixed_s"] = round(per_task, 3), round(fixed, 2)
    by = {m: [r for r in results["runs"] if r["mode"] == m] for m in ("local", "dask_warm", "dask_new")}
    if by["local"] and by["dask_warm"]:
        local = min(r["stage_s"] for r in by["local"])
        warm = min(r["stage_s"] for r in by["dask_warm"])
        results["speedup_dask_warm_vs_local"] = round(local / warm, 2)
        best = min(by["dask_warm"], key=lambda r: r["stage_s"])
        c = best["worker_ms_per_row"] / 1000  # a part's duration per row, its own overhead included
        o = fixed if results["overhead"] else best["overhead_s"]

        def on_32(rows: int, part_rows: int = 10_000) -> float:  # 32 single-threaded workers, 32 cores
            parts = -(-rows // part_rows)
            return round(o + -(-parts // 32) * (part_rows * c + per_task), 1)

        results["estimate_32_cores"] = {"per_row_s": c, "fixed_s": o, "per_task_s": per_task,
                                        "seconds_25k_rows_parts_of_800": on_32(25_000, 800),
                                        "seconds_2_5M_rows_parts_of_10000": on_32(2_500_000)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
