"""sgatlin layers: router maths, gathered forward vs dense reference, gradients, FLOP formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparse_expansion.sgatlin import flops
from sparse_expansion.sgatlin.layers import MLP, PEER, MoE, SparselyGatedLinear, SwiGLU
from sparse_expansion.sgatlin.router import (
    ProductDenseRouter,
    ProductKeyValueRouter,
    cartesian_topk,
)
from sparse_expansion.sgatlin.transformer import Transformer, config_for_scale

# Shared machine: more threads than free cores makes tiny ops crawl.
pytestmark = pytest.mark.usefixtures("single_thread")



def brute_topk(half: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over all N = n_keys² product scores, enumerated explicitly."""
    full = (half[..., 0, :, None] + half[..., 1, None, :]).flatten(-2)  # index i1*n_keys + i2
    return full.topk(k, dim=-1)


@pytest.mark.parametrize("router_cls", [ProductDenseRouter, ProductKeyValueRouter])
def test_router_shapes_and_ranges(router_cls):
    torch.manual_seed(0)
    router = router_cls(d_model=16, n_neurons=49, d_key=8, k=3, n_channels=4)
    scores, idx = router(torch.randn(2, 5, 16))
    assert scores.shape == idx.shape == (2, 5, 4, 3)
    assert idx.dtype == torch.long and idx.min() >= 0 and idx.max() < 49
    # k distinct neurons per (token, channel), scores sorted descending
    assert (idx.sort(-1).values.diff(dim=-1) != 0).all()
    assert (scores.diff(dim=-1) <= 0).all()


@pytest.mark.parametrize("n_keys,k", [(5, 2), (7, 4), (9, 8), (6, 6)])
def test_cartesian_topk_equals_brute_force(n_keys, k):
    torch.manual_seed(n_keys * 10 + k)
    half = torch.randn(3, 4, 2, n_keys, dtype=torch.float64)
    s, i = cartesian_topk(half, k)
    bs, bi = brute_topk(half, k)
    torch.testing.assert_close(s, bs)
    assert torch.equal(i, bi)


def test_router_brute_force_through_module():
    torch.manual_seed(1)
    router = ProductDenseRouter(d_model=12, n_neurons=36, d_key=10, k=4, n_channels=3).double()
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    # scores of all N neurons from the raw layer weights: A (P x) laid out (2, C, n_keys)
    s_all = (x @ router.proj.weight.T @ router.keys.weight.T).unflatten(-1, (2, 3, 6))
    full = (s_all[..., 0, :, :, None] + s_all[..., 1, :, None, :]).flatten(-2)  # [.., C, 36]
    bs, bi = full.topk(4, dim=-1)
    s, i = router(x)
    torch.testing.assert_close(s, bs)
    assert torch.equal(i, bi)


def test_router_refuses_bad_sizes():
    with pytest.raises(ValueError, match="perfect square"):
        ProductDenseRouter(8, 50, 4, 2, 2)
    with pytest.raises(ValueError, match="k="):
        ProductDenseRouter(8, 49, 4, 7, 2)


def dense_masked_reference(layer: SparselyGatedLinear, x: torch.Tensor) -> torch.Tensor:
    """Every neuron of every channel computed densely, then masked to the brute-force top-k."""
    half = layer.router.half_scores(x)  # [B, T, C, 2, n_keys]
    full = (half[..., 0, :, None] + half[..., 1, None, :]).flatten(-2)  # [B, T, C, N]
    _, top = full.topk(layer.k, dim=-1)
    mask = torch.zeros_like(full).scatter_(-1, top, 1.0)
    u, v = layer.experts[0], layer.experts[1]  # [C, N, d]
    z = torch.einsum("btd,cnd->btcn", x, u)
    g = layer.act(full * z) * mask
    return torch.einsum("btcn,cnd->btd", g, v)


