"""Feed-forward blocks with one interface, `ffn(x: [B, T, d]) -> [B, T, d]`.

`SparselyGatedLinear` is the sgatlin layer (docs/METHODS.md, sgatlin); `MLP`, `SwiGLU`, `MoE` and `PEER` are
the baselines of the isoflop study. Sparse layers gather the vectors of the selected neurons
(or tokens, for the MoE), so their time and memory grow with k, not with the pool size;
benchmarks/sgatlin/throughput.py measures training speed and peak memory of every type at
matched FLOPs per token. Every layer has `flops_per_token()`: forward matmul FLOPs by formula (see `flops.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import flops
from .router import ROUTERS, ProductKeyValueRouter, trunc_normal_

ACTIVATIONS = {
    "identity": lambda z: z,
    "gelu": lambda z: F.gelu(z, approximate="tanh"),  # jax.nn.gelu defaults to the tanh form
    "relu": F.relu,
    "silu": F.silu,
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _linear(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    trunc_normal_(layer.weight, d_in)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class SparselyGatedLinear(nn.Module):
    """C channels × N single-neuron linear experts; per token and channel the router picks k.

    y = Σ_c Σ_{i ∈ topk_c(x)} act(s_{c,i}(x) · (u_{c,i}·x)) · v_{c,i}, with raw router scores
    as gates and act = identity by default. u and v are stored as `experts` [2, C, N, d].
    """

    def __init__(
        self,
        d_model: int,
        n_neurons: int,
        k: int = 8,
        n_channels: int = 16,
        d_key: int = 128,
        router: str = "product_dense",
        activation: str = "identity",
    ):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; choose from {sorted(ROUTERS)}")
        self.d_model, self.n_neurons, self.k = d_model, n_neurons, k
        self.n_channels, self.d_key = n_channels, d_key
        self.router_type, self.activation = router, activation
        self.act = _activation(activation)
        self.router = ROUTERS[router](d_model, n_neurons, d_key, k, n_channels)
        self.experts = nn.Parameter(torch.empty(2, n_channels, n_neurons, d_model))
        trunc_normal_(self.experts, n_neurons)  # fan-in N, as the reference's init
        # Row offset of each channel in the flattened [C*N, d] tables.
        self.register_buffer(
            "channel_offset", torch.arange(n_channels) * n_neurons, persistent=False
        )

    def mix(self, x: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Combine the selected neurons given routing (scores, indices [B, T, C, k])."""
        lead, d = x.shape[:-1], x.shape[-1]
        flat_x = x.reshape(-1, 1, d)  # [n, 1, d]
        rows = (indices + self.channel_offset[:, None]).reshape(flat_x.shape[0], -1)  # [n, C*k]
        # F.embedding, not tensor indexing: its CPU backward is deterministic across threads.
        u = F.embedding(rows, self.experts[0].reshape(-1, d))  # [n, C*k, d]
        v = F.embedding(rows, self.experts[1].reshape(-1, d))
        z = torch.bmm(flat_x, u.transpose(1, 2))  # [n, 1, C*k]: u·x
        g = self.act(z * scores.reshape(z.shape))
        return torch.bmm(g, v).reshape(*lead, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, indices = self.router(x)
        return self.mix(x, scores, indices)

    def flops_per_token(self) -> int:
        return flops.sgatlin(self.d_model, self.n_neurons, self.d_key, self.k, self.n_channels,
                             self.router_type)


class MLP(nn.Module):
    """Dense two-layer GELU MLP, no biases."""

    def __init__(self, d_model: int, d_ffw: int, activation: str = "gelu"):
        super().__init__()
        self.d_model, self.d_ffw = d_model, d_ffw
        self.act = _activation(activation)
        self.up, self.down = _linear(d_model, d_ffw), _linear(d_ffw, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))

    def flops_per_token(self) -> int:
        return flops.mlp(self.d_model, self.d_ffw)


