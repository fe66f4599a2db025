"""Run loops of many small tensor ops on one thread.

For loops of small ops, thread hand-offs cost more than they save: SparseGPT's column loop and
k-means are faster on one thread (`benchmarks/design/design_choices.py`, keys solve_threads and
kmeans_threads). Big matmuls and eigensolvers still gain from threads. On a GPU the CPU's thread
count is irrelevant, so the switch is skipped there (it would only add a call per loop step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread(device: torch.device | str | None = None) -> Iterator[None]:
    """The enclosed CPU work on one thread; a no-op when `device` is a GPU."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
