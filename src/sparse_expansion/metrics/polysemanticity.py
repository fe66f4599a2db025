"""Polysemanticity metrics for any weight matrix (docs/METHODS.md, Wasserstein neurons), as plain tensor functions.

Layout is PyTorch's `nn.Linear.weight`: shape (neurons, features). A row is one neuron's
incoming weight vector; a column is how one input feature is spread over the neurons.

- Feature capacity (Elhage et al., "Toy models of superposition"): for feature i with column
  W_i, C_i = (W_i·W_i)² / Σ_j (W_i·W_j)². C_i = 1 when feature i has neurons to itself and
  shrinks as other features share them; Σ_i C_i ≤ rank(W) ≤ min(neurons, features). A feature
  whose column is zero has capacity 0 (it is not represented at all).
- Mean pairwise cosine similarity of the neurons' weight vectors: neurons that read the same
  inputs are likely to be serving the same features at once. Zero rows (dead or fully pruned
  neurons) are left out: their direction is undefined.
"""

from __future__ import annotations

import torch

__all__ = ["feature_capacity", "total_feature_capacity", "mean_pairwise_cosine"]


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix (neurons, features), got shape {tuple(weight.shape)}")
    return weight.detach().to(torch.float64)


def feature_capacity(weight: torch.Tensor) -> torch.Tensor:
    """Per-feature capacity C_i of a (neurons, features) matrix; 0 for unrepresented features."""
    w = _as_matrix(weight)
    gram = w.T @ w  # (features, features): W_i·W_j
    diag = torch.diagonal(gram)
    denom = (gram**2).sum(dim=1)
    cap = torch.where(denom > 0, diag**2 / torch.where(denom > 0, denom, 1.0), torch.zeros_like(diag))
    return cap.to(weight.dtype if weight.is_floating_point() else torch.float32)


def total_feature_capacity(weight: torch.Tensor) -> float:
    """Σ_i C_i: how many features' worth of dimensions the neurons give out (≤ min(neurons, features))."""
    return float(feature_capacity(weight).to(torch.float64).sum())


def mean_pairwise_cosine(weight: torch.Tensor, absolute: bool = False) -> float:
    """Mean cosine similarity over all pairs of non-zero neuron rows (i < j).

    `absolute=True` averages |cos|: signed cosines of random-sign weights cancel, the absolute
    value measures overlap whatever the sign. Returns 0.0 when fewer than two neurons are alive.
    """
    w = _as_matrix(weight)
    norms = w.norm(dim=1)
    w = w[norms > 0]
    n = w.shape[0]
    if n < 2:
        return 0.0
    unit = w / w.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    if absolute:
        cos = cos.abs()
    iu = torch.triu_indices(n, n, offset=1)
    return float(cos[iu[0], iu[1]].mean())
