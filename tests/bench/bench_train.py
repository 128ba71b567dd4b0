"""Training speed: the training task's epoch against a seed-style loop, same data, same run.

The seed-style loop is the demo's: random (unbucketed) batches of 64, packed sequences through
``SentimentRNN.forward``, PyTorch's default CPU settings. The training task's epoch is
``sentiflow.tasks.train.fit_epoch``: length-bucketed batches, the unpacked fast path, flushed denormals.
Both train the same freshly seeded model on the same subset for the same epochs and are scored on
the same validation reviews. Prints JSON.

    .venv/bin/python tests/bench/bench_train.py --data-root data --subset 2000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sentiflow.storage.store import Store  # noqa: E402
from sentiflow.tasks.inference import Encoded  # noqa: E402
from sentiflow.tasks.train import TrainConfig, build_model, evaluate, fit_epoch, tune_cpu  # noqa: E402
from sentiflow.tasks.vocab import Vocab  # noqa: E402


def latest(root: Path, stage: str, rows: int):
    """The newest stored stage folder of ``stage`` holding ``rows`` rows."""
    for r in sorted(Store(root).list(), key=lambda r: r["created"], reverse=True):
        if r["stage"] == stage and (rows is None or r["rows"] == rows):
            return Store(root).ref(stage, r["key"])
    raise SystemExit(f"no {stage} stage with {rows} rows under {root}: run `sentiflow prepare` first")


def seed_style_epoch(model, data: Encoded, rng, pad_id: int, batch_size: int = 64) -> None:
    """The demo's loop: shuffled batches of any lengths, packed, Adam, BCE with logits."""
    model.train()
    order = rng.permutation(len(data))
    for i in range(0, len(order), batch_size):
        text, lengths, labels = data.batch(order[i:i + batch_size], pad_id)
        model.optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(text, lengths), labels)
        loss.backward()
        model.optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.data_root)
    vocab = Vocab.read(latest(root, "vocab", None).file("vocab.parquet"))
    rng = np.random.default_rng(0)
    train_table = latest(root, "encode", 20000).read_shards(["id", "label", "ids"])
    val_table = latest(root, "encode", 5000).read_shards(["id", "label", "ids"])
    subset = Encoded.from_table(train_table.take(rng.permutation(train_table.num_rows)[: args.subset]))
    val = Encoded.from_table(val_table.slice(0, args.val))
    config = TrainConfig()
    cpu = torch.device("cpu")
    out = {"subset": args.subset, "epochs": args.epochs, "val_reviews": len(val), "threads": torch.get_num_threads(),
           "config": config.model_dump(mode="json")}

    # seed-style: PyTorch defaults (denormals not flushed), packed, random batches
    torch.set_flush_denormal(False)
    seed_model, _ = build_model(vocab, config)
    seed_model.optimizer = torch.optim.Adam(seed_model.parameters(), lr=config.train.lr)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        seed_style_epoch(seed_model, subset, np.random.default_rng(epoch), vocab.pad_id)
    seed_s = (time.perf_counter() - t0) / args.epochs
    tune_cpu()
    _, seed_acc, _ = evaluate(seed_model, val, 64, seed_model.forward_fast, cpu, vocab.pad_id)

    # the training task's epoch
    model, _ = build_model(vocab, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        fit_epoch(model, subset, config.train, epoch, opt, model.forward_fast, cpu, vocab.pad_id)
    ours_s = (time.perf_counter() - t0) / args.epochs
    _, ours_acc, _ = evaluate(model, val, 64, model.forward_fast, cpu, vocab.pad_id)

    per = lambda s: s / len(subset)
    out.update({
        "seed_style": {"epoch_seconds": round(seed_s, 2), "ms_per_review": round(1000 * per(seed_s), 2),
                       "est_full_epoch_seconds": round(per(seed_s) * 20000, 1), "val_acc": round(seed_acc, 4)},
        "training_task": {"epoch_seconds": round(ours_s, 2), "ms_per_review": round(1000 * per(ours_s), 2),
                          "est_full_epoch_seconds": round(per(ours_s) * 20000, 1), "val_acc": round(ours_acc, 4)},
        "speedup": round(seed_s / ours_s, 1),
    })
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    main()
