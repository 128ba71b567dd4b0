"""Exploring the mixed model (RNN + n-gram term) on prepared IMDb data, outside MLflow. Prints
one JSON line per epoch.

The loop is the training task's (``fit_epoch``, ``fit_ngrams``, ``out_of_fold_logits``,
``fit_mix``) on the encoded train/val/test parts of a data root (``sentiflow prepare`` first).
After each epoch, the averaged weights' RNN logits on validation and test, the mix fitted on
validation, and the accuracies of the RNN alone, the term alone and the mix on both splits.
Choices are made on validation; test is printed to learn, never to choose. ``--save PREFIX``
keeps each epoch's logits (``PREFIX-EPOCH.pt``) for trying other mixes offline.

    .venv/bin/python tests/bench/explore_hybrid.py --data-root /tmp/sfsweep \\
        --model '{"bidirectional": false}' --train '{"max_epochs": 4, "rnn_target": "residual"}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_train import encoded_part, vocab_of  # noqa: E402

from sentiflow.tasks.core.inference import Encoded, accuracy, forward_fn, predict_logits  # noqa: E402
from sentiflow.tasks.cpu import release_memory  # noqa: E402
from sentiflow.tasks.data.vocab import Vocab  # noqa: E402
from sentiflow.tasks.training.ngrams import fit_mix, fit_ngrams, ngram_logits, out_of_fold_logits  # noqa: E402
from sentiflow.tasks.training.schedule import WeightAverage  # noqa: E402
from sentiflow.tasks.training.train import TrainConfig, build_model, fit_epoch, tune_cpu  # noqa: E402

CPU = torch.device("cpu")


def tail(data: Encoded, n: int) -> Encoded:
    """The last ``n`` ids of each review."""
    keep = np.minimum(data.lengths, n)
    starts = data.offsets[1:] - keep
    index = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, keep)])
    return Encoded(data.flat[index], np.concatenate([[0], np.cumsum(keep)]).astype(np.int64), data.labels, data.ids)


def acc(logits: torch.Tensor, labels: np.ndarray) -> float:
    return round(accuracy(torch.sigmoid(logits).numpy(), labels), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("--model", default="{}", help="ModelParams fields as JSON")
    ap.add_argument("--train", default="{}", help="TrainParams fields as JSON")
    ap.add_argument("--rnn-max-len", type=int, default=0, help="the RNN reads this many ids of each review (0: all)")
    ap.add_argument("--tail", action="store_true", help="the last --rnn-max-len ids, not the first")
    ap.add_argument("--offset-scale", type=float, default=1.0,
                    help="the out-of-fold logits the residual RNN trains on, times this (1: as fitted)")
    ap.add_argument("--save", default="", help="keep each epoch's logits as PREFIX-EPOCH.pt")
    args = ap.parse_args()
    root = args.data_root
    parts = {name: encoded_part(root, name) for name in ("train", "val", "test")}
    vocab = Vocab.read(vocab_of(root, parts["train"]).file("vocab.parquet"))
    train, val, test = (Encoded.from_table(parts[n].read_shards(["label", "ids"])) for n in ("train", "val", "test"))
    config = TrainConfig.model_validate({"model": json.loads(args.model), "train": json.loads(args.train)})
    print(json.dumps({"config": config.model_dump(mode="json"), "rnn_max_len": args.rnn_max_len, "tail": args.tail,
                      "offset_scale": args.offset_scale}))
    tune_cpu()
    t0 = time.perf_counter()
    p, pad = config.train, vocab.pad_id
    model, _ = build_model(vocab, config)
    offset = term_val = term_test = None
    if config.model.ngrams:
        fit_ngrams(model, train, val, p.ngram_epochs, p.ngram_lr, p.seed, pad)
        term_val, term_test = ngram_logits(model, val, pad), ngram_logits(model, test, pad)
        if p.rnn_target == "residual":
            offset = out_of_fold_logits(model, train, val, p.ngram_folds, p.ngram_epochs, p.ngram_lr, p.seed, pad)
            offset = offset * args.offset_scale
        print(json.dumps({"term_val": acc(term_val, val.labels), "term_test": acc(term_test, test.labels),
                          "oof_train": acc(offset, train.labels) if offset is not None else None,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    cut = (lambda d: d) if not args.rnn_max_len else \
        (lambda d: tail(d, args.rnn_max_len)) if args.tail else (lambda d: d.truncated(args.rnn_max_len))
    train_rnn, val_rnn, test_rnn = cut(train), cut(val), cut(test)
    forward = forward_fn(model, CPU, p.path)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr,
                                 weight_decay=p.weight_decay)
    average = WeightAverage(model, p.average) if p.average else None
    for epoch in range(1, p.max_epochs + 1):
        t1 = time.perf_counter()
        fit_epoch(model, train_rnn, p, epoch, optimizer, forward, CPU, pad, None, average, vocab.unk_id, offset)
        seconds = time.perf_counter() - t1
        with (average.applied(model) if average else torch.no_grad()), model.rnn_alone():
            rnn_val = predict_logits(model, val_rnn, 256, forward, CPU, pad, 32768)
            rnn_test = predict_logits(model, test_rnn, 256, forward, CPU, pad, 32768)
        out = {"epoch": epoch, "train_s": round(seconds, 1), "val_rnn": acc(rnn_val, val.labels),
               "test_rnn": acc(rnn_test, test.labels)}
        if term_val is not None:
            mix = fit_mix(rnn_val, term_val, torch.from_numpy(val.labels))
            out.update({"mix": [round(float(x), 3) for x in mix],
                        "val_mixed": acc(mix[0] * rnn_val + mix[1] * term_val + mix[2], val.labels),
                        "test_mixed": acc(mix[0] * rnn_test + mix[1] * term_test + mix[2], test.labels)})
        out["elapsed_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(out), flush=True)
        if args.save:
            torch.save({"rnn_val": rnn_val, "rnn_test": rnn_test, "term_val": term_val, "term_test": term_test},
                       f"{args.save}-{epoch}.pt")
        release_memory()


if __name__ == "__main__":
    main()
