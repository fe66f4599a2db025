import pytest
import torch

from sparse_expansion.metrics.polysemanticity import (
    feature_capacity,
    mean_pairwise_cosine,
    total_feature_capacity,
)


def test_capacity_is_one_per_feature_with_its_own_neuron():
    w = torch.diag(torch.tensor([1.0, -2.0, 3.0]))
    assert torch.allclose(feature_capacity(w), torch.ones(3))
    assert total_feature_capacity(w) == pytest.approx(3.0)


def test_capacity_hand_built_shared_neuron():
    # one neuron reading two features with weights 1 and 1: each gets (1)^2 / (1 + 1) = 1/2
    w = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(feature_capacity(w), torch.tensor([0.5, 0.5]))
    # unequal weights a=1, b=2: C_0 = 1/(1+4) ; C_1 = 16/(4+16)
    w = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(feature_capacity(w), torch.tensor([1 / 5, 16 / 20]))


def test_capacity_zero_column_and_rank_bound():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, -1.0]])
    cap = feature_capacity(w)
    assert cap[1] == 0
    g = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    assert total_feature_capacity(g) <= 4 + 1e-9


def test_mean_pairwise_cosine_hand_built():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])  # last row dead: skipped
    # pairs: (0,1)=0, (0,2)=1/√2, (1,2)=1/√2
    assert mean_pairwise_cosine(w) == pytest.approx((2 / 2**0.5) / 3)
    w = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(w) == pytest.approx(-1.0)
    assert mean_pairwise_cosine(w, absolute=True) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 2.0]])) == 0.0


def test_rejects_non_matrix():
    with pytest.raises(ValueError):
        feature_capacity(torch.ones(3))
