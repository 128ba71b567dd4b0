"""The default training against the one it replaced, in the same run, on the same prepared data.
Prints JSON.

What runs, each a whole ``sentiflow train`` command under ``/usr/bin/time`` in a fresh process, on
one data root whose data stages are prepared first (``sentiflow prepare``) and shared, each in a
fresh tracking store of its own: neither reuses an earlier run of its key, and neither finds a
champion to load and score before registering (a new user's first training). In one store the
second command paid for the gate against the first's champion, ~23 s of its ~270 s (2026-12-08).

1. the baseline, ``--preset rnn``: the RNN alone, the default until issue 21 (a BiLSTM of 128 on
   GloVe 50-d for 8 epochs, no n-gram term);
2. ``sentiflow train`` with no option: today's default.

For each: wall seconds, the largest process's maximum RSS (``/usr/bin/time``'s ``%M``), the best
epoch's ``val_acc`` and the ``test_acc`` selection logged (the test split scored once, with the
epoch chosen on validation). For the default, the parts of the mixed model on test as selection
logs them: ``test_acc_rnn`` (its RNN's logit alone) and ``test_acc_ngram`` (its n-gram term
alone). The aims (issue 21): ``wall_ratio`` ≤ 0.35, the default's ``test_acc`` ≥ 0.915, and
``mixed_over_term`` ≥ 0.005. The two commands run one after the other, so load that comes and
goes between them moves the ratio: run it on a quiet machine.

    .venv/bin/python tests/bench/bench_default.py --source ../shared/data/imdb --data-root /tmp/sfdefault
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

BIN = Path(sys.executable).parent


def timed(args: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``sentiflow ARGS``: wall seconds and the largest process's maximum RSS in MB."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rss:
        t0 = time.perf_counter()
        with open(log, "w") as out:
            subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", str(BIN / "sentiflow"), *args], env=env,
                           stdout=out, stderr=subprocess.STDOUT, check=True)
        wall = time.perf_counter() - t0
        return {"wall_s": round(wall, 1), "max_rss_mb": round(int(rss.read().split()[-1]) / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="../shared/data/imdb")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--baseline", default="rnn", help="the preset the default is compared with")
    args = ap.parse_args()
    root = args.data_root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    tracking = Path(tempfile.mkdtemp(prefix="bench-default-", dir=root))
    uris = {name: f"sqlite:///{tracking / name / 'mlflow.db'}" for name in ("baseline", "default")}
    env = {**os.environ, "SENTIFLOW_DATA_ROOT": str(root), "SENTIFLOW_SOURCE": str(Path(args.source).resolve()),
           "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    result: dict = {"cpus": os.cpu_count(), "tracking": uris, "load_before": os.getloadavg()[0]}
    result["prepare"] = timed(["prepare"], {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tracking / 'prepare.db'}"},
                              root / "bench-prepare.log")
    for name, args_ in (("baseline", ["train", "--preset", args.baseline]), ("default", ["train"])):
        (tracking / name).mkdir()
        result[name] = timed(args_, {**env, "MLFLOW_TRACKING_URI": uris[name]}, tracking / f"{name}.log")
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    result["load_after"] = os.getloadavg()[0]

    from mlflow.tracking import MlflowClient

    for name in ("baseline", "default"):
        client = MlflowClient(uris[name])
        (run,) = client.search_runs([client.get_experiment_by_name("sentiflow").experiment_id])
        history = client.get_metric_history(run.info.run_id, "val_acc")
        metrics = run.data.metrics
        result[name].update({
            "run_id": run.info.run_id, "preset": run.data.tags.get("sentiflow.preset"),
            "epochs": len(history), "best_val_acc": max(m.value for m in history),
            "test_acc": metrics.get("test_acc"), "test_acc_rnn": metrics.get("test_acc_rnn"),
            "test_acc_ngram": metrics.get("test_acc_ngram"),
            "epoch_seconds": [round(m.value, 1) for m in sorted(
                client.get_metric_history(run.info.run_id, "epoch_seconds"), key=lambda m: m.step)]})
    new, old = result["default"], result["baseline"]
    result["wall_ratio"] = round(new["wall_s"] / old["wall_s"], 3)
    result["test_gain"] = round(new["test_acc"] - old["test_acc"], 4)
    if new["test_acc_ngram"] is not None:
        result["mixed_over_term"] = round(new["test_acc"] - new["test_acc_ngram"], 4)
    result["aims"] = {"wall_ratio <= 0.35": result["wall_ratio"] <= 0.35,
                      "test_acc >= 0.915": new["test_acc"] >= 0.915,
                      "mixed_over_term >= 0.005": result.get("mixed_over_term", 0) >= 0.005}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
