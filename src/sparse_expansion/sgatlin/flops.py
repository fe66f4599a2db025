"""Forward matmul FLOPs per token, by formula (2 FLOPs per multiply-add; no embeddings, norms or
elementwise ops). Training FLOPs are 3 × forward (docs/METHODS.md, sgatlin), which sets the step count of a
run at a fixed budget. Each formula is checked against counted multiply-adds in the tests.
"""

from __future__ import annotations

import math


def attention(d_model: int, seq_len: int) -> int:
    """q, k, v, o projections plus scores and weighted values over the full T×T square.

    Counting the full square (not the causal half) matches the reference's accounting.
    """
    return 4 * 2 * d_model * d_model + 2 * 2 * seq_len * d_model


def mlp(d_model: int, d_ffw: int) -> int:
    return 2 * 2 * d_model * d_ffw


def glu(d_model: int, d_ffw: int) -> int:
    return 3 * 2 * d_model * d_ffw


def moe(d_model: int, d_ffw: int, n_experts: int, k: int) -> int:
    """Gate over all experts, then k GLU experts."""
    return 2 * d_model * n_experts + k * glu(d_model, d_ffw)


def product_dense_router(d_model: int, n_neurons: int, d_key: int, n_channels: int) -> int:
    n_keys = math.isqrt(n_neurons)
    return 2 * d_key * d_model + 2 * 2 * n_channels * n_keys * d_key


def product_key_value_router(d_model: int, n_neurons: int, d_key: int, n_channels: int) -> int:
    n_keys = math.isqrt(n_neurons)
    return 2 * 2 * n_channels * d_key * d_model + 2 * 2 * n_channels * n_keys * d_key


def sgatlin(d_model: int, n_neurons: int, d_key: int, k: int, n_channels: int,
            router: str = "product_dense") -> int:
    """Router plus k·C neurons, each one dot product in (u·x) and one scaled add out (s·z·v).

    With the product-dense router: 2·d_key·d + 4·C·√N·d_key + 4·k·C·d.
    """
    if router == "product_dense":
        r = product_dense_router(d_model, n_neurons, d_key, n_channels)
    elif router == "product_key_value":
        r = product_key_value_router(d_model, n_neurons, d_key, n_channels)
    else:
        raise ValueError(f"unknown router {router!r}")
    return r + 2 * 2 * k * n_channels * d_model


def peer(d_model: int, n_neurons: int, d_key: int, k: int, n_channels: int) -> int:
    router = product_key_value_router(d_model, n_neurons, d_key, n_channels)
    return router + 4 * k * n_channels * d_model
