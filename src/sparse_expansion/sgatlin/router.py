"""Product routers: pick k of N = n_keys² neurons per channel from two top-k lists of n_keys.

The product trick (Lample et al., product keys) scores neuron (i1, i2) as s1[i1] + s2[i2]. Any
neuron in the global top-k has both halves in their own top-k, so a top-k over the k² Cartesian
candidates is exact whenever k <= n_keys, at a cost of O(√N) scores instead of O(N).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def trunc_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Truncated normal with variance 1/fan_in after truncation at ±2σ (LeCun normal, as Flax)."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def cartesian_topk(
    half_scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of s1[i1] + s2[i2] over all n_keys² pairs.

    half_scores: [..., 2, n_keys]. Returns (scores [..., k], indices [..., k]) with the neuron index
    i1 * n_keys + i2 (i1 from half 0), scores sorted descending.
    """
    n_keys = half_scores.shape[-1]
    if not 0 < k <= n_keys:
        raise ValueError(f"k={k} must be in 1..n_keys={n_keys}")
    part_scores, part_idx = half_scores.topk(k, dim=-1)  # [..., 2, k]
    s1, s2 = part_scores[..., 0, :], part_scores[..., 1, :]
    i1, i2 = part_idx[..., 0, :], part_idx[..., 1, :]
    cand_scores = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # [..., k*k]
    cand_idx = (i1.unsqueeze(-1) * n_keys + i2.unsqueeze(-2)).flatten(-2)
    scores, pos = cand_scores.topk(k, dim=-1)
    return scores, cand_idx.gather(-1, pos)


def check_product_sizes(n_neurons: int, k: int) -> int:
    """Return n_keys = √N, refusing sizes the product router cannot serve exactly."""
    n_keys = math.isqrt(n_neurons)
    if n_keys * n_keys != n_neurons:
        raise ValueError(f"n_neurons={n_neurons} must be a perfect square for a product router")
    if not 0 < k < n_keys:
        raise ValueError(f"k={k} must satisfy 0 < k < sqrt(n_neurons)={n_keys}")
    return n_keys


class ProductDenseRouter(nn.Module):
    """h = P x (d_key), half scores = A h reshaped to (2, C, n_keys); no biases.

    Returns raw scores and neuron indices, each [B, T, C, k]. The module is a named hook site:
    a forward hook on it can read or replace (scores, indices), which is how gating records and
    patches routing.
    """

    def __init__(self, d_model: int, n_neurons: int, d_key: int, k: int, n_channels: int):
        super().__init__()
        self.n_keys = check_product_sizes(n_neurons, k)
        self.k, self.n_channels, self.d_key = k, n_channels, d_key
        self.proj = nn.Linear(d_model, d_key, bias=False)  # P
        self.keys = nn.Linear(d_key, 2 * n_channels * self.n_keys, bias=False)  # A
        trunc_normal_(self.proj.weight, d_model)
        trunc_normal_(self.keys.weight, d_key)

    def half_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., C, 2, n_keys] (A's output laid out halves first, then channel)."""
        s = self.keys(self.proj(x)).unflatten(-1, (2, self.n_channels, self.n_keys))
        return s.transpose(-3, -2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cartesian_topk(self.half_scores(x), self.k)


class ProductKeyValueRouter(nn.Module):
    """Per half and channel a query W x (d_key) against n_keys learned keys, / √(2·d_key).

    The PEER router, and the key-value option of sgatlin for the router ablation.
    """

    def __init__(self, d_model: int, n_neurons: int, d_key: int, k: int, n_channels: int):
        super().__init__()
        self.n_keys = check_product_sizes(n_neurons, k)
        self.k, self.n_channels, self.d_key = k, n_channels, d_key
        self.queries = nn.Parameter(torch.empty(2, n_channels, d_model, d_key))
        self.subkeys = nn.Parameter(torch.empty(2, n_channels, self.n_keys, d_key))
        trunc_normal_(self.queries, d_model)
        with torch.no_grad():  # unit truncated normal, as the reference's key init
            nn.init.trunc_normal_(self.subkeys, std=1.0, a=-2.0, b=2.0)

    def half_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., C, 2, n_keys]."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        q = torch.einsum("nd,pcdk->pcnk", flat, self.queries)  # [2, C, n, d_key]
        sim = torch.matmul(q, self.subkeys.transpose(-1, -2)) / math.sqrt(2 * self.d_key)
        return sim.permute(2, 1, 0, 3).reshape(*lead, self.n_channels, 2, self.n_keys)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cartesian_topk(self.half_scores(x), self.k)


ROUTERS = {"product_dense": ProductDenseRouter, "product_key_value": ProductKeyValueRouter}
