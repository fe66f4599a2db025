"""Run loops of many small tensor ops on one thread.

For loops of small ops, thread hand-offs cost more than they save: SparseGPT's column loop and
k-means are faster on one thread (`benchmarks/design_choices.py`, keys solve_threads and
kmeans_threads). Big matmuls and eigensolvers still gain from threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
