"""Peak memory of the training stage at 1× and 4× the data, each in a fresh process.

The training stage function (``sentiflow.tasks.training.train.train``: reading the encoded shards, the
epochs, evaluation, checkpoints and metrics to MLflow) runs with the pipeline's default
configuration on IMDb's encoded train/val splits (1×), then on a train split made of IMDb's train
shards repeated 4 times (4×, a stage folder in a temporary data root). Each run is a new Python
process that reports its own peak RSS (``getrusage``: ``ru_maxrss``). Prints JSON.

    sentiflow prepare --source ../shared/data/imdb --data-root data
    .venv/bin/python tests/bench/bench_train_memory.py --data-root data --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    import resource

    current = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
    return current / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: dict) -> None:
    """One training in this process; prints one JSON line."""
    _, at_start = rss_mb()
    import mlflow  # noqa: F401  (imported first, as the training does)
    from mlflow.tracking import MlflowClient

    from sentiflow.flows.train_flow import TrainFlowConfig
    from sentiflow.storage.settings import Settings
    from sentiflow.storage.store import StageRef
    from sentiflow.tasks.training.train import TrainConfig, train

    imports, _ = rss_mb()
    flow = TrainFlowConfig()
    config = TrainConfig(model=flow.model, train=flow.train.model_copy(update={"max_epochs": args["epochs"]}))
    settings = Settings(data_root=args["data_root"], tracking_uri=f"sqlite:///{args['tmp']}/mlflow.db",
                        experiment="bench")
    refs = [StageRef(**r) for r in args["refs"]]
    t0 = time.perf_counter()
    result = train(config, *refs, None, settings)
    seconds = time.perf_counter() - t0
    history = MlflowClient(settings.resolved_tracking_uri).get_metric_history(result.run_id, "val_acc")
    _, peak = rss_mb()
    print(json.dumps({"peak_rss_mb": round(peak), "rss_after_imports_mb": round(imports),
                      "seconds": round(seconds, 1), "val_acc": [round(m.value, 4) for m in history],
                      "config": config.train.model_dump(mode="json")}))


def run_child(args: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeated(train_ref, times: int, root: Path):
    """A copy of the encode stage ``train_ref`` with its shards repeated ``times`` times."""
    from sentiflow.storage.store import Store

    store = Store(root)
    ref = store.ref("encode", f"{train_ref.key}-x{times}")
    with store.build(ref, {"repeated": times}, [train_ref.key]) as out:
        shards = train_ref.shards()
        for k in range(times):
            for i, shard in enumerate(shards):
                shutil.copyfile(shard, out / f"part-{k * len(shards) + i:05d}.parquet")
    return ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    sys.path.insert(0, str(ROOT))
    from tests.bench.bench_train import encoded_part, vocab_of

    root = Path(args.data_root).resolve()
    train_ref, val_ref = encoded_part(root, "train"), encoded_part(root, "val")
    vocab_ref = vocab_of(root, train_ref)
    out = {"epochs": args.epochs, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-train-memory-") as tmp:
        for scale in args.scales:
            data_root = Path(tmp) / f"x{scale}"
            ref = train_ref if scale == 1 else repeated(train_ref, scale, data_root)
            data_root.mkdir(exist_ok=True)
            run = run_child({"epochs": args.epochs, "data_root": str(data_root), "tmp": str(data_root),
                             "refs": [r.model_dump(mode="json") for r in (ref, val_ref, vocab_ref)]})
            out["runs"][f"{scale}x"] = {"train_reviews": 20000 * scale, **run}
            print(json.dumps({f"{scale}x": out["runs"][f"{scale}x"]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
