"""Part 4 against the SparseExpertLinear contract, with hand-built experts on known cases."""

from __future__ import annotations

import torch
from helpers import tiny_model

from sparse_expansion.arch import decoder_layers, linear_weight
from sparse_expansion.expand.module import SparseExpertLinear
from sparse_expansion.expand.router import Router
from sparse_expansion.metrics.wasserstein import random_pairs, wasserstein_to_gaussian
from sparse_expansion.neurons.collect import iter_layer_inputs, projection_outputs
from sparse_expansion.neurons.untangle import (
    clustered_wd,
    routed_outputs,
    summarize_untangling,
    untangle_projection,
)


def _two_clusters(n=600, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[: n // 2, 0] += 6.0
    x[n // 2 :, 0] -= 6.0
    return x


def test_bimodal_neuron_is_untangled_by_its_clusters():
    x = _two_clusters()
    dense = torch.nn.Linear(8, 3)
    with torch.no_grad():
        dense.weight.copy_(torch.tensor([[1.0, 0.2, 0, 0, 0, 0, 0, 0],  # reads the cluster axis: bimodal
                                         [0, 1.0, 0, 0, 0, 0, 0, 0],    # ignores it: Gaussian
                                         [0.5, 0, 1.0, 0, 0, 0, 0, 0]]))
        dense.bias.zero_()
    router, labels = Router.fit(x, 2, 2)
    experts = linear_weight(dense).detach().expand(2, 3, 8).clone()
    expanded = SparseExpertLinear.build(router, experts, dense.bias.detach())
    result = untangle_projection(dense, expanded, x, random_pairs(600, 200, seed=0), top_fraction=0.3)
    assert result["high"].tolist() == [0]
    assert result["wd_dense"][0] > 0.3 and result["wd_expert"][0] < 0.1  # 300-token clusters: noise floor
    # identical weights: the experts' per-cluster WD is exactly the dense-clustered control
    torch.testing.assert_close(result["wd_expert"], result["wd_dense_clustered"], rtol=0, atol=1e-12)
    s = summarize_untangling(result)
    assert s["high_wd"]["fraction_lower"] == 1.0 and s["high_wd"]["median_relative_drop"] > 0.8
    assert sorted(s["cluster_sizes"]) == [300, 300]


def test_routed_outputs_use_each_tokens_own_expert():
    x = _two_clusters(n=200)
    router, _ = Router.fit(x, 2, 2)
    experts = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    bias = torch.tensor([0.5, -1.0, 0.0, 2.0])
    module = SparseExpertLinear.build(router, experts, bias)
    labels, y = routed_outputs(module, x)
    assert torch.equal(labels, router(x))
    expected = torch.stack([experts[e] @ x[t] + bias for t, e in enumerate(labels.tolist())]).double()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.float(), module(x), rtol=1e-5, atol=1e-5)


def test_clustered_wd_weights_clusters_by_size_and_skips_tiny_ones():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(130, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0] * 100 + [1] * 25 + [2] * 5)
    y[100:125, 1] = 7.0  # constant in cluster 1 for neuron 1: left out of its average
    got = clustered_wd(y, labels, min_tokens=8)
    wd0, wd1 = wasserstein_to_gaussian(y[:100]), wasserstein_to_gaussian(y[100:125])
    assert got[0].item() == (100 * wd0[0] + 25 * wd1[0]).item() / 125
    assert got[1].item() == wd0[1].item()


def test_tiny_llama_with_hand_built_experts_equal_to_dense_changes_nothing():
    model = tiny_model("llama")
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    x = dict(iter_layer_inputs(model, windows, [1], 128, progress=False))[1]
    gate = decoder_layers(model)[1].mlp.gate_proj
    router, _ = Router.fit(x, 4, 8)
    expanded = SparseExpertLinear.build(router, linear_weight(gate).detach().expand(4, -1, -1).clone(), None)
    labels, y = routed_outputs(expanded, x)
    torch.testing.assert_close(y, projection_outputs(gate, x), rtol=1e-6, atol=1e-6)
    result = untangle_projection(gate, expanded, x, random_pairs(128, 60, seed=0), 0.05)
    torch.testing.assert_close(result["md_expert"], result["md_dense"], rtol=1e-6, atol=1e-6)
