"""The data stages in-process (a fork pool of 2) against a Dask LocalCluster (2 workers x 1
thread), on the full IMDb, one JSON line per run, then whether every stage's files are the same
bytes in every run. Task times come from the Prefect API; tokenize and encode are one task per
shard, and the mean time of a shard's task on one worker is what the 32-core arithmetic of
docs/scaling.md starts from. Used for docs/scaling.md:

    .venv/bin/python tests/bench/bench_dask.py ../shared/data/imdb local,dask,local,dask
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

def load():
    return open("/proc/loadavg").read().split()[:3]

def task_times(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    time.sleep(3)
    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out = {}
    for r in runs:
        name = r.name if r.name.split("-")[0] in ("tokenize", "encode") else r.name.split("-")[0]
        out[name] = (r.start_time.timestamp() if r.start_time else None,
                     r.end_time.timestamp() if r.end_time else None)
    return out

def one(mode, root, src, base=None):
    from sentiflow.flows.data_flow import DataConfig, data_flow_for
    from sentiflow.storage.settings import Settings
    if base:  # ingest and split already there (content-addressed: the same keys)
        for stage in ("ingest", "split"):
            shutil.copytree(base / stage, root / stage)
    flow = data_flow_for(Settings(task_runner=mode, data_root=root), workers=2)
    l0 = load(); t0 = time.time()
    state = flow(config=DataConfig(source=src), data_root=str(root), workers=2, return_state=True)
    wall = time.time() - t0
    res = state.result(); l1 = load()
    tt = task_times(state.state_details.flow_run_id)
    te = [v for k, v in tt.items() if k.startswith(("tokenize", "encode"))]
    span = max(e for s, e in te) - min(s for s, e in te)
    first_tok = min(s for k, (s, e) in tt.items() if k.startswith("tokenize"))
    shard_s = {stage: [e - s for k, (s, e) in tt.items() if k.startswith(stage + "-") and k[-1].isdigit()]
               for stage in ("tokenize", "encode")}
    rec = {"mode": mode, "wall_s": round(wall, 1), "tokenize_encode_span_s": round(span, 1),
           "shard_tasks": {k: len(v) for k, v in shard_s.items()},
           "shard_task_mean_s": {k: round(sum(v) / len(v), 2) for k, v in shard_s.items() if v},
           "sum_tokenize_encode_s": round(sum(e - s for s, e in te), 1),
           "flow_start_to_first_tokenize_s": round(first_tok - t0, 1),
           "states": res.states, "loadavg_before": l0, "loadavg_after": l1}
    print(json.dumps(rec), flush=True)
    return res

if __name__ == "__main__":
    src = sys.argv[1]; order = sys.argv[2].split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    base = None; results = {}
    for i, mode in enumerate(order):
        root = work / f"{i}-{mode}"
        results[i] = one(mode, root, src, base)
        base = base or root
    # byte identity across modes at full scale: every stage's manifest lists the same files
    files = {i: {n: r.manifest()["files"] for n, r in res.refs().items()} for i, res in results.items()}
    print("IDENTICAL", all(f == files[0] for f in files.values()), flush=True)
    shutil.rmtree(work)
