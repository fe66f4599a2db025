"""Magnitude pruning: one |w| threshold per matrix (per row group for N:M). Needs no data."""

from __future__ import annotations

import torch

from .sparsity import Sparsity, mask_lowest


def magnitude_prune(weight: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Return a copy of `weight` [out, in] with its smallest-magnitude entries set to zero."""
    mask = mask_lowest(weight.abs().float(), sparsity, per_row=False)
    return weight.masked_fill(mask, 0)
