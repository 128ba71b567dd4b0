"""Training speed: the training task's epoch against a seed-style loop, in the same run. Prints JSON.

The seed-style loop is the demo's: random (unbucketed) batches of 64, packed sequences through
``SentimentRNN.forward``, PyTorch's default CPU settings, Adam. The training task's loop is
``sentiflow.tasks.training.train.fit_epoch`` with ``tune_cpu``: length-bucketed batches, the unpacked
fast path, flushed denormals. Both train the same freshly seeded model (``--model``: ModelParams
fields as JSON over the seed's model, the training preset ``seed``). Two figures:

* ``per_epoch`` (the headline): one epoch of the whole proper-train split. The training task's is
  timed: the split loaded and trained as ``sentiflow train`` does (memory-mapped
  ``Encoded.from_shards``, ``fit_epoch``, epoch 1 of a fresh model). The seed-style loop's is
  extrapolated from its time per review on the subset (a full epoch takes ~45 min): its batches
  are random draws of 64 reviews, so their padded lengths, hence its cost per review, do not
  depend on how many reviews it draws from. The training task's do: bucketing sorts each pool
  of 50 batches by length, so a small set fills its batches worse.
* ``same_subset``: both loops on the same ``--subset`` random training reviews for ``--epochs``
  epochs: time per review and val_acc (equal or better accuracy, not only speed).

All models are scored on the same validation reviews. Timings on a shared machine are noisy:
``load_avg`` records the 1-minute load average before and after, and each figure comes as wall
time and as the process's CPU time (``cpu_``), which other processes inflate far less (with
``--threads 1``; with more threads it counts OpenMP's spin-waiting too).

    .venv/bin/python tests/bench/bench_train.py --data-root data --subset 2000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sentiflow.flows.presets import PRESETS, nested  # noqa: E402
from sentiflow.storage.store import StageRef, Store  # noqa: E402
from sentiflow.tasks.core.inference import Encoded, forward_fn  # noqa: E402
from sentiflow.tasks.data.vocab import Vocab  # noqa: E402
from sentiflow.tasks.training.train import TrainConfig, build_model, evaluate, fit_epoch, tune_cpu  # noqa: E402

CPU = torch.device("cpu")


def encoded_part(root: Path, part: str) -> StageRef:
    """The newest ``encode`` stage of ``part`` (train, val): its ``tokenize`` input names the split part."""
    store = Store(root)
    for r in sorted(store.list(), key=lambda r: r["created"], reverse=True):
        if r["stage"] == "encode":
            ref = store.ref("encode", r["key"])
            tokenize = store.ref(*ref.manifest()["inputs"][0].split("/"))
            if tokenize.manifest()["inputs"][0].endswith(f":{part}"):
                return ref
    raise SystemExit(f"no encoded {part} part under {root}: run `sentiflow prepare` first")


def vocab_of(root: Path, encoded: StageRef) -> StageRef:
    """The vocabulary an encoded part was encoded with (an input of its shards)."""
    shard = Store(root).ref(*encoded.manifest()["inputs"][1].split("/"))
    return Store(root).ref(*next(i for i in shard.manifest()["inputs"] if i.startswith("vocab/")).split("/"))


def task_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The training task's optimizer, as ``sentiflow.tasks.training.train._train`` builds it."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                            lr=config.train.lr, weight_decay=config.train.weight_decay)


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


def clock() -> np.ndarray:
    """(wall, process CPU) seconds."""
    return np.array([time.perf_counter(), time.process_time()])


def task_epochs(vocab: Vocab, config: TrainConfig, data: Encoded, epochs: int):
    """A fresh model trained by ``fit_epoch`` for ``epochs`` epochs: (model, (wall, CPU) s per epoch)."""
    model, _ = build_model(vocab, config)
    opt = task_optimizer(model, config)
    forward = forward_fn(model, CPU, config.train.path)
    t0 = clock()
    for epoch in range(1, epochs + 1):
        fit_epoch(model, data, config.train, epoch, opt, forward, CPU, vocab.pad_id)
    return model, (clock() - t0) / epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both loops (0: PyTorch's default)")
    ap.add_argument("--model", default="{}", help="ModelParams fields as JSON, e.g. '{\"head\": \"last+max\"}'")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    seed = nested(PRESETS["seed"])  # the seed's model and training, as the bench has always measured
    config = TrainConfig.model_validate({"model": {**seed["model"], **json.loads(args.model)}, "train": seed["train"]})
    train_ref = encoded_part(root, "train")
    vocab = Vocab.read(vocab_of(root, train_ref).file("vocab.parquet"))
    rng = np.random.default_rng(0)
    train_table = train_ref.read_shards(["id", "label", "ids"])
    subset = Encoded.from_table(train_table.take(rng.permutation(train_table.num_rows)[: args.subset]))
    val = Encoded.from_table(encoded_part(root, "val").read_shards(["id", "label", "ids"]).slice(0, args.val))
    n_train = train_table.num_rows
    del train_table
    acc = lambda model: round(evaluate(model, val, 64, model.forward_fast, CPU, vocab.pad_id)[1], 4)
    out = {"train_split_reviews": n_train, "subset": len(subset), "epochs": args.epochs, "val_reviews": len(val),
           "threads": torch.get_num_threads(), "load_avg": [round(os.getloadavg()[0], 2)],
           "config": config.model_dump(mode="json")}

    # seed-style: PyTorch defaults (denormals not flushed), packed, random batches, on the subset
    torch.set_flush_denormal(False)
    seed_model, _ = build_model(vocab, config)
    seed_model.optimizer = torch.optim.Adam(seed_model.parameters(), lr=config.train.lr)
    t0 = clock()
    for epoch in range(args.epochs):
        seed_style_epoch(seed_model, subset, np.random.default_rng(epoch), vocab.pad_id)
    seed_s = (clock() - t0) / args.epochs
    tune_cpu()  # from here on, the training task's settings
    seed_acc = acc(seed_model)

    # the training task on the same subset, then one epoch of the whole split as `sentiflow train` runs it
    sub_model, sub_s = task_epochs(vocab, config, subset, args.epochs)
    sub_acc = acc(sub_model)
    with tempfile.TemporaryDirectory() as tmp:
        train = Encoded.from_shards(train_ref.shards(), config.train.max_len, mmap_dir=tmp)
        full_model, full_s = task_epochs(vocab, config, train, 1)
    full_acc = acc(full_model)

    per_review = lambda s, n: [round(1000 * x / n, 3) for x in s]  # (wall, CPU) ms per review
    out["load_avg"].append(round(os.getloadavg()[0], 2))
    out["per_epoch"] = {
        "seed_style_measured_on": f"{len(subset)} reviews x {args.epochs} epochs, extrapolated to {n_train}",
        "seed_style_ms_per_review": per_review(seed_s, len(subset)),
        "seed_style_epoch_seconds": [round(x * n_train / len(subset), 1) for x in seed_s],
        "training_task_ms_per_review": per_review(full_s, n_train),
        "training_task_epoch_seconds": [round(x, 2) for x in full_s],
        "training_task_val_acc_after_1_epoch": full_acc,
        "speedup": [round(x, 1) for x in seed_s / len(subset) / (full_s / n_train)],
    }
    out["same_subset"] = {
        "seed_style": {"ms_per_review": per_review(seed_s, len(subset)), "val_acc": seed_acc},
        "training_task": {"ms_per_review": per_review(sub_s, len(subset)), "val_acc": sub_acc},
        "speedup": [round(x, 1) for x in seed_s / sub_s],
    }
    out["units"] = "[wall, CPU] pairs"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    main()
