"""Training on a GPU: epoch time, GPU memory and reviews per second of the training task's loop.

The same code as ``sentiflow train`` on CUDA: the encoded shards read through the memory-mapped
reader (``Encoded.from_shards(..., mmap_dir=...)``), token-capped bucketed batches
(``fit_epoch``), the packed forward (cuDNN) under float16 autocast with loss scaling, the
pipeline's default model. Data: the newest encoded IMDb train/val stages under ``--data-root``
(``sentiflow prepare`` makes them), or with ``--synthetic N`` N random reviews of IMDb-like
lengths. Prints one JSON object; without CUDA it prints ``{"skipped": true, ...}`` and exits 0.

    .venv/bin/python tests/bench/bench_train_gpu.py --data-root data --epochs 2
    .venv/bin/python tests/bench/bench_train_gpu.py --synthetic 20000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402


def synthetic_shards(folder: Path, n: int, vocab_size: int, seed: int, shard_rows: int = 2500) -> list[Path]:
    """``n`` reviews, lengths log-normal like IMDb's (median ~210, up to 2,800 tokens); each token
    is random, one in 20 drawn from 50 words of the review's label."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(5.35, 0.65, n), 5, 2800).astype(np.int64)
    labels = rng.integers(0, 2, n)
    paths = []
    for start in range(0, n, shard_rows):
        rows = range(start, min(start + shard_rows, n))
        ids = []
        for r in rows:
            tokens = rng.integers(102, vocab_size, lengths[r])
            marked = rng.random(lengths[r]) < 0.05
            tokens[marked] = rng.integers(2, 52, marked.sum()) + 50 * labels[r]
            ids.append(tokens.astype(np.int32))
        table = pa.table({"id": [f"s{r}" for r in rows], "label": pa.array(labels[list(rows)], pa.int8()),
                          "ids": pa.array(ids, pa.list_(pa.int32())),
                          "length": pa.array(lengths[list(rows)], pa.int32())})
        paths.append(folder / f"part-{len(paths):05d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--synthetic", type=int, default=0, help="N random reviews instead of the stored IMDb stages")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-batch-tokens", type=int)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": True, "reason": "no CUDA device (torch.cuda.is_available() is False)",
                          "torch": torch.__version__}))
        return 0

    from sentiflow.flows.train_flow import TrainFlowConfig
    from sentiflow.tasks.core.inference import Encoded, forward_fn
    from sentiflow.tasks.core.text import Vocab
    from sentiflow.tasks.training.train import (
        TrainConfig,
        build_model,
        evaluate,
        fit_epoch,
        grad_scaler,
        pick_device,
    )

    flow = TrainFlowConfig()
    update = {"device": "cuda", "max_epochs": args.epochs,
              **{k: v for k, v in (("batch_size", args.batch_size), ("max_batch_tokens", args.max_batch_tokens))
                 if v is not None}}
    config = TrainConfig(model=flow.model, train=flow.train.model_copy(update=update))
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            vocab = Vocab(["<unk>", "<pad>"] + [f"w{i}" for i in range(25000)])
            (tmp / "train").mkdir(), (tmp / "val").mkdir()
            train_shards = synthetic_shards(tmp / "train", args.synthetic, len(vocab), seed=1)
            val_shards = synthetic_shards(tmp / "val", max(args.synthetic // 4, 1), len(vocab), seed=2)
            source = f"synthetic ({args.synthetic} train reviews)"
        else:
            from tests.bench.bench_train import latest

            root = Path(args.data_root)
            train_ref, val_ref = latest(root, "encode", 20000), latest(root, "encode", 5000)
            vocab = Vocab.read(latest(root, "vocab", None).file("vocab.parquet"))
            train_shards, val_shards = train_ref.shards(), val_ref.shards()
            source = f"IMDb encoded stages under {root}"
        train = Encoded.from_shards(train_shards, config.train.max_len, mmap_dir=tmp)
        val = Encoded.from_shards(val_shards, config.train.max_len, mmap_dir=tmp)

        device = pick_device(config.train)
        model, _ = build_model(vocab, config)
        model.to(device)
        forward = forward_fn(model, device, config.train.path)
        scaler = grad_scaler(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        epochs = []
        for epoch in range(1, args.epochs + 1):
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_loss, train_acc = fit_epoch(model, train, config.train, epoch, optimizer, forward, device,
                                              vocab.pad_id, scaler)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            _, val_acc, _ = evaluate(model, val, config.train.batch_size, forward, device, vocab.pad_id)
            epochs.append({"epoch": epoch, "seconds": round(seconds, 2),
                           "reviews_per_s": round(len(train) / seconds),
                           "train_loss": round(train_loss, 4), "train_acc": round(train_acc, 4),
                           "val_acc": round(val_acc, 4),
                           "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20),
                           "max_memory_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20)})
            print(json.dumps(epochs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "skipped": False, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "path": "packed (cuDNN)" if forward.__name__ == "forward" else "fast (unpacked)",
        "amp": "float16 autocast + GradScaler" if scaler is not None else "none",
        "data": source, "train_reviews": len(train), "val_reviews": len(val),
        "train": config.train.model_dump(mode="json"), "model": config.model.model_dump(mode="json"),
        "epochs": epochs, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
