"""The one table of architectures: where each model family keeps its decoder layers and linears.

Everything that needs to find a layer, an MLP linear or an attention projection asks here, so a
new family is one new row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UsageError


@dataclass(frozen=True)
class Architecture:
    family: str
    model_types: tuple[str, ...]
    layers: str  # dotted path from the *ForCausalLM model to the ModuleList of decoder layers
    mlp: tuple[str, ...]  # MLP linears, relative to a decoder layer, in forward order
    attention: tuple[str, ...]  # attention projections, relative to a decoder layer
    # Linears that read the same input (one router / one input statistic can serve them all).
    mlp_input_groups: tuple[tuple[str, ...], ...]
    attention_input_groups: tuple[tuple[str, ...], ...]
    # The MLP input projections whose rows are "neurons" (pre-activation outputs).
    neuron_projections: tuple[str, ...]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"),
        layers="model.layers",
        mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        mlp_input_groups=(("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)),
        attention_input_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",)),
        neuron_projections=("mlp.gate_proj", "mlp.up_proj"),
    ),
    # Phi-3 fuses its projections: gate_up_proj is one linear holding gate (first half of the rows)
    # and up (second half), qkv_proj one holding q, k and v. A fused linear is compressed as the
    # one matrix it is (for Sparse Expansion: one router serves gate and up, as for Llama).
    Architecture(
        family="phi3",
        model_types=("phi3",),
        layers="model.layers",
        mlp=("mlp.gate_up_proj", "mlp.down_proj"),
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        mlp_input_groups=(("mlp.gate_up_proj",), ("mlp.down_proj",)),
        attention_input_groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",)),
        neuron_projections=("mlp.gate_up_proj",),
    ),
    Architecture(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        attention=("attention.query_key_value", "attention.dense"),
        mlp_input_groups=(("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",)),
        attention_input_groups=(("attention.query_key_value",), ("attention.dense",)),
        neuron_projections=("mlp.dense_h_to_4h",),
    ),
    Architecture(
        family="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        mlp=("fc1", "fc2"),
        attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        mlp_input_groups=(("fc1",), ("fc2",)),
        attention_input_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",)),
        neuron_projections=("fc1",),
    ),
    Architecture(
        family="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        mlp=("mlp.c_fc", "mlp.c_proj"),
        attention=("attn.c_attn", "attn.c_proj"),
        mlp_input_groups=(("mlp.c_fc",), ("mlp.c_proj",)),
        attention_input_groups=(("attn.c_attn",), ("attn.c_proj",)),
        neuron_projections=("mlp.c_fc",),
    ),
)


def architecture_of(model: nn.Module) -> Architecture:
    """Look the model up by its config's model_type; a clear error names what was found instead."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    kinds = sorted({type(m).__name__ for m in model.modules()})[:12]
    supported = ", ".join(t for a in ARCHITECTURES for t in a.model_types)
    raise UsageError(
        f"unsupported model type '{model_type}' (modules found: {', '.join(kinds)}); "
        f"supported: {supported}"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(architecture_of(model).layers)


def target_groups(model: nn.Module, targets: str = "mlp") -> tuple[tuple[str, ...], ...]:
    """Linears to compress in each decoder layer, grouped by shared input: 'mlp' or 'all'."""
    arch = architecture_of(model)
    if targets == "mlp":
        return arch.mlp_input_groups
    if targets == "all":
        return arch.attention_input_groups + arch.mlp_input_groups
    raise UsageError(f"unknown --targets '{targets}'; use mlp or all")


def target_names(model: nn.Module, targets: str = "mlp") -> tuple[str, ...]:
    return tuple(name for group in target_groups(model, targets) for name in group)


# --- weights as [out, in], whatever the module stores ------------------------------------------

def is_transposed(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as [in, out]."""
    return type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view for nn.Linear, a transpose for Conv1D)."""
    return module.weight.t() if is_transposed(module) else module.weight


@torch.no_grad()
def set_linear_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an [out, in] weight back in the module's own layout, in place."""
    target = module.weight
    target.copy_(weight.t() if is_transposed(module) else weight)


def in_features(module: nn.Module) -> int:
    return linear_weight(module).shape[1]


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_transposed(module)
