"""Mixture-of-experts layers whose experts transformers 5 stores as fused 3-D parameters.

Mixtral, Qwen2-MoE and Qwen3-MoE keep a layer's experts as `gate_up_proj` [experts, 2 * inter,
hidden] and `down_proj` [experts, hidden, inter], with no nn.Linear per expert. To prune every
expert like any linear, `expert_linears(model)` shows them, for the time of a calibration, as
`<experts>.<e>.gate_up_proj` and `<experts>.<e>.down_proj` nn.Linears whose weights are views of
the fused tensors (a weight written in place lands in the fused parameter) and runs the same
top-k forward through them, so the engine's input hooks see exactly the tokens routed to each
expert. On exit the original modules are back, holding the pruned weights: a pruned MoE saves and
loads as the plain transformers model it is. (`arch.Architecture.experts` names the module.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .arch import architecture_of, decoder_layers


def _view_linear(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear without bias whose weight shares `weight`'s storage ([out, in])."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


class ExpertLinears(nn.ModuleList):
    """A fused experts module seen as one (gate_up_proj, down_proj) pair of linears per expert,
    with the fused module's forward(hidden [tokens, hidden], top_k_index, top_k_weights)."""

    def __init__(self, fused: nn.Module) -> None:
        experts = []
        for e in range(fused.gate_up_proj.shape[0]):
            expert = nn.Module()
            expert.gate_up_proj = _view_linear(fused.gate_up_proj.data[e])
            expert.down_proj = _view_linear(fused.down_proj.data[e])
            experts.append(expert)
        super().__init__(experts)
        self.num_experts = len(experts)
        self.act_fn = fused.act_fn

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for e, expert in enumerate(self):
            token, slot = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            gate, up = expert.gate_up_proj(hidden[token]).chunk(2, dim=-1)
            y = expert.down_proj(self.act_fn(gate) * up) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def is_fused_experts(module: nn.Module) -> bool:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3


@contextlib.contextmanager
def expert_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, every MoE layer's fused experts are an ExpertLinears (a no-op for a
    dense model); the fused modules, with whatever was written into their weights, come back after."""
    name = architecture_of(model).experts
    swapped: list[tuple[nn.Module, nn.Module]] = []
    if name is not None:
        for layer in decoder_layers(model):
            fused = layer.get_submodule(name)
            if not is_fused_experts(fused):
                raise TypeError(f"{type(fused).__name__} at {name} does not hold fused 3-D expert weights")
            layer.set_submodule(name, ExpertLinears(fused))
            swapped.append((layer, fused))
    try:
        yield
    finally:
        for layer, fused in swapped:
            layer.set_submodule(name, fused)


def experts_cost(module: nn.Module, top_k: int) -> tuple[int, int]:
    """(FLOPs per token, stored non-zeros) of fused experts: a token goes through `top_k` of them,
    counted as top_k times the mean expert's non-zeros (2 FLOPs each)."""
    nonzeros = int((module.gate_up_proj != 0).sum()) + int((module.down_proj != 0).sum())
    per_expert = nonzeros / module.gate_up_proj.shape[0]
    return round(2 * top_k * per_expert), nonzeros
