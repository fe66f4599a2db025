"""Entanglement metrics of neurons as plain tensor functions (docs/METHODS.md, Wasserstein neurons).

- `wasserstein_to_gaussian`: W1 between a neuron's z-scored outputs and N(0, 1). The reference
  compares against one random normal sample (Monte Carlo noise of its own); here the distance is
  exact: the empirical quantile function is a step function, so on each step [(i-1)/n, i/n] the
  integral of |z_(i) - Phi^-1(u)| has a closed form in Phi and phi. Deterministic, vectorised over
  neurons (columns), chunked so memory stays bounded.
- `mapping_difficulty`: how far apart a neuron sends two inputs relative to how far apart they
  are, over a seeded set of random token pairs, each side normalised (N_x = max input distance,
  N_y = median output distance).

Outputs are laid out [tokens, neurons]: one column per neuron.
"""

from __future__ import annotations

import math

import torch

__all__ = ["zscore", "wasserstein_to_gaussian", "gaussian_noise_floor", "random_pairs", "mapping_difficulty"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def zscore(outputs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """(y - mean) / std along `dim` (population std, ddof 0), in float64; constant columns become NaN."""
    y = outputs.to(torch.float64)
    centred = y - y.mean(dim, keepdim=True)
    std = centred.pow(2).mean(dim, keepdim=True).sqrt()
    return centred / torch.where(std > 0, std, torch.full_like(std, float("nan")))


def _pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI  # exp(-inf) = 0 at the infinite ends


def _w1_sorted(z: torch.Tensor) -> torch.Tensor:
    """Exact W1(empirical(z), N(0,1)) for columns of a sorted [n, m] float64 sample.

    On step i the sample quantile is the constant c = z_(i) and u runs over [a, b] with
    a = Phi^-1((i-1)/n), b = Phi^-1(i/n). With G(t) = c Phi(t) + phi(t), an antiderivative of
    (c - t) phi(t), the step contributes 2 G(clamp(c, a, b)) - G(a) - G(b).
    """
    n = z.shape[0]
    u = torch.arange(n + 1, dtype=torch.float64, device=z.device) / n
    t = torch.special.ndtri(u)  # -inf .. +inf
    pdf_t = _pdf(t)
    lo_t, hi_t = t[:-1, None], t[1:, None]
    lo_u, hi_u = u[:-1, None], u[1:, None]
    clamped = torch.maximum(torch.minimum(z, hi_t), lo_t)
    inner = 2.0 * (z * torch.special.ndtr(clamped) + _pdf(clamped))
    ends = z * lo_u + pdf_t[:-1, None] + z * hi_u + pdf_t[1:, None]
    return (inner - ends).sum(0)


def wasserstein_to_gaussian(outputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """W1 between each column's z-scored sample and N(0, 1): [tokens, neurons] -> [neurons] (float64).

    Exact and deterministic; invariant to any affine map a*y + b (a != 0) of a neuron's outputs,
    since z-scoring removes shift and scale and N(0, 1) is symmetric. A constant column gives NaN.
    """
    if outputs.dim() == 1:
        return wasserstein_to_gaussian(outputs[:, None], chunk)[0]
    if outputs.dim() != 2 or outputs.shape[0] < 2:
        raise ValueError(f"expected outputs [tokens >= 2, neurons], got shape {tuple(outputs.shape)}")
    result = torch.empty(outputs.shape[1], dtype=torch.float64)
    for start in range(0, outputs.shape[1], chunk):
        z = zscore(outputs[:, start : start + chunk])
        result[start : start + z.shape[1]] = _w1_sorted(z.sort(0).values).cpu()
    return result


def gaussian_noise_floor(tokens: int, samples: int = 64, seed: int = 0) -> float:
    """Mean WD of `samples` truly normal samples of `tokens` values: what finite samples alone give."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(tokens, samples, generator=generator, dtype=torch.float64)
    return float(wasserstein_to_gaussian(draws).mean())


def random_pairs(tokens: int, num_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """num_pairs disjoint token pairs (i, j), i != j, from a seeded permutation (as the reference:
    2 x num_pairs distinct tokens). Needs tokens >= 2 x num_pairs."""
    if num_pairs < 1 or 2 * num_pairs > tokens:
        raise ValueError(f"cannot draw {num_pairs} disjoint pairs from {tokens} tokens")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(tokens, generator=generator)
    return order[:num_pairs], order[num_pairs : 2 * num_pairs]


def mapping_difficulty(inputs: torch.Tensor, outputs: torch.Tensor,
                       pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MD per neuron: mean over pairs of (|y_i - y_j| / N_y) / (||x_i - x_j|| / N_x).

    inputs [tokens, in], outputs [tokens, neurons]; N_x = the largest input distance over the
    pairs, N_y = each neuron's median output distance. Pairs of identical inputs are left out
    (the ratio is undefined); a neuron whose median output distance is 0 gets NaN.
    """
    i, j = pairs
    dx = (inputs[i].to(torch.float64) - inputs[j].to(torch.float64)).norm(dim=1)
    keep = dx > 0
    if not keep.any():
        raise ValueError("every pair has identical inputs; mapping difficulty is undefined")
    i, j, dx = i[keep], j[keep], dx[keep]
    dy = (outputs[i].to(torch.float64) - outputs[j].to(torch.float64)).abs()  # [pairs, neurons]
    n_y = dy.median(0).values
    n_y = torch.where(n_y > 0, n_y, torch.full_like(n_y, float("nan")))
    return ((dy / n_y) / (dx / dx.max())[:, None]).mean(0)