@pytest.mark.parametrize("router", ["product_dense", "product_key_value"])
@pytest.mark.parametrize("activation", ["identity", "gelu"])
def test_gathered_forward_equals_dense_masked(router, activation):
    torch.manual_seed(2)
    layer = SparselyGatedLinear(16, 64, k=3, n_channels=4, d_key=8, router=router,
                                activation=activation).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense_masked_reference(layer, x))


def test_identity_layer_is_linear_given_routing():
    """With identity activation the output is linear in x for fixed routing (gates scale it)."""
    torch.manual_seed(3)
    layer = SparselyGatedLinear(8, 25, k=2, n_channels=2, d_key=4).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    s, i = layer.router(x)
    torch.testing.assert_close(layer.mix(2 * x, s, i), 2 * layer.mix(x, s, i))


def test_gradients_reach_selected_neurons_only():
    torch.manual_seed(4)
    layer = SparselyGatedLinear(8, 100, k=2, n_channels=3, d_key=4)
    x = torch.randn(1, 2, 8)
    _, idx = layer.router(x)
    layer(x).pow(2).sum().backward()
    touched = layer.experts.grad.abs().sum(dim=(0, 3)) != 0  # [C, N]
    expected = torch.zeros(3, 100, dtype=torch.bool)
    for c in range(3):
        expected[c, idx[..., c, :].flatten()] = True
    assert torch.equal(touched, expected)
    assert layer.router.proj.weight.grad.abs().sum() > 0  # the router learns through the gates
    assert layer.router.keys.weight.grad.abs().sum() > 0


def _cpu_sdpa_flops(q_shape, k_shape, *args, **kwargs) -> int:
    """The CPU flash-attention kernel is not in FlopCounterMode's table: q·kᵀ and p·v over the
    full T×T square, 2 FLOPs per multiply-add each."""
    b, h, t_q, d = q_shape
    return 2 * 2 * b * h * t_q * k_shape[2] * d


def counted_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with FlopCounterMode(display=False, custom_mapping={sdpa: _cpu_sdpa_flops}) as counter:
        module(x)
    return counter.get_total_flops()


def test_flop_formulas_match_counted_multiply_adds():
    torch.manual_seed(5)
    n_tok = 2 * 6
    x = torch.randn(2, 6, 32)
    cases = [
        (MLP(32, 48), flops.mlp(32, 48)),
        (SwiGLU(32, 40), flops.glu(32, 40)),
        (MoE(32, 24, n_experts=6, k=2), flops.moe(32, 24, 6, 2)),
        (SparselyGatedLinear(32, 49, k=3, n_channels=4, d_key=16),
         flops.sgatlin(32, 49, 16, 3, 4)),
        (SparselyGatedLinear(32, 49, k=3, n_channels=4, d_key=16, router="product_key_value"),
         flops.sgatlin(32, 49, 16, 3, 4, "product_key_value")),
        (PEER(32, 64, k=3, n_channels=4, d_key=16), flops.peer(32, 64, 16, 3, 4)),
    ]
    for layer, per_token in cases:
        assert layer.flops_per_token() == per_token
        assert counted_flops(layer, x) == per_token * n_tok, type(layer).__name__


def test_sgatlin_formula_is_the_design_formula():
    d, n, dk, k, c = 128, 28**2, 128, 8, 16
    assert flops.sgatlin(d, n, dk, k, c) == 2 * dk * d + 4 * c * math.isqrt(n) * dk + 4 * k * c * d


@pytest.mark.parametrize("ffn", ["mlp", "sgatlin"])
def test_transformer_flops_match_count(ffn):
    """Whole model: attention (full T² square, as the reference counts it) + FFN; the tied
    output projection is not counted, so it is subtracted from the measured total."""
    cfg = config_for_scale(ffn, 0.5, vocab_size=50, seq_len=16)
    model = Transformer(cfg)
    tokens = torch.randint(0, 50, (2, 16))
    logits_flops = 2 * 32 * cfg.d_model * 50
    assert counted_flops(model, tokens) - logits_flops == model.flops_per_token() * 32
