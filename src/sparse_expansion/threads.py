"""Run loops of many small tensor ops on one thread.

On this 2-core CPU, thread hand-offs cost more than they save for small ops: measured 3-10x
slower SparseGPT column loops and k-means with 2 threads. Big matmuls and eigensolvers still gain.
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
