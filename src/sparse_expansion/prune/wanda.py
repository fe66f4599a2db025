"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||_2, comparing weights within each output row."""

from __future__ import annotations

import torch

from .sparsity import Sparsity, mask_lowest


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """|W| scaled by the L2 norm of each input feature over the calibration tokens."""
    return weight.abs().float() * input_sq_norms.float().sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, input_sq_norms: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Zero the lowest-scoring `in_features * s` weights of every row (or N of every M)."""
    mask = mask_lowest(wanda_scores(weight, input_sq_norms), sparsity, per_row=True)
    return weight.masked_fill(mask, 0)
