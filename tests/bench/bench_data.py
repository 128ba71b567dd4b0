"""Benchmark of the data stages on a full source (default: ../shared/data/imdb). Prints JSON.

* the whole flow cold and warm (one task per shard for tokenize and encode);
* the tokenize stage's tokens/s against a single-process loop of the same spaCy tokenizer,
  measured in the same run, with a check that both give identical tokens;
* the encode stage's tokens/s.

    .venv/bin/python tests/bench/bench_data.py --source ../shared/data/imdb
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

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prefect import flow  # noqa: E402

from sentiflow.flows.data_flow import DataConfig, prepare_data  # noqa: E402
from sentiflow.tasks.data import encode as encode_stage  # noqa: E402
from sentiflow.tasks.data import tokenize as tokenize_stage  # noqa: E402
from sentiflow.tasks.data.ingest import read_part  # noqa: E402
from sentiflow.tasks.data.tokenize import TokenizeParams, tokenize_text  # noqa: E402


@flow
def _warm_up() -> None:
    """Start Prefect's ephemeral server before timing anything."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="../shared/data/imdb")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sentiflow-bench-"))
    config = DataConfig(source=args.source)
    _warm_up()

    t0 = time.perf_counter()
    cold = prepare_data(config=config, data_root=str(root), workers=args.workers)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = prepare_data(config=config, data_root=str(root), workers=args.workers)
    warm_s = time.perf_counter() - t0
    assert set(warm.states.values()) == {"Cached"}, warm.states

    stage_s = {name: ref.manifest()["seconds"] for name, ref in cold.refs().items()}

    # tokenize and encode, the plain stage functions (every shard, then gathered) into a fresh
    # root, against a plain single-process loop over the same reviews
    sources = {"train": cold.split, "val": cold.split, "test": cold.ingest}
    params = TokenizeParams()
    fresh = Path(tempfile.mkdtemp(prefix="sentiflow-bench-stages-"))
    workers = args.workers or os.cpu_count()
    t0 = time.perf_counter()
    tokens = {p: tokenize_stage.run(params, src, p, fresh, workers=workers) for p, src in sources.items()}
    tok_stage_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in sources:
        encode_stage.run(tokens[p], cold.vocab, fresh)
    enc_s = time.perf_counter() - t0
    texts = [t for p, src in sources.items() for t in read_part(src.path, p).column("text").to_pylist()]
    tokenize_text("warm up")
    t0 = time.perf_counter()
    loop_tokens = [tokenize_text(t, params) for t in texts]
    loop_s = time.perf_counter() - t0
    stage_tokens = [t for part in sources for t in tokens[part].read_shards(["tokens"]).column("tokens").to_pylist()]
    n_tokens = sum(map(len, loop_tokens))

    # the same warm run as a user types it: a new process (imports + Prefect's ephemeral server)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", "prepare", "--source", args.source,
                    "--data-root", str(root)], check=True, capture_output=True)
    cli_warm_s = time.perf_counter() - t0

    print(json.dumps({
        "source": args.source,
        "cores": os.cpu_count(),
        "rows": {p: r.manifest()["total_rows"] for p, r in cold.encoded.items()},
        "cold_stage_seconds_ingest_split_vocab": {k: round(v, 2) for k, v in stage_s.items()
                                                  if k in ("ingest", "split", "vocab")},
        "cold_flow_seconds": round(cold_s, 2),
        "warm_flow_seconds": round(warm_s, 2),
        "warm_over_cold": round(warm_s / cold_s, 4),
        "warm_cli_seconds_incl_startup": round(cli_warm_s, 2),
        "tokenize": {
            "tokens": n_tokens,
            "identical_to_loop": stage_tokens == loop_tokens,
            "stage_seconds": round(tok_stage_s, 2),
            "loop_seconds": round(loop_s, 2),
            "stage_tokens_per_s": round(n_tokens / tok_stage_s),
            "loop_tokens_per_s": round(n_tokens / loop_s),
            "speedup": round(loop_s / tok_stage_s, 2),
        },
        "encode": {"tokens": n_tokens, "seconds": round(enc_s, 3),
                   "tokens_per_s": round(n_tokens / enc_s)},
    }, indent=2))


if __name__ == "__main__":
    main()
