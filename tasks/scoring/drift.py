"""How far reviews are from what a model was trained on ("know when not to trust it").

Two features of each review that has at least one token, before any ``max_len`` cut:

* its **length** in tokens (spaCy tokens, as the data stages count them);
* its **OOV share**: the share of its tokens outside the model's vocabulary (mapped to
  ``<unk>``), as a scored row's (``sentiflow.tasks.core.rows.oov_shares``). On the training
  split this is the share of training tokens the vocabulary's cap (``max_size``, ``min_freq``)
  left out; on new reviews it also counts words never seen in training, so new in-domain
  reviews sit a little above the training split (IMDb: see ``docs/benchmarks.md``).

A ``Profile`` keeps, for many reviews, counts on fixed grids (``LENGTH_EDGES``, ``OOV_EDGES``),
sums and token totals: profiles of parts add up (``Profile.merged``: a Dask run's parts), and
memory does not grow with the input. The training split's profile is computed when a model is
registered (``train_stats``) and logged with it as ``train_stats.json``, with exact quantiles
beside the grids. A scoring run's profile is compared with it (``compare``): per feature, the
population stability index over ten bins (the training split's deciles on the grid), the
Kolmogorov-Smirnov statistic on the grid, and the differences of medians and means. A run
*drifts* when a PSI reaches ``PSI_WARN`` with at least ``MIN_ROWS`` reviews profiled.

Plain numpy; no Prefect, MLflow or torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from sentiflow.tasks.core.rows import oov_counts, oov_shares

# bins [edges[i], edges[i+1]); a length is >= 1; the last OOV bin holds 1.0 too
LENGTH_EDGES = np.unique(np.concatenate([np.arange(1, 21), np.round(20 * 1.05 ** np.arange(1, 300))])).astype(
    np.float64)
LENGTH_EDGES = np.concatenate([LENGTH_EDGES[LENGTH_EDGES < 2e6], [np.inf]])
OOV_EDGES = np.concatenate([np.linspace(0.0, 1.0, 1001)[:-1], [np.inf]])  # steps of 0.001
FEATURES = ("length", "oov")
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
PSI_BINS = 10
PSI_WARN = 0.25  # the usual reading: < 0.1 no shift, 0.1-0.25 moderate, >= 0.25 major
MIN_ROWS = 200  # fewer reviews: metrics logged, no warning (a PSI of ten bins is mostly noise below)
EPS = 1e-4  # a bin's share at least this in the PSI (an empty bin is not an infinite shift)
STATS_FILE = "train_stats.json"


def _hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="right") - 1
    return np.bincount(np.clip(bins, 0, len(edges) - 2), minlength=len(edges) - 1).astype(np.int64)


class Profile(BaseModel):
    """Lengths and OOV shares of many reviews, as grid counts and sums (reviews with >= 1 token)."""

    rows: int = 0
    tokens: int = 0
    oov_tokens: int = 0
    length_sum: float = 0.0
    oov_sum: float = 0.0
    length_hist: list[int] = Field(default_factory=lambda: [0] * (len(LENGTH_EDGES) - 1))
    oov_hist: list[int] = Field(default_factory=lambda: [0] * (len(OOV_EDGES) - 1))

    @classmethod
    def of(cls, lengths: np.ndarray, unk: np.ndarray) -> Profile:
        lengths, unk = np.asarray(lengths, np.int64), np.asarray(unk, np.int64)
        keep = lengths > 0
        lengths, unk = lengths[keep], unk[keep]
        share = oov_shares(lengths, unk)
        return cls(rows=int(len(lengths)), tokens=int(lengths.sum()), oov_tokens=int(unk.sum()),
                   length_sum=float(lengths.sum()), oov_sum=float(share.sum()),
                   length_hist=_hist(lengths, LENGTH_EDGES).tolist(), oov_hist=_hist(share, OOV_EDGES).tolist())

    def add(self, other: Profile) -> None:
        self.rows += other.rows
        self.tokens += other.tokens
        self.oov_tokens += other.oov_tokens
        self.length_sum += other.length_sum
        self.oov_sum += other.oov_sum
        self.length_hist = (np.array(self.length_hist) + other.length_hist).tolist()
        self.oov_hist = (np.array(self.oov_hist) + other.oov_hist).tolist()

    @classmethod
    def merged(cls, profiles: Iterable[Profile]) -> Profile:
        out = cls()
        for p in profiles:
            out.add(p)
        return out

    def hist(self, feature: str) -> np.ndarray:
        return np.asarray(self.length_hist if feature == "length" else self.oov_hist, np.float64)

    def mean(self, feature: str) -> float:
        return (self.length_sum if feature == "length" else self.oov_sum) / self.rows if self.rows else float("nan")

    def quantile(self, feature: str, q: float) -> float:
        """From the grid: linear within the bin (a bin's width: 5 % of a length, 0.001 of a share)."""
        return grid_quantile(self.hist(feature), edges_of(feature), q)

    @property
    def oov_token_share(self) -> float:
        return self.oov_tokens / self.tokens if self.tokens else float("nan")


def edges_of(feature: str) -> np.ndarray:
    return LENGTH_EDGES if feature == "length" else OOV_EDGES


def grid_quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    total = hist.sum()
    if not total:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, q * total, side="left"))
    lo, hi = edges[i], edges[i + 1] if np.isfinite(edges[i + 1]) else edges[i]
    if edges is OOV_EDGES:
        hi = min(hi, 1.0)
    before = cum[i - 1] if i else 0
    return float(lo + (hi - lo) * ((q * total - before) / hist[i] if hist[i] else 0.0))


