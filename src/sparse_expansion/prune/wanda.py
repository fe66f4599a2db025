"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||_2, comparing weights within each output row."""

from __future__ import annotations

import torch

from .sparsity import Sparsity, mask_counts, mask_lowest


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """|W| scaled by the L2 norm of each input feature over the calibration tokens."""
    return weight.abs().float() * input_sq_norms.float().sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, input_sq_norms: torch.Tensor, sparsity: Sparsity,
                row_zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the lowest-scoring `in_features * s` weights of every row (or N of every M); with
    `row_zeros` [out], exactly that many in each row instead."""
    scores = wanda_scores(weight, input_sq_norms)
    if row_zeros is not None:
        return weight.masked_fill(mask_counts(scores, row_zeros), 0)
    mask = mask_lowest(scores, sparsity, per_row=True)
    return weight.masked_fill(mask, 0)
