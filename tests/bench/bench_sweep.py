"""A sweep against one default training, in the same run, on the same prepared data. Prints JSON.

What runs, each a whole command in a fresh process on one data root (the data stages prepared
first, by ``sentiflow prepare``, and shared by both, as a user's sweep after a training shares
them):

1. ``sentiflow train`` with the defaults (the baseline): wall time, its best epoch's ``val_acc``;
2. ``sentiflow sweep --trials N`` with the shipped space (``tasks/training/sweep_space.yaml``):
   wall time, the best trial's ``val_acc``, trials pruned, epochs trained, and epochs saved by
   pruning (each pruned trial's planned epochs less those it trained).

The aims (issue 20): the sweep in at most 2.5x the training's wall time, its best trial's
``val_acc`` at least the training's. Both are judged on validation only; the test split is
scored once each, by selection. Run on a quiet machine: the two commands run one after the other,
so load that comes and goes between them moves the ratio.

    .venv/bin/python tests/bench/bench_sweep.py --source ../shared/data/imdb --data-root /tmp/sfsweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(args: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run([str(BIN / "sentiflow"), *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="../shared/data/imdb")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--name", default="bench", help="the sweep's name (a new one starts a new study)")
    ap.add_argument("--skip-train", action="store_true", help="the sweep alone (the baseline measured before)")
    args = ap.parse_args()
    root = args.data_root.resolve()
    env = {**os.environ, "SENTIFLOW_DATA_ROOT": str(root), "SENTIFLOW_SOURCE": str(Path(args.source).resolve()),
           "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpus": os.cpu_count(), "trials": args.trials, "load_before": os.getloadavg()[0]}
    result["prepare_s"] = timed(["prepare"], env, root / "bench-prepare.log")
    if not args.skip_train:
        result["train_s"] = timed(["train"], env, root / "bench-train.log")
        print(json.dumps({"train_s": result["train_s"]}), file=sys.stderr, flush=True)
    result["sweep_s"] = timed(["sweep", "--trials", str(args.trials), "--name", args.name], env, root / "bench-sweep.log")
    result["load_after"] = os.getloadavg()[0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sentiflow").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    parent = next(r for r in runs if r.info.run_name == args.name)
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    best_val = lambda r: max((m.value for m in client.get_metric_history(r.info.run_id, "val_acc")), default=0.0)  # noqa: E731
    trained = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_acc")) for r in trials}
    planned = {r.info.run_id: int(r.data.params["train.max_epochs"]) for r in trials}
    pruned = [r for r in trials if r.info.status == "KILLED"]
    result["sweep"] = {
        "children": len(trials), "pruned": len(pruned), "epochs_trained": sum(trained.values()),
        "epochs_planned": sum(planned.values()),
        "epochs_saved_by_pruning": sum(planned[r.info.run_id] - trained[r.info.run_id] for r in pruned),
        "best_val_acc": max(map(best_val, trials)), "best_test_acc": parent.data.metrics.get("best_test_acc"),
        "best_run": parent.data.tags.get("sentiflow.best_run")}
    if not args.skip_train:
        default = next(r for r in runs if r.info.run_id not in trained and r.info.run_id != parent.info.run_id
                       and "val_acc" in r.data.metrics)
        result["default"] = {"best_val_acc": best_val(default), "test_acc": default.data.metrics.get("test_acc"),
                             "epochs": len(client.get_metric_history(default.info.run_id, "val_acc"))}
        result["ratio_sweep_to_train"] = round(result["sweep_s"] / result["train_s"], 3)
        result["best_val_acc_gain"] = round(result["sweep"]["best_val_acc"] - result["default"]["best_val_acc"], 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
