"""Collectives for optional scale-out over torch.distributed ranks (torchrun).

Joining the group (which backend, which GPU per rank) is decided in `runtime.py`; this module is
what the library does once joined, for calibration (expand) and sgatlin training.
Calibration: every rank runs the same deterministic calibration; only independent work (the
expert solves of one linear) is split, then gathered so every rank holds the full result and
rank 0 writes it. Training: every rank takes its rows of the same global batch and the gradients
are averaged (DistributedDataParallel). Without torchrun all of this is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_size()[0] == 0


def my_share(count: int) -> list[int]:
    """The indices of `count` independent jobs this rank does: round-robin."""
    rank, size = rank_and_size()
    return list(range(rank, count, size))


def gather_shares(local: torch.Tensor, count: int) -> torch.Tensor:
    """Reassemble [count, ...] from each rank's round-robin share (local: [len(my_share), ...])."""
    rank, size = rank_and_size()
    if size == 1:
        return local
    per_rank = -(-count // size)
    padded = torch.zeros(per_rank, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = torch.empty(count, *local.shape[1:], dtype=local.dtype, device=local.device)
    for r in range(size):
        idx = list(range(r, count, size))
        out[idx] = parts[r][: len(idx)]
    return out


def gather_lists(local: list, count: int) -> list:
    """Like gather_shares, for small Python values (one per job)."""
    rank, size = rank_and_size()
    if size == 1:
        return list(local)
    parts: list = [None] * size
    dist.all_gather_object(parts, list(local))
    out: list = [None] * count
    for r in range(size):
        for j, value in zip(range(r, count, size), parts[r]):
            out[j] = value
    return out


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (in place, returned); `value` itself with one process."""
    _, size = rank_and_size()
    if size > 1:
        dist.all_reduce(value)
        value /= size
    return value


def barrier() -> None:
    """Wait for every rank (a no-op with one process)."""
    if rank_and_size()[1] > 1:
        dist.barrier()
