"""Training's memory bounds: the memory-mapped shard reader, batches capped by padded tokens, a
training that equals an independent seed-style loop over the Parquet rows, and the CUDA choices
(packed path, float16 autocast, loss scaling) as far as a CPU can check them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from sentiflow.storage.settings import Settings
from sentiflow.storage.store import Store
from sentiflow.tasks.core.inference import Encoded, autocast, forward_fn
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.text import Vocab
from sentiflow.tasks.training.batching import bucketed_batches
from sentiflow.tasks.training.train import (
    TrainConfig,
    TrainParams,
    build_model,
    grad_scaler,
    load_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB = Vocab(["<unk>", "<pad>"] + [f"w{i}" for i in range(48)])


def encoded_rows(n: int, label: int, seed: int) -> list[tuple[str, int, list[int]]]:
    """Reviews of 0–120 ids; the label's word (2 or 3) appears in all but the empty ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ids = rng.integers(4, len(VOCAB), rng.integers(0, 121)).tolist()
        if ids:
            ids[rng.integers(len(ids))] = 2 + label
        rows.append((f"{label}-{seed}-{i}", label, ids))
    return rows


def write_stage(store: Store, key: str, shards: list[list[tuple[str, int, list[int]]]]):
    """An encode-like stage folder: ``part-*.parquet`` with id, label, ids, length."""
    ref = store.ref("encode", key)
    with store.build(ref, {}, []) as out:
        for k, rows in enumerate(shards):
            pq.write_table(pa.table({"id": [r[0] for r in rows], "label": pa.array([r[1] for r in rows], pa.int8()),
                                     "ids": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
                                     "length": pa.array([len(r[2]) for r in rows], pa.int32())}),
                           out / f"part-{k:05d}.parquet", row_group_size=50)
    return ref


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Train shards sorted by label, as IMDb's are (two negative shards, then two positive), a
    validation stage, a vocabulary stage."""
    store = Store(tmp_path_factory.mktemp("train-memory") / "data")
    train_ref = write_stage(store, "train", [encoded_rows(130, label, seed) for label in (0, 1) for seed in (1, 2)])
    val_ref = write_stage(store, "val", [encoded_rows(40, 0, 3) + encoded_rows(40, 1, 4)])
    vocab_ref = store.ref("vocab", "v")
    with store.build(vocab_ref, {}, []) as out:
        VOCAB.write(out / "vocab.parquet")
    return train_ref, val_ref, vocab_ref


def python_rows(shards: list[Path]) -> list[tuple[str, float, list[int]]]:
    rows = []
    for path in shards:
        t = pq.read_table(path)
        rows += zip(t["id"].to_pylist(), t["label"].to_pylist(), t["ids"].to_pylist())
    return rows


@pytest.mark.parametrize("max_len", [None, 50])
def test_memory_mapped_shards_read_as_the_rows_stored(stages, tmp_path, max_len):
    shards = stages[0].shards()
    mapped = Encoded.from_shards(shards, max_len, mmap_dir=tmp_path)
    in_memory = Encoded.from_shards(shards, max_len)
    rows = python_rows(shards)
    assert isinstance(mapped.flat, np.memmap) and mapped.flat.dtype == np.int32
    assert list(tmp_path.iterdir()) == []  # the mapped file has no name: nothing is left behind
    assert mapped.ids == [] and in_memory.ids == [r[0] for r in rows]
    for data in (mapped, in_memory):
        assert len(data) == len(rows) == 520
        np.testing.assert_array_equal(data.labels, [r[1] for r in rows])
        for i in (0, 1, 129, 130, 300, 519):
            s, e = data.offsets[i], data.offsets[i + 1]
            assert data.flat[s:e].tolist() == rows[i][2][:max_len]
    rows_b = np.array([3, 260, 0, 519, 131])
    for a, b in zip(mapped.batch(rows_b, VOCAB.pad_id), in_memory.batch(rows_b, VOCAB.pad_id)):
        assert torch.equal(a, b)
    empty = Encoded.from_shards([], None, mmap_dir=tmp_path)
    assert len(empty) == 0 and len(empty.flat) == 0


def test_batches_are_capped_by_rows_and_padded_tokens_and_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(0, 400, 3000)
    lengths[17] = 5000  # longer than the cap: a batch of its own
    for cap in (None, 2000):
        batches = bucketed_batches(lengths, 32, seed=5, epoch=1, max_tokens=cap)
        assert sorted(np.concatenate(batches).tolist()) == list(range(3000))
        assert max(len(b) for b in batches) == 32
        if cap:
            assert all(len(b) * max(lengths[b].max(), 1) <= cap or len(b) == 1 for b in batches)
            assert [17] in [b.tolist() for b in batches]
    capped = lambda epoch: [b.tolist() for b in bucketed_batches(lengths, 32, 5, epoch, max_tokens=2000)]  # noqa: E731
    assert capped(1) == capped(1) != capped(2)  # a function of (seed, epoch)
    # a cap no batch reaches cuts as no cap does
    plain = [b.tolist() for b in bucketed_batches(lengths, 32, 5, 1)]
    assert plain == [b.tolist() for b in bucketed_batches(lengths, 32, 5, 1, max_tokens=32 * 5000)]


def independent_training(shards: list[Path], config: TrainConfig) -> dict[str, torch.Tensor]:
    """The seed's loop over the Parquet rows as Python lists: padded tables built by hand, the
    packed forward, Adam, BCE with logits, the gradient clipped; the batches of
    ``bucketed_batches`` (checked above), dropout seeded per epoch as the training task does."""
    p = config.train
    rows = python_rows(shards)
    lengths = np.array([len(r[2]) for r in rows])
    model, _ = build_model(VOCAB, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    for epoch in range(1, p.max_epochs + 1):
        model.train()
        torch.manual_seed(p.seed * 1000 + epoch)
        for batch in bucketed_batches(lengths, p.batch_size, p.seed, epoch, max_tokens=p.max_batch_tokens):
            reviews = [rows[r][2] or [VOCAB.pad_id] for r in batch]  # an empty review: one pad
            T = max(len(ids) for ids in reviews)
            assert len(batch) * T <= p.max_batch_tokens or len(batch) == 1
            text = torch.tensor([ids + [VOCAB.pad_id] * (T - len(ids)) for ids in reviews]).T
            lengths_b = torch.tensor([len(ids) for ids in reviews])
            labels = torch.tensor([float(rows[r][1]) for r in batch])
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(model(text, lengths_b), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
    return model.state_dict()


def test_training_from_mapped_shards_equals_an_independent_loop(stages, tmp_path):
    train_ref, val_ref, vocab_ref = stages
    config = TrainConfig(model=ModelParams(embed_dim=8, hidden_dim=8, bidirectional=False, head="last+max", dropout=0.2,
                                           ngrams=0),
                         train=TrainParams(max_epochs=2, batch_size=16, lr=1e-2, max_batch_tokens=600, seed=7,
                                           pretrained=None, lr_schedule="constant", average=None))
    lengths = Encoded.from_shards(train_ref.shards()).lengths
    assert any(len(b) < 16 for b in bucketed_batches(lengths, 16, 7, 1, max_tokens=600)[:-1])  # the cap binds
    settings = Settings(data_root=train_ref.path.parents[1], tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                        experiment="memory")
    result = train(config, train_ref, val_ref, vocab_ref, None, settings)
    assert not (settings.data_root / "train").exists()  # no mapped file, no lock left behind
    val_acc = [m.value for m in MlflowClient(settings.resolved_tracking_uri).get_metric_history(result.run_id, "val_acc")]
    assert max(val_acc) >= 0.9  # each review carries its label's word

    trained = SentimentRNN(len(VOCAB), config.model, pad_id=VOCAB.pad_id)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    load_checkpoint(result.run_id, 2, trained, tmp_path)
    expected = independent_training(train_ref.shards(), config)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_cuda_trains_packed_with_float16_autocast_and_loss_scaling():
    """What a CUDA training selects, checked without a GPU: the same choices ``_train`` makes."""
    model = SentimentRNN(50, ModelParams(embed_dim=4, hidden_dim=4))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert forward_fn(model, cuda) == model.forward  # packed: pack_padded_sequence → cuDNN
    assert forward_fn(model, cpu) == model.forward_fast and forward_fn(model, cpu, "packed") == model.forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the objects still say what they are
        amp, scaler = autocast(cuda), grad_scaler(cuda)
    assert (amp.device, amp.fast_dtype) == ("cuda", torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"
    assert grad_scaler(cpu) is None and not autocast(cpu)._enabled


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark runs for real")
def test_gpu_benchmark_skips_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, "tests/bench/bench_train_gpu.py", "--synthetic", "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["skipped"] is True and "CUDA" in out["reason"]


def test_tune_cpu_turns_onednns_primitive_cache_off_unless_the_user_set_it(monkeypatch):
    """One kernel per batch shape filled oneDNN's cache (up to 1,024 kernels and their buffers):
    ~250 MB of the default training's peak (tasks/cpu.py). A value set by the user stays."""
    import os

    from sentiflow.tasks.cpu import tune_cpu

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    tune_cpu()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    tune_cpu()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
