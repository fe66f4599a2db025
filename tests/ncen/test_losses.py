"""NCEn, ADP and GAL terms against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from sparse_expansion.ncen import losses


def test_pairwise_cosine_of_known_gradients():
    # two members, two examples: example 0 orthogonal (cos 0), example 1 opposite (cos -1)
    g = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [-3.0, -3.0]]])
    assert losses.pairwise_cosines(g)[0].tolist() == pytest.approx([0.0, -1.0])
    assert float(losses.mean_pairwise_cosine(g)) == pytest.approx(-0.5)


def test_three_members_summing_to_zero_reach_the_floor():
    # unit vectors at 120 degrees: every pair has cos -1/2 = -1/(M-1), the direction term's minimum
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    g = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1).unsqueeze(1)  # (3, 1, 2)
    assert float(losses.mean_pairwise_cosine(g)) == pytest.approx(-0.5, abs=1e-6)


def test_norm_correlation_is_pearson_of_norms():
    # member 0 norms 1,2,3; member 1 norms 3,2,1 -> correlation -1; scaling a member changes nothing
    g0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    g1 = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])
    g = torch.stack([g0, g1])
    assert float(losses.norm_correlation(g)) == pytest.approx(-1.0)
    assert float(losses.norm_correlation(torch.stack([g0, 10 * g0]))) == pytest.approx(1.0)


def test_gal_is_logsumexp_of_pair_cosines():
    # three members on one example: cosines (0,1)=0, (0,2)=1, (1,2)=0
    g = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 0.0]]])
    expected = math.log(math.exp(0.0) + math.exp(1.0) + math.exp(0.0))
    assert float(losses.gal_term(g)) == pytest.approx(expected)


def test_ensemble_entropy_of_uniform_and_one_hot():
    uniform = torch.full((2, 1, 4), 0.25)
    assert float(losses.ensemble_entropy(uniform)) == pytest.approx(math.log(4))
    # two confident members on different classes: the average is (0.5, 0.5, 0, 0) -> log 2
    split = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0]]])
    assert float(losses.ensemble_entropy(split)) == pytest.approx(math.log(2))


def test_log_det_of_non_maximal_predictions():
    y = torch.tensor([0])
    # non-maximal parts (true class 0 removed): (1, 0, 0) and (0, 1, 0) -> orthogonal -> det 1 (+offset)
    orth = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.0, 0.5, 0.0]]])
    assert float(losses.log_det_diversity(orth, y, offset=0.0)) == pytest.approx(0.0, abs=1e-6)
    # identical non-maximal parts -> Gram [[1,1],[1,1]] + δI -> det = 2δ + δ²
    same = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.2, 0.8, 0.0, 0.0]]])
    d = 1e-3
    assert float(losses.log_det_diversity(same, y, offset=d)) == pytest.approx(math.log(2 * d + d * d), rel=1e-4)
    # at 45 degrees: cos = 1/sqrt(2) -> det = 1 - 1/2
    half = torch.tensor([[[0.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 0.0]]])
    assert float(losses.log_det_diversity(half, y, offset=0.0)) == pytest.approx(math.log(0.5), rel=1e-5)


def test_adp_term_combines_entropy_and_log_det():
    y = torch.tensor([0])
    probs = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.0, 0.5, 0.0]]])
    h = float(losses.ensemble_entropy(probs))
    assert float(losses.adp_term(probs, y, alpha=2.0, beta=0.5, offset=0.0)) == pytest.approx(-2.0 * h, abs=1e-5)


def test_ensemble_log_probs_is_log_of_mean_probability():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])
    p = torch.softmax(logits, dim=-1).mean(0)
    assert torch.allclose(losses.ensemble_log_probs(logits).exp(), p)


def test_first_order_transfer_ratio():
    # a = (1, 0), b = (1, 1): sign(a)·b/|b|1 = 1/2, sign(b)·a/|a|1 = 1 -> mean 0.75; opposite -> -1
    g = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert float(losses.first_order_transfer(g)) == pytest.approx(0.75)
    assert float(losses.first_order_transfer(torch.stack([g[1], -g[1]]))) == pytest.approx(-1.0)
