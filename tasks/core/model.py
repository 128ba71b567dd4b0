"""The model: embeddings → a recurrent layer stack over packed sequences → a head → one logit.

``forward(text, lengths)`` takes what the seed's does: a padded table of token ids, time steps ×
batch, and a 1-D table of lengths; it packs them (``pack_padded_sequence``), so padding never
reaches the recurrent state. ``forward_fast`` computes the same function without packing: it runs
each layer and direction over the padded table (right padding cannot affect earlier steps), runs
the backward direction over each sequence reversed within its own length, and reads the final
states at each sequence's last real step. On a CPU that is many times faster (no per-step
re-batching, no allocator churn); tests prove outputs and gradients equal within float
tolerance (the kernels round differently, ~1e-8). Dropout (``Dropout``: nn.Dropout's law, a
cheaper draw) on the embeddings and before the head draws the same masks on both paths; with
several layers, the dropout between layers is drawn differently (same law, other masks).

With ``ngrams`` > 0 the model has a second, linear part: a weight per hashed n-gram of the review
(words, word pairs, ...; ``ngram_features``), NBSVM's model, fitted before the RNN trains
(``tasks.ngrams``). In evaluation the logit is a mix of the RNN's and the term's, fitted on
validation after every epoch; in training the RNN's alone. Its weights are buffers: they travel
with the state dict, and serving needs no other code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["lstm", "gru", "rnn"]
Head = Literal["last", "max", "mean", "last+max"]


class ModelParams(BaseModel):
    """The model's shape. The defaults are the pipeline's model (docs/benchmarks.md, "The default
    model"): an LSTM of 128 with a max-pool over time, on 50-d embeddings (GloVe's,
    ``TrainParams.pretrained``), beside an n-gram term over words, word pairs and word triples. The RNN alone
    (bidirectional, no term) is the training preset ``rnn``; the seed's model (one direction, its
    final state, 100-d) the preset ``seed``. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(50, ge=1, description="Embedding size (the vectors' size if pretrained)")
    hidden_dim: int = Field(128, ge=1)
    cell: Cell = Field("lstm", description="lstm, gru, or rnn (the vanilla ReLU RNN)")
    layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.3, ge=0, lt=1, description="On embeddings, between layers, before the head")
    head: Head = Field("max", description="max/mean: pooled over time; last: the final hidden state "
                                          "(the seed's); last+max: both concatenated")
    ngrams: int = Field(3, ge=0, le=3, description="Add a linear term over the review's n-grams up to this "
                                                   "length (2: words and word pairs, 3: and triples), fitted on its own "
                                                   "before the RNN (0: none)")
    ngram_buckets: int = Field(1 << 23, ge=2, le=1 << 30, description="Hashed n-gram features: weights kept")


