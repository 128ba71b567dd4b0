"""The gate on a large labelled source: the peak memory of judging a challenger against a
champion on ``--rows`` rows (default 10,000,000) and, in the same run, on ``--baseline-rows``
(default 100,000), each in a fresh process. Prints JSON with both peaks and their ratio: the
gate streams its rows (``gate.source_rows``: ``GATE_BATCH_ROWS`` at a time), so the ratio stays
near 1 whatever the size.

What runs: ``sentiflow.tasks.release.gate.judge`` with a challenger and a champion (both
scored on every row: no ``challenger_acc`` given), what selection runs after training, without
MLflow (the champion is given as loaded). The rows: short reviews (IMDb test reviews' first
eight words, with their labels, repeated), written as Parquet in row groups of 100,000; short
so that 10 M rows score in minutes on two cores. The models: two small networks (embedding and
hidden size 16) over IMDb's 5,000 commonest words; their weights change no memory figure.

Memory is counted as ``bench_score_memory.measure`` counts it (``tree_pss_mb``: the peak summed
PSS of the process tree, sampled every 0.2 s; ``maxrss_mb``: the kernel's peak RSS). The inputs
are made by a process of its own (the kernel carries a peak RSS across ``exec``).

    .venv/bin/python tests/bench/bench_gate_rows.py                 # 10 M rows: ~15 min on 2 cores
    .venv/bin/python tests/bench/bench_gate_rows.py --rows 1000000  # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pyarrow as pa
import pyarrow.parquet as pq

from tests.bench.bench_score_memory import measure

IMDB = ROOT.parent / "shared" / "data" / "imdb"
GROUP = 100_000


def make_rows(path: Path, rows: int) -> None:
    """``rows`` short labelled reviews: IMDb test reviews' first eight words, repeated."""
    table = pq.read_table(IMDB / "test.parquet", columns=["text", "label"])
    texts = [" ".join(t.split()[:8]) for t in table.column("text").to_pylist()]
    labels = table.column("label").to_pylist()
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            pick = [(start + i) % len(texts) for i in range(n)]
            writer.write_table(pa.table({"id": [f"r{start + i}" for i in range(n)],
                                         "text": [texts[i] for i in pick], "label": [labels[i] for i in pick]},
                                        schema))


def make_model(folder: Path, seed: int) -> None:
    """config.json, vocab.parquet and weights.pt of a small untrained network."""
    import torch

    from sentiflow.tasks.core.model import ModelParams, SentimentRNN
    from sentiflow.tasks.core.text import PAD, UNK, TokenizeParams, Vocab

    words = Counter(w for t in pq.read_table(IMDB / "train.parquet", columns=["text"]).column("text").to_pylist()
                    for w in t.lower().split())
    vocab = Vocab([UNK, PAD, *(w for w, _ in words.most_common(5_000))])
    params = ModelParams(embed_dim=16, hidden_dim=16)
    torch.manual_seed(seed)
    net = SentimentRNN(len(vocab), params, pad_id=vocab.pad_id)
    folder.mkdir(parents=True, exist_ok=True)
    vocab.write(folder / "vocab.parquet")
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({"model": params.model_dump(),
                                                    "tokenize": TokenizeParams().model_dump(), "max_len": None}))


def child(source: str, challenger: str, champion: str) -> None:
    """The measured process: the gate's judgement on ``source``."""
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.release.gate import Champion, judge, source_rows

    def load(folder: str) -> Scorer:
        m = Path(folder)
        return Scorer.from_files(m / "config.json", m / "vocab.parquet", m / "weights.pt")

    theirs = Champion(version="1", scorer=load(champion), vocab=Path(champion) / "vocab.parquet")
    verdict = judge(load(challenger), Path(challenger) / "vocab.parquet", source_rows(source), theirs, margin=0.0)
    Path(source + ".verdict.json").write_text(json.dumps(verdict.main.model_dump()))


def _made(*args: str) -> None:
    subprocess.run([sys.executable, __file__, "--make", *args], check=True, cwd=ROOT)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        what, path, n = sys.argv[2:5]
        make_rows(Path(path), int(n)) if what == "rows" else make_model(Path(path), int(n))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    ap.add_argument("--tmp", default=None, help="folder for the inputs (default: a temporary one)")
    args = ap.parse_args()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    results: dict = {"cpus": os.cpu_count(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gate-rows-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        _made("model", str(tmp / "challenger"), "1")
        _made("model", str(tmp / "champion"), "2")
        for n in (args.baseline_rows, args.rows):
            src = tmp / f"gate-{n}.parquet"
            _made("rows", str(src), str(n))
            row = measure([sys.executable, __file__, "--child", str(src), str(tmp / "challenger"),
                           str(tmp / "champion")], env)
            row.pop("peak_pss_mb_by_process", None)
            row["file_mb"] = round(src.stat().st_size / (1 << 20), 1)
            row["judged"] = json.loads(Path(f"{src}.verdict.json").read_text())
            src.unlink()
            results["sizes"][n] = row
            print(json.dumps({n: row}), file=sys.stderr, flush=True)
        small, large = results["sizes"][args.baseline_rows], results["sizes"][args.rows]
        results["ratio"] = {k: round(large[k] / small[k], 3) for k in ("tree_pss_mb", "maxrss_mb")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
