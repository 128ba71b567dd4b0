"""CPU settings that change speed, not results: training and scoring share them.

* Denormal floats: gradients flowing back through hundreds of recurrent steps shrink into
  denormal range, where the CPU takes a slow path; flushing them to zero made the LSTM backward
  ~15x faster here (values below 1.2e-38 become 0), and scoring ~1.3x.
* glibc returns big freed blocks to the OS at once (above ``M_MMAP_THRESHOLD``, and the heap's
  top above ``M_TRIM_THRESHOLD``); the RNN's forward and backward allocate and free such blocks
  every step, and each new one is fresh pages the kernel must zero. Raising both thresholds
  (``mallopt``) keeps them: a training step twice as fast here, scoring IMDb's test part 1.7x
  (37 s → 21 s, one thread). What is kept, ``release_memory`` hands back (``malloc_trim``):
  training every few batches and after each epoch, scoring after each batch. Up to
  ``KEEP_BLOCKS``: at 1 GB, batches of ever-changing shapes fragmented the kept heap between
  trims (one epoch of the default's RNN on 5,000 IMDb reviews: 500–800 MB over its start; at
  128 MB 450–480 MB, 12 % slower; at 64 MB ~390 MB, 20 % slower).
* oneDNN's primitive cache (up to 1,024 of its LSTM kernels, one per batch shape, each holding
  its buffers) is turned off, ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`` unless set already: batches of
  ever-changing shapes filled it with kernels used once. The whole default ``sentiflow train`` on
  IMDb peaked at 1,561 MB with it, ~1,310 MB without, in the same time (4 min 10 s).
  oneDNN reads the setting when it first builds a kernel: a process that ran an LSTM on the CPU
  before ``tune_cpu`` keeps its cache.

All hold for the rest of the process (a command, or a Prefect worker running a stage).
"""

from __future__ import annotations

import ctypes
import os

import torch


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


KEEP_BLOCKS = 128 << 20  # bytes: M_MMAP_THRESHOLD and M_TRIM_THRESHOLD


def tune_cpu() -> None:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    torch.set_flush_denormal(True)
    libc = _libc()
    try:
        libc.mallopt(-3, KEEP_BLOCKS)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, KEEP_BLOCKS)  # M_TRIM_THRESHOLD
    except AttributeError:  # not glibc
        pass


def release_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``)."""
    libc = _libc()
    try:
        libc.malloc_trim(0)
    except AttributeError:
        pass
