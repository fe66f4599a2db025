"""Exact W1 to N(0,1) and mapping difficulty: closed forms, scipy, invariances, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sparse_expansion.metrics.wasserstein import (
    gaussian_noise_floor,
    mapping_difficulty,
    random_pairs,
    wasserstein_to_gaussian,
)
from sparse_expansion.neurons.collect import projection_outputs


def _phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_two_point_distribution_closed_form():
    # z-scored {-1, +1}: W1 = 2 * int_0^inf |1 - t| phi(t) dt = 2 (2 Phi(1) + 2 phi(1) - 3/2 - phi(0))
    expected = 2 * (2 * stats.norm.cdf(1) + 2 * _phi(1) - 1.5 - _phi(0))
    got = wasserstein_to_gaussian(torch.tensor([-3.0, 5.0, -3.0, 5.0]))  # any two-point 50/50 sample
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_uniform_matches_quantile_integral():
    # W1(U(-sqrt3, sqrt3), N(0,1)) = int_0^1 |sqrt3 (2u - 1) - Phi^-1(u)| du
    expected, _ = integrate.quad(lambda u: abs(math.sqrt(3) * (2 * u - 1) - stats.norm.ppf(u)), 0, 1, limit=200)
    n = 20000
    sample = torch.linspace(-1, 1, n, dtype=torch.float64)  # an evenly spread uniform sample
    assert wasserstein_to_gaussian(sample).item() == pytest.approx(expected, abs=2e-4)


def test_agrees_with_scipy_against_a_large_normal_sample():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 1] ** 3  # heavy tails
    x[:, 2] = torch.where(x[:, 2] > 0, 4.0, -1.0) + 0.3 * x[:, 3]  # bimodal
    x[:, 3] = torch.rand(3000, generator=g, dtype=torch.float64)  # uniform
    ours = wasserstein_to_gaussian(x)
    reference = np.random.default_rng(0).standard_normal(500_000)
    z = ((x - x.mean(0)) / x.std(0, correction=0)).numpy()
    theirs = [stats.wasserstein_distance(z[:, k], reference) for k in range(4)]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=6e-3)
    assert ours[2] > 0.2 and ours[0] < 0.05  # the bimodal neuron is far from Gaussian, the normal one is not


def test_normal_samples_score_near_zero_and_deterministic():
    floor = gaussian_noise_floor(4096, seed=0)
    assert 0.005 < floor < 0.03
    assert floor == gaussian_noise_floor(4096, seed=0)
    assert gaussian_noise_floor(16384, seed=0) < floor  # shrinks with the sample


def test_chunking_and_constant_columns():
    x = torch.randn(500, 70, generator=torch.Generator().manual_seed(2))
    x[:, 5] = 3.0
    full = wasserstein_to_gaussian(x, chunk=1000)
    chunked = wasserstein_to_gaussian(x, chunk=16)
    assert torch.equal(full.isnan(), chunked.isnan()) and full.isnan().nonzero().flatten().tolist() == [5]
    torch.testing.assert_close(full.nan_to_num(), chunked.nan_to_num(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale,shift", [(3.7, -2.0), (-0.25, 11.0)])
def test_invariant_to_shifting_and_scaling_weights_and_bias(scale, shift):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(400, 16) ** 3  # non-Gaussian inputs: the neurons are not normal
    before = wasserstein_to_gaussian(projection_outputs(linear, x))
    with torch.no_grad():
        linear.weight.mul_(scale)
        linear.bias.mul_(scale).add_(shift)
    after = wasserstein_to_gaussian(projection_outputs(linear, x))
    torch.testing.assert_close(before, after, rtol=0, atol=1e-6)  # float32 weights: rounding only
    assert before.min() > 0.02


def test_random_pairs_are_disjoint_and_seeded():
    i, j = random_pairs(100, 40, seed=3)
    assert len(set(i.tolist()) | set(j.tolist())) == 80
    i2, j2 = random_pairs(100, 40, seed=3)
    assert torch.equal(i, i2) and torch.equal(j, j2)
    assert not torch.equal(i, random_pairs(100, 40, seed=4)[0])
    with pytest.raises(ValueError):
        random_pairs(10, 6)


def test_mapping_difficulty_of_a_linear_map_is_max_over_median():
    # y = w x on 1-D inputs: every ratio is (d/median d) / (d/max d) = max d / median d
    x = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = 2.5 * x
    pairs = random_pairs(200, 100, seed=0)
    dx = (x[pairs[0]] - x[pairs[1]]).abs().squeeze(1)
    expected = (dx.max() / dx.median()).item()
    assert mapping_difficulty(x, y, pairs).item() == pytest.approx(expected, rel=1e-12)


def test_mapping_difficulty_is_seeded_and_reproducible():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 6, generator=g)
    y = torch.tanh(x @ torch.randn(6, 4, generator=g)) * 3
    a = mapping_difficulty(x, y, random_pairs(300, 120, seed=7))
    b = mapping_difficulty(x, y, random_pairs(300, 120, seed=7))
    c = mapping_difficulty(x, y, random_pairs(300, 120, seed=8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4,) and torch.isfinite(a).all()