def clamped_swiglu(z: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """GPT-OSS GLU: split [gate | linear], clamp, gate·σ(α·gate)·(linear + 1).

    The reference's SwiGLU and MoE experts use this form; the clamp keeps early training stable.
    """
    gate, lin = z.chunk(2, dim=-1)
    gate = gate.clamp(max=limit)
    lin = lin.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (lin + 1)


class SwiGLU(nn.Module):
    """Dense GLU (GPT-OSS form, with biases as in the reference)."""

    def __init__(self, d_model: int, d_ffw: int):
        super().__init__()
        self.d_model, self.d_ffw = d_model, d_ffw
        self.up = _linear(d_model, 2 * d_ffw, bias=True)
        self.down = _linear(d_ffw, d_model, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(clamped_swiglu(self.up(x)))

    def flops_per_token(self) -> int:
        return flops.glu(self.d_model, self.d_ffw)


class MoE(nn.Module):
    """Top-k mixture of E GLU experts (GPT-OSS form).

    Gate weights are the softmax over all E experts, kept for the chosen k (not renormalised),
    as in the reference. Tokens are dispatched to their experts, so compute is k experts per token.
    """

    def __init__(self, d_model: int, d_ffw: int, n_experts: int = 16, k: int = 2):
        super().__init__()
        self.d_model, self.d_ffw, self.n_experts, self.k = d_model, d_ffw, n_experts, k
        self.gate = _linear(d_model, n_experts)
        self.w_in = nn.Parameter(torch.empty(n_experts, d_model, 2 * d_ffw))
        self.b_in = nn.Parameter(torch.zeros(n_experts, 2 * d_ffw))
        self.w_out = nn.Parameter(torch.empty(n_experts, d_ffw, d_model))
        self.b_out = nn.Parameter(torch.zeros(n_experts, d_model))
        trunc_normal_(self.w_in, d_model)
        trunc_normal_(self.w_out, d_ffw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = self.gate(flat)
        weights = logits.softmax(-1)
        chosen = logits.topk(self.k, dim=-1).indices  # [n, k]
        # Group the (token, slot) pairs by expert with one stable sort and one host sync (the
        # group sizes), instead of a .nonzero() per expert; tokens keep ascending order inside
        # each group and groups are added in expert order, so the sums are the same as a loop's.
        expert_of = chosen.flatten()
        order = torch.argsort(expert_of, stable=True)
        token_of = order // self.k
        sizes = torch.bincount(expert_of, minlength=self.n_experts).tolist()
        out = torch.zeros_like(flat)
        for e, token in enumerate(torch.split(token_of, sizes)):
            if token.numel() == 0:
                continue
            h = clamped_swiglu(flat[token] @ self.w_in[e] + self.b_in[e])
            y = (h @ self.w_out[e] + self.b_out[e]) * weights[token, e, None]
            out = out.index_add(0, token, y)
        return out.reshape_as(x)

    def flops_per_token(self) -> int:
        return flops.moe(self.d_model, self.d_ffw, self.n_experts, self.k)


class PEER(nn.Module):
    """Parameter-efficient expert retrieval: C heads share N single-neuron GELU experts.

    Product key-value router; output Σ_heads Σ_k softmax_k(s) · gelu(u·x) · v.
    """

    def __init__(self, d_model: int, n_neurons: int, k: int = 8, n_channels: int = 16,
                 d_key: int = 128):
        super().__init__()
        self.d_model, self.n_neurons, self.k = d_model, n_neurons, k
        self.n_channels, self.d_key = n_channels, d_key
        self.router = ProductKeyValueRouter(d_model, n_neurons, d_key, k, n_channels)
        self.experts = nn.Parameter(torch.empty(2, n_neurons, d_model))
        trunc_normal_(self.experts, n_neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, indices = self.router(x)
        lead, d = x.shape[:-1], x.shape[-1]
        flat_x = x.reshape(-1, 1, d)
        rows = indices.reshape(flat_x.shape[0], -1)
        u, v = F.embedding(rows, self.experts[0]), F.embedding(rows, self.experts[1])
        z = torch.bmm(flat_x, u.transpose(1, 2))  # [n, 1, C*k]
        g = F.gelu(z, approximate="tanh") * scores.softmax(-1).reshape(z.shape)
        return torch.bmm(g, v).reshape(*lead, d)

    def flops_per_token(self) -> int:
        return flops.peer(self.d_model, self.n_neurons, self.d_key, self.k, self.n_channels)