# -- the training split's statistics, stored with the model ---------------------------------------

class FeatureStats(BaseModel):
    mean: float | None  # None: no review with a token
    quantiles: dict[str, float]  # exact, over the split's reviews


class TrainStats(BaseModel):
    """``train_stats.json``: the training split's profile and exact summaries."""

    version: int = 1
    split: str = "train"
    unk_id: int = 0
    oov_token_share: float | None  # training tokens outside the (capped) vocabulary
    length: FeatureStats
    oov: FeatureStats
    profile: Profile

    def write(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def read(cls, path: Path | str) -> TrainStats:
        return cls.model_validate_json(Path(path).read_text())


def _exact(values: np.ndarray) -> FeatureStats:
    if not len(values):
        return FeatureStats(mean=None, quantiles={})
    return FeatureStats(mean=float(values.mean()),
                        quantiles={str(q): float(np.quantile(values, q)) for q in QUANTILES})


def train_stats(lengths: np.ndarray, unk: np.ndarray, unk_id: int, split: str = "train") -> TrainStats:
    """The statistics of a split from each review's token count and ``<unk>`` count."""
    lengths, unk = np.asarray(lengths, np.int64), np.asarray(unk, np.int64)
    keep = lengths > 0
    profile = Profile.of(lengths, unk)
    share = profile.oov_token_share
    return TrainStats(split=split, unk_id=unk_id, oov_token_share=share if np.isfinite(share) else None,
                      length=_exact(lengths[keep].astype(np.float64)),
                      oov=_exact(oov_shares(lengths[keep], unk[keep])), profile=profile)


def train_stats_of_shards(shards: Iterable[Path], unk_id: int, split: str = "train") -> TrainStats:
    """``train_stats`` of encoded Parquet shards (``ids``: the full reviews, as encode stores them)."""
    import pyarrow.parquet as pq

    lengths, unk = [], []
    for shard in shards:
        ids = pq.read_table(shard, columns=["ids"]).column("ids").combine_chunks()
        offsets = ids.offsets.to_numpy().astype(np.int64)
        flat = ids.values.to_numpy()
        lengths.append(np.diff(offsets))
        unk.append(oov_counts(flat, offsets, unk_id))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return train_stats(cat(lengths), cat(unk), unk_id, split)


# -- comparing a run with the training split ------------------------------------------------------

def _bins(train_hist: np.ndarray, k: int = PSI_BINS) -> np.ndarray:
    """Grid indices where ``k`` groups of about equal training share start (the deciles)."""
    cum = np.cumsum(train_hist) / max(train_hist.sum(), 1)
    starts = np.searchsorted(cum, np.arange(1, k) / k, side="left") + 1
    return np.unique(np.concatenate([[0], starts[starts < len(train_hist)]]))


def psi(train_hist: np.ndarray, run_hist: np.ndarray, k: int = PSI_BINS) -> float:
    """Population stability index over ``k`` groups of grid bins cut at the training deciles."""
    starts = _bins(train_hist, k)
    e = np.add.reduceat(train_hist, starts) / max(train_hist.sum(), 1)
    a = np.add.reduceat(run_hist, starts) / max(run_hist.sum(), 1)
    e, a = np.maximum(e, EPS), np.maximum(a, EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(train_hist: np.ndarray, run_hist: np.ndarray) -> float:
    """Largest difference of the two cumulative shares at the grid's edges."""
    return float(np.max(np.abs(np.cumsum(train_hist) / max(train_hist.sum(), 1)
                               - np.cumsum(run_hist) / max(run_hist.sum(), 1)), initial=0.0))


class Drift(BaseModel):
    """A run's reviews against the training split's."""

    rows: int  # reviews profiled (at least one token)
    metrics: dict[str, float]  # drift_<feature>_<psi|ks|median_diff|mean_diff>, oov_token_share...
    warnings: list[str]

    @property
    def drifted(self) -> bool:
        return bool(self.warnings)


def compare(train: TrainStats, run: Profile) -> Drift:
    if not run.rows:  # nothing tokenized: nothing to compare
        return Drift(rows=0, metrics={}, warnings=[])
    metrics: dict[str, float] = {"drift_rows": float(run.rows), "oov_token_share": run.oov_token_share,
                                 "train_oov_token_share": train.oov_token_share or float("nan")}
    warnings = []
    for f in FEATURES:
        t, r = train.profile.hist(f), run.hist(f)
        m = {"psi": psi(t, r), "ks": ks(t, r),
             "median_diff": run.quantile(f, 0.5) - train.profile.quantile(f, 0.5),
             "mean_diff": run.mean(f) - train.profile.mean(f)}
        metrics.update({f"drift_{f}_{k}": v for k, v in m.items()})
        if run.rows >= MIN_ROWS and m["psi"] >= PSI_WARN:
            what = "length (tokens)" if f == "length" else "OOV share"
            warnings.append(f"review {what} drifted from the training split: PSI {m['psi']:.2f} "
                            f"(warn at {PSI_WARN}), median {run.quantile(f, 0.5):.4g} vs "
                            f"{train.profile.quantile(f, 0.5):.4g} on training")
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    return Drift(rows=run.rows, metrics=metrics, warnings=warnings)


def read_train_stats(path: Path | str | None) -> TrainStats | None:
    """A model's ``train_stats.json``, or None for a model logged without one (older models)."""
    if not path or not Path(path).exists():
        return None
    try:
        return TrainStats.read(path)
    except (ValueError, json.JSONDecodeError):
        return None
