"""One huge review against ordinary ones: the peak memory of scoring a file that holds a single
review of ``--mb`` MB, and of a file of the same size holding ordinary reviews (the baseline,
measured in the same run), for each format. Prints JSON with both peaks and their ratio.

What runs: the score stage's core (``sentiflow.tasks.scoring.score.score``: read in batches,
check, tokenize and encode in a tokenizer process, judge and score, write predictions), what
``sentiflow score`` runs, in a fresh process each time, with ``--workers`` cores; without Prefect
and MLflow, whose memory is the same in both cases (the ratio would only look better with them).
The model: an untrained network of the pipeline's default shape (``ModelParams()``) over a
25,002-token vocabulary of IMDb's commonest words, and ``--max-len`` (default None, the training
default: the network reads every kept token). Its weights change no figure here.

The inputs, made from the IMDb test reviews: the huge review is the reviews joined by spaces to
``--mb`` MB (one line of a text file; one row of Parquet, written by pyarrow's defaults); the
ordinary file is the reviews one per line, or one per Parquet row (row groups of 5,000 rows, as
``bench_score.make_input`` writes them), repeated to the same size, or to each of the sizes
``--ordinary-mb`` names. A Parquet file whose row group holds values averaging far past the
budget is refused from its footer (``score_sources.refuse_long_values``): its row gives the
message (``refused``) and the memory it took to say so. Scoring streams, so an ordinary file's peak does not grow with its size
(compare the sizes' peaks: ``ordinary_growth``); the ratio is taken against the largest one. On
the shared 2-core machine ordinary reviews score at ~150 a second (1 GB: ~90 minutes a format),
hence the option.

How memory is counted (``bench_score_memory.measure``): ``tree_pss_mb``, the peak summed PSS of
the process and its tokenizer worker, sampled every 0.2 s (what the aim is judged on: a huge
review scores in at most 1.2x the ordinary file's peak); ``maxrss_mb``, the kernel's exact peak
RSS of the scoring process itself. The kernel carries a process's peak RSS across ``exec``, so a
command started by a big process reports at least that process's peak: the model and the inputs
are made by processes of their own (``--make``), and this one stays small.

    .venv/bin/python tests/bench/bench_long_review.py --mb 1000
    .venv/bin/python tests/bench/bench_long_review.py --mb 200 --formats txt   # a quick run
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
MB = 1 << 20


def imdb_texts() -> list[str]:
    return pq.read_table(IMDB / "test.parquet", columns=["text"]).column("text").to_pylist()


def write_model(folder: Path, max_len: int | None) -> Path:
    """config.json, vocab.parquet and weights.pt of an untrained default-shape model."""
    import torch

    from sentiflow.tasks.core.model import ModelParams, SentimentRNN
    from sentiflow.tasks.core.text import PAD, UNK, TokenizeParams, Vocab

    words = Counter(w for t in pq.read_table(IMDB / "train.parquet", columns=["text"]).column("text").to_pylist()
                    for w in t.lower().split())
    vocab = Vocab([UNK, PAD, *(w for w, _ in words.most_common(25_000))])
    torch.manual_seed(0)
    net = SentimentRNN(len(vocab), ModelParams(), pad_id=vocab.pad_id)
    folder.mkdir(parents=True, exist_ok=True)
    vocab.write(folder / "vocab.parquet")
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({"model": ModelParams().model_dump(),
                                                    "tokenize": TokenizeParams().model_dump(), "max_len": max_len}))
    return folder


def _pieces(texts: list[str], size: int, sep: str):
    """IMDb reviews, repeated, each followed by ``sep``, until ``size`` bytes (the last one cut)."""
    left = size
    while left > 0:
        for t in texts:
            b = (t + sep).encode()
            if len(b) >= left:
                yield b[:left].decode(errors="ignore")
                return
            left -= len(b)
            yield t + sep


def make_huge(folder: Path, fmt: str, mb: int, texts: list[str]) -> Path:
    """A file of ``mb`` MB holding one review, in format ``fmt``."""
    size = mb * MB
    huge = folder / f"huge-{mb}.{fmt}"
    if fmt == "txt":
        with open(huge, "w") as f:
            f.writelines(_pieces(texts, size - 1, " "))
            f.write("\n")
        return huge
    raw = folder / "huge.raw"
    with open(raw, "w") as f:
        f.writelines(_pieces(texts, size, " "))
    data = pa.py_buffer(raw.read_bytes())  # one string value over these bytes, not copied
    offsets = pa.array([0, data.size], pa.int32()).buffers()[1]
    pq.write_table(pa.table({"id": ["huge"], "text": pa.Array.from_buffers(pa.string(), 1, [None, offsets, data])}),
                   huge)
    del data
    raw.unlink()
    return huge


def make_ordinary(folder: Path, fmt: str, mb: int, texts: list[str]) -> Path:
    """A file of ``mb`` MB of ordinary reviews, in format ``fmt``."""
    size = mb * MB
    ordinary = folder / f"ordinary-{mb}.{fmt}"
    if fmt == "txt":
        with open(ordinary, "w") as f:
            f.writelines(_pieces(texts, size, "\n"))
        return ordinary
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(ordinary, schema) as writer:
        rows: list[str] = []
        for piece in _pieces(texts, size, ""):
            rows.append(piece)
            if len(rows) == 5000:
                writer.write_table(pa.table({"id": [f"r{i}" for i in range(len(rows))], "text": rows}, schema))
                rows = []
        if rows:
            writer.write_table(pa.table({"id": [f"r{i}" for i in range(len(rows))], "text": rows}, schema))
    return ordinary


def child(source: str, out: str, model: str, workers: int) -> None:
    """The measured process: score ``source`` into ``out`` as the score stage does."""
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.data.reviews import SourceError
    from sentiflow.tasks.scoring.score import ScoreParams, score

    m = Path(model)
    scorer = Scorer.from_files(m / "config.json", m / "vocab.parquet", m / "weights.pt")
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        stats = score(scorer, source, Path(out), ScoreParams(), workers=workers)
    except SourceError as e:  # a Parquet row group of huge values: refused from the footer
        (Path(out) / "refused.txt").write_text(str(e))
        print(json.dumps({"refused": str(e)}))
        return
    print(json.dumps({"rows": stats.rows, "cut": stats.cut, "statuses": stats.statuses,
                      "score_seconds": round(stats.seconds, 1)}))


def run_case(path: Path, out: Path, model: Path, workers: int) -> dict:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", str(path), str(out), str(model), str(workers)]
    row = measure(cmd, env)
    if (out / "refused.txt").exists():
        row["refused"] = (out / "refused.txt").read_text()
    else:
        row["stats"] = json.loads((out / "stats.json").read_text())
        row["stats"] = {k: row["stats"][k] for k in ("rows", "cut", "statuses", "seconds")}
    row["file_mb"] = round(path.stat().st_size / MB, 1)
    return row


def make(what: str, folder: str, fmt: str, mb: int, max_len: str) -> None:
    """In a process of its own: the model, or one input file."""
    folder_ = Path(folder)
    if what == "model":
        write_model(folder_, None if max_len == "None" else int(max_len))
    else:
        (make_huge if what == "huge" else make_ordinary)(folder_, fmt, mb, imdb_texts())


def _made(what: str, folder: Path, fmt: str = "-", mb: int = 0, max_len: int | None = None) -> None:
    subprocess.run([sys.executable, __file__, "--make", what, str(folder), fmt, str(mb), str(max_len)],
                   check=True, cwd=ROOT)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        make(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1000, help="size of the huge review and of the ordinary file")
    ap.add_argument("--ordinary-mb", type=int, nargs="+", default=None,
                    help="sizes of the ordinary files (default: --mb)")
    ap.add_argument("--formats", nargs="+", default=["txt", "parquet"], choices=["txt", "parquet"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=None)
    ap.add_argument("--tmp", default=None, help="folder for the inputs (default: a temporary one)")
    args = ap.parse_args()

    ordinary_mb = sorted(args.ordinary_mb or [args.mb])
    results: dict = {"mb": args.mb, "ordinary_mb": ordinary_mb, "workers": args.workers, "max_len": args.max_len,
                     "cpus": os.cpu_count(), "formats": {}}
    with tempfile.TemporaryDirectory(prefix="bench-long-review-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        _made("model", model, max_len=args.max_len)
        for fmt in args.formats:
            rows = {}
            for mb in ordinary_mb:
                _made("ordinary", tmp, fmt, mb)
                path = tmp / f"ordinary-{mb}.{fmt}"
                rows[f"ordinary_{mb}mb"] = run_case(path, tmp / f"out-{fmt}-ordinary-{mb}", model, args.workers)
                path.unlink()
                print(json.dumps({fmt: {f"ordinary_{mb}mb": rows[f"ordinary_{mb}mb"]}}), file=sys.stderr, flush=True)
            _made("huge", tmp, fmt, args.mb)
            path = tmp / f"huge-{args.mb}.{fmt}"
            rows[f"huge_{args.mb}mb"] = huge = run_case(path, tmp / f"out-{fmt}-huge", model, args.workers)
            path.unlink()
            print(json.dumps({fmt: {f"huge_{args.mb}mb": huge}}), file=sys.stderr, flush=True)
            keys = ("tree_pss_mb", "tree_rss_mb", "maxrss_mb")
            small, large = rows[f"ordinary_{ordinary_mb[0]}mb"], rows[f"ordinary_{ordinary_mb[-1]}mb"]
            if len(ordinary_mb) > 1:
                rows["ordinary_growth"] = {k: round(large[k] / small[k], 3) for k in keys}
            rows["ratio_huge_to_ordinary"] = {k: round(huge[k] / large[k], 3) for k in keys}
            results["formats"][fmt] = rows
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