class SentimentRNN(nn.Module):
    def __init__(self, vocab_size: int, params: ModelParams = ModelParams(), pad_id: int = 1):
        super().__init__()
        self.params, self.pad_id = params, pad_id
        self.embedding = nn.Embedding(vocab_size, params.embed_dim, padding_idx=pad_id)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[params.cell]
        extra = {"nonlinearity": "relu"} if params.cell == "rnn" else {}
        self.rnn = rnn_cls(params.embed_dim, params.hidden_dim, num_layers=params.layers,
                           bidirectional=params.bidirectional,
                           dropout=params.dropout if params.layers > 1 else 0.0, **extra)
        self.dirs = 2 if params.bidirectional else 1
        width = params.hidden_dim * self.dirs * (2 if params.head == "last+max" else 1)
        self.dropout = Dropout(params.dropout)
        self.fc = nn.Linear(width, 1)
        # the n-gram term's weights: buffers, not parameters, so that the RNN's optimizer, weight
        # average and gradient clipping leave them alone; ``tasks.ngrams.fit_ngrams`` sets them
        if params.ngrams:
            self.register_buffer("ngram_weight", torch.zeros(params.ngram_buckets))
            self.register_buffer("ngram_bias", torch.zeros(1))
            # the logit is mix[0] * the RNN's + mix[1] * the term's + mix[2], fitted on validation
            # (``tasks.ngrams.fit_mix``): two confident experts that agree would otherwise count
            # their shared evidence twice
            self.register_buffer("mix", torch.tensor([1.0, 1.0, 0.0]))
        self.ngram_on = True

    # -- the seed's way: packed sequences --------------------------------------------------------
    def forward(self, text: Tensor, lengths: Tensor) -> Tensor:
        """``text``: [T, B] token ids, padded; ``lengths``: [B]. Returns [B] logits."""
        embedded = self.dropout(self.embedding(text))
        packed = pack_padded_sequence(embedded, lengths.cpu(), enforce_sorted=False)
        packed_out, hidden = self.rnn(packed)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # [layers*dirs, B, H]
        last = torch.cat([h_n[-self.dirs + d] for d in range(self.dirs)], dim=1)
        outputs = None
        if self.params.head != "last":
            outputs, _ = pad_packed_sequence(packed_out, total_length=text.shape[0])
        return self._with_ngrams(self._head(last, outputs, lengths), text, lengths)

    # -- the same function, without packing ------------------------------------------------------
    def forward_fast(self, text: Tensor, lengths: Tensor) -> Tensor:
        x = self.dropout(self.embedding(text))  # [T, B, E]
        lengths = lengths.to(x.device)
        B = x.shape[1]
        last_idx = (lengths - 1).clamp(min=0)
        # rows of x viewed as [T*B, F] that reverse each sequence within its length (padding stays)
        rev = _reversal(lengths, x.shape[0]) if self.dirs == 2 else None
        finals = []
        for layer in range(self.params.layers):
            outs = []
            for d in range(self.dirs):
                inp = x if d == 0 else Reverse.apply(x, rev)
                out = self._run_direction(inp, layer, d)
                outs.append(out if d == 0 else Reverse.apply(out, rev))
                if layer == self.params.layers - 1:
                    # forward: state after the last real step; backward: after step 0 of the
                    # reversed sequence, which is the last step it runs
                    finals.append(out[last_idx, torch.arange(B, device=x.device)])
            x = torch.cat(outs, dim=2) if self.dirs == 2 else outs[0]
            if layer < self.params.layers - 1:
                x = self.dropout(x)
        last = torch.cat(finals, dim=1) if self.dirs == 2 else finals[0]
        # the head masks padding itself: no need to zero it here
        logit = self._head(last, None if self.params.head == "last" else x, lengths)
        return self._with_ngrams(logit, text, lengths)

    def _run_direction(self, x: Tensor, layer: int, direction: int) -> Tensor:
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        w = [getattr(self.rnn, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        B, H = x.shape[1], self.params.hidden_dim
        h0 = x.new_zeros(1, B, H)
        if self.params.cell == "lstm":
            return torch.lstm(x, (h0, h0), w, True, 1, 0.0, self.training, False, False)[0]
        fn = torch.gru if self.params.cell == "gru" else torch.rnn_relu
        return fn(x, h0, w, True, 1, 0.0, self.training, False, False)[0]

    # -- heads -----------------------------------------------------------------------------------
    def _head(self, last: Tensor, outputs: Tensor | None, lengths: Tensor) -> Tensor:
        """``outputs`` [T, B, F] may hold anything at padded steps: they are masked here."""
        head = self.params.head
        if head == "last":
            feat = last
        else:
            T = outputs.shape[0]
            lengths = lengths.to(outputs.device)
            pad = (torch.arange(T, device=outputs.device).unsqueeze(1) >= lengths.unsqueeze(0)).unsqueeze(2)
            if head == "mean":
                feat = outputs.masked_fill(pad, 0.0).sum(0) / lengths.clamp(min=1).unsqueeze(1)
            else:
                pooled = outputs.masked_fill(pad, float("-inf")).max(0).values
                feat = pooled if head == "max" else torch.cat([last, pooled], dim=1)
        return self.fc(self.dropout(feat)).squeeze(1)

    # -- the n-gram term -------------------------------------------------------------------------
    def _with_ngrams(self, logit: Tensor, text: Tensor, lengths: Tensor) -> Tensor:
        """``logit`` mixed with the n-gram term's, in evaluation only: the RNN trains on its own
        loss (the term, fitted first, would otherwise explain the training set for it). Inside
        ``rnn_alone()`` the RNN's logit as it is."""
        if not self.params.ngrams or self.training or not self.ngram_on:
            return logit
        return self.mixed(logit, self.ngram_logits(text, lengths))

    def mixed(self, rnn: Tensor, term: Tensor) -> Tensor:
        """The mixed model's logit from the RNN's and the term's (``mix``, fitted on validation)."""
        mix = self.mix.to(rnn.device)
        return mix[0] * rnn + mix[1] * term + mix[2]

    @contextmanager
    def rnn_alone(self) -> Iterator[None]:
        """Inside the block, the forward passes give the RNN's logit without the n-gram term."""
        self.ngram_on = False
        try:
            yield
        finally:
            self.ngram_on = True

    def ngram_logits(self, text: Tensor, lengths: Tensor) -> Tensor:
        """[B] the n-gram term alone: the sum of the weights of each distinct n-gram in a review."""
        feats, offsets = ngram_features(text, lengths, self.params.ngrams, self.params.ngram_buckets, self.pad_id)
        w = self.ngram_weight.unsqueeze(1)
        return nn.functional.embedding_bag(feats, w, offsets, mode="sum").squeeze(1) + self.ngram_bias


# the n-gram hash's multipliers (large primes): a hash below 2**30 buckets times one stays far
# below int64's limit
_HASH = (1_000_003, 999_983)


def ngram_features(text: Tensor, lengths: Tensor, n: int, buckets: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """The distinct hashed n-grams (1 ≤ length ≤ ``n``) of each column of ``text`` [T, B]: a flat
    table of feature numbers below ``buckets``, review after review, and each review's offset in
    it (``embedding_bag``'s layout). Padding and ``pad_id`` tokens belong to no n-gram."""
    T, B = text.shape
    device = text.device
    ids = text.long()
    valid = (torch.arange(T, device=device).unsqueeze(1) < lengths.to(device).unsqueeze(0)) & (ids != pad_id)
    keys, ok = [ids], [valid]
    h, v = ids, valid
    for k in range(1, n):  # k + 1 words: extend the k-word hash by the next word
        h = (h[:-1] * _HASH[k % 2] + ids[k:] + k) % buckets
        v = v[:-1] & valid[k:]
        keys.append(h)
        ok.append(v)
    column = torch.arange(B, device=device)
    flat = torch.cat([(column * buckets + (kk % buckets))[m] for kk, m in zip(keys, ok)])
    flat = torch.unique(flat)  # sorted: review by review, each feature once
    review = flat // buckets
    counts = torch.bincount(review, minlength=B)
    return flat % buckets, torch.cumsum(counts, 0) - counts


class Dropout(nn.Dropout):
    """``nn.Dropout`` with its mask drawn as ``rand >= p``: the same law (each value kept with
    probability 1 - p and scaled by 1 / (1 - p)), other draws, half the time on the CPU: the
    ``bernoulli_`` kernel ``nn.Dropout`` uses costs twice ``rand`` here, and one scaled mask makes
    the backward pass a single product. Both paths use it, so they draw the same masks."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.p:
            return x
        return x * torch.rand_like(x).ge_(self.p).div_(1 - self.p)


def _reversal(lengths: Tensor, T: int) -> Tensor:
    """Flat row index [T*B] that reverses each column of a [T, B, F] table within its length."""
    steps = torch.arange(T, device=lengths.device).unsqueeze(1)  # [T, 1]
    rev = torch.where(steps < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - steps, steps)  # [T, B]
    B = lengths.shape[0]
    return (rev * B + torch.arange(B, device=lengths.device)).reshape(-1)


class Reverse(torch.autograd.Function):
    """Rows ``rev`` of ``x`` [T, B, F] viewed as [T*B, F]. The reversal is its own inverse, so the
    backward pass reverses the gradient the same way: a copy, not a scatter-add."""

    @staticmethod
    def forward(ctx, x: Tensor, rev: Tensor) -> Tensor:
        ctx.save_for_backward(rev)
        return _rows(x, rev)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _rows(grad, ctx.saved_tensors[0]), None


def _rows(x: Tensor, rev: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[2]).index_select(0, rev).view(x.shape)


def seed_example() -> tuple[Tensor, Tensor]:
    """The seed's example input: five series of lengths 3, 2, 5, 1, 7 in a 7 × 5 padded table."""
    lengths = torch.tensor([3, 2, 5, 1, 7])
    text = torch.full((7, 5), 1, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        text[:n, b] = torch.arange(2, 2 + n) + b
    return text, lengths
