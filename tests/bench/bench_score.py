"""Scoring speed and memory: ``sentiflow score`` end to end against the seed's step 10, same run.

The seed's way (``--baseline``, run in its own process): read the reviews, tokenize them one at a
time with the spaCy loop, look each token up in the vocabulary, build batches of 64 in input
order by hand (padded, packed by ``SentimentRNN.forward``), one forward pass per batch, write the
predictions. Ours: the ``sentiflow score`` command in a fresh process on a fresh data root (no
cache to hit), raw text Parquet in, predictions Parquet out, Prefect and MLflow start-up
included (after one unmeasured warm-up command, which creates Prefect's local database as a
user's first command does). Both load the same registered model; the benchmark checks they
agree.

The "scoring" ratio compares the work itself: the seed loop from reading the input to the
written file against the score stage's own time (``stats.json``). Peak memory is each process's
maximum resident set (``wait4``), at every input size: the input is the IMDb test reviews
repeated to the size (row groups of 5,000 rows). Prints JSON.

    .venv/bin/python tests/bench/bench_score.py --tracking-uri sqlite:///$PWD/data/mlflow.db \
        --sizes 25000 100000 --baseline-sizes 25000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LAST_CPU = [0.0, 0.0]  # the last command's CPU seconds, and the running total


def make_input(source: Path, n: int, out: Path, row_group: int = 5000) -> Path:
    table = pq.read_table(source, columns=["text", "label"])
    reps = -(-n // table.num_rows)
    parts = []
    for k in range(reps):
        t = table.slice(0, min(table.num_rows, n - k * table.num_rows))
        ids = pa.array([f"r{k}-{i}" for i in range(t.num_rows)])
        parts.append(t.add_column(0, "id", ids))
    pq.write_table(pa.concat_tables(parts), out, row_group_size=row_group)
    return out


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the process, its stdout. The CPU seconds of the process and
    its children (user + system) go to ``LAST_CPU``: on a shared machine, the wall time depends
    on what else runs; the CPU time much less."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU[0] = children.ru_utime + children.ru_stime - LAST_CPU[1]
    LAST_CPU[1] = children.ru_utime + children.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def baseline(model_uri: str, input_file: Path, out_file: Path) -> None:
    """The seed's step 10, as a process of its own."""
    import torch

    from sentiflow.storage.settings import Settings
    from sentiflow.storage.tracking import configure
    from sentiflow.tasks.data.tokenize import tokenize_text
    from sentiflow.tasks.scoring.serving import load_scorer, resolve_model

    configure(Settings())
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load_scorer(resolve_model(model_uri), Path(tmp))
    net, vocab, params = scorer.net.eval(), scorer.vocab, scorer.tokenize
    started = time.perf_counter()
    df = pq.read_table(input_file).to_pandas()
    probs = []
    with torch.no_grad():
        for start in range(0, len(df), 64):
            batch = [vocab(tokenize_text(t, params)) for t in df.text.iloc[start:start + 64]]
            lengths = torch.tensor([max(len(ids), 1) for ids in batch])
            text = torch.full((int(lengths.max()), len(batch)), vocab.pad_id, dtype=torch.long)
            for j, ids in enumerate(batch):
                text[:len(ids), j] = torch.tensor(ids, dtype=torch.long)
            probs.append(torch.sigmoid(net(text, lengths)).numpy())
    prob = np.concatenate(probs)
    pq.write_table(pa.table({"id": df.id.tolist(), "prob_pos": prob.astype(np.float32),
                             "pred": (prob > 0.5).astype(np.int8)}), out_file)
    print(json.dumps({"core_seconds": time.perf_counter() - started}))


def scoring_arguments() -> argparse.ArgumentParser:
    """The options the scoring benchmarks share: model, store, input and sizes, workers."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models:/sentiflow@champion")
    ap.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'data' / 'mlflow.db'}")
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "imdb" / "test.parquet"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    ap.add_argument("--workers", type=int, default=0)
    return ap


def main() -> None:
    ap = scoring_arguments()
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[25_000])
    ap.add_argument("--baseline", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if args.baseline:
        baseline(args.model, Path(args.baseline[0]), Path(args.baseline[1]))
        return

    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri, "PREFECT_HOME": tempfile.mkdtemp()}
    results = {"model": args.model, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp = Path(tmp)
        # not measured: the first command on a new PREFECT_HOME creates Prefect's database
        warm = make_input(Path(args.source), 100, tmp / "warm.parquet")
        run_measured([sys.executable, "-m", "sentiflow.flows.cli", "score", "--model", args.model, "--source", str(warm),
                      "--data-root", str(tmp / "data-warm")], env)
        for n in sorted(set(args.sizes) | set(args.baseline_sizes)):
            src = make_input(Path(args.source), n, tmp / f"reviews-{n}.parquet")
            row: dict = {}
            if n in args.sizes:
                out = tmp / f"ours-{n}.parquet"
                cmd = [sys.executable, "-m", "sentiflow.flows.cli", "score", "--model", args.model, "--source", str(src),
                       "--out", str(out), "--data-root", str(tmp / f"data-{n}"), "--workers", str(args.workers)]
                seconds, rss, _ = run_measured(cmd, env)
                stats = json.loads(next((tmp / f"data-{n}" / "score").glob("*/stats.json")).read_text())
                assert pq.read_metadata(out).num_rows == n
                row["sentiflow"] = {"seconds": round(seconds, 2), "cpu_seconds": round(LAST_CPU[0], 1),
                                    "load": round(os.getloadavg()[0], 1), "reviews_per_s": round(n / seconds, 1),
                                    "scoring_seconds": round(stats["seconds"], 2),
                                    "scoring_reviews_per_s": round(n / stats["seconds"], 1),
                                    "peak_rss_mb": round(rss)}
            if n in args.baseline_sizes:
                out_b = tmp / f"seed-{n}.parquet"
                seconds, rss, out_text = run_measured([sys.executable, __file__, "--model", args.model,
                                                       "--tracking-uri", args.tracking_uri,
                                                       "--baseline", str(src), str(out_b)], env)
                core = json.loads(out_text.strip().splitlines()[-1])["core_seconds"]
                row["seed_step10"] = {"seconds": round(seconds, 2), "cpu_seconds": round(LAST_CPU[0], 1),
                                      "load": round(os.getloadavg()[0], 1), "reviews_per_s": round(n / seconds, 1),
                                      "core_seconds": round(core, 2), "peak_rss_mb": round(rss)}
                if "sentiflow" in row:
                    a, b = pq.read_table(out), pq.read_table(out_b)
                    diff = np.abs(a["prob_pos"].to_numpy() - b["prob_pos"].to_numpy())
                    row["max_abs_prob_diff"] = float(diff.max())
                    row["pred_agreement"] = float((a["pred"].to_numpy() == b["pred"].to_numpy()).mean())
                    row["speedup_end_to_end"] = round(row["seed_step10"]["seconds"] / row["sentiflow"]["seconds"], 2)
                    # reading, tokenizing, scoring and writing only: no imports, model loading or
                    # Prefect/MLflow bookkeeping on either side
                    row["speedup_scoring"] = round(core / row["sentiflow"]["scoring_seconds"], 2)
            results["sizes"][n] = row
            print(json.dumps({n: row}), file=sys.stderr)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
