"""The one table of architectures: where each model family keeps its decoder layers and linears.

Everything that needs to find a layer, an MLP linear or an attention projection asks here, so a
new family is one new row (and its tiny config in tests/test_architectures.py). A model type
that is not here is refused from its config.json, before any weight is read (`check_model_type`).

What the rows leave to transformers, on purpose: the MLP's activation (SiLU for Llama, GELU-tanh
for Gemma: the router of down_proj sees whatever the model's own forward feeds down_proj, i.e.
act(gate(x)) * up(x) with the config's act), Gemma's scaled embedding and pre/post feed-forward
norms, Qwen 3's q/k norms (modules outside the linears we compress). Per-layer attention kinds
(sliding-window and global layers, with their own masks and rotary tables) are `layer_kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    # Mixture of experts: the module (relative to a decoder layer) holding the experts as fused 3-D
    # parameters, transformers 5's layout (gate_up_proj [experts, 2 * inter, hidden], down_proj
    # [experts, hidden, inter]). moe.expert_linears shows every expert as two linears,
    # EXPERTS.<e>.gate_up_proj and EXPERTS.<e>.down_proj, so each is pruned like any linear on the
    # tokens routed to it. Sparse Expansion of such experts is refused (`refuse_expansion`).
    experts: str | None = None


# The Llama-style decoder layer's linears, shared by every row that names them the same way.
_GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_GATED_MLP_INPUTS = (("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))
_SELF_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_SELF_ATTN_INPUTS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",))

_LLAMA = Architecture(
    family="llama",
    # qwen3: q/k norms inside attention; gemma2/gemma3_text: GELU-tanh, scaled embedding, pre/post
    # feed-forward norms, sliding-window layers; granite: scaled embedding, residual and logits.
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
                 "granite"),
    layers="model.layers",
    mlp=_GATED_MLP,
    attention=_SELF_ATTN,
    mlp_input_groups=_GATED_MLP_INPUTS,
    attention_input_groups=_SELF_ATTN_INPUTS,
    neuron_projections=("mlp.gate_proj", "mlp.up_proj"),
)

ARCHITECTURES: tuple[Architecture, ...] = (
    _LLAMA,
    # Gemma 3 with its vision tower: the Llama-style text decoder sits inside the language model (text-only input).
    replace(_LLAMA, family="gemma3", model_types=("gemma3",), layers="model.language_model.layers"),
    # Mixtral / Qwen3-MoE: every MLP is a top-k mixture of fused experts (see `experts`).
    Architecture(
        family="moe",
        model_types=("mixtral", "qwen3_moe"),
        layers="model.layers",
        mlp=(),
        attention=_SELF_ATTN,
        mlp_input_groups=(),
        attention_input_groups=_SELF_ATTN_INPUTS,
        neuron_projections=(),
        experts="mlp.experts",
    ),
    # Qwen2-MoE adds a shared expert (a plain gated MLP every token goes through) to the mixture.
    Architecture(
        family="qwen2_moe",
        model_types=("qwen2_moe",),
        layers="model.layers",
        mlp=("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"),
        attention=_SELF_ATTN,
        mlp_input_groups=(("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
                          ("mlp.shared_expert.down_proj",)),
        attention_input_groups=_SELF_ATTN_INPUTS,
        neuron_projections=("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
        experts="mlp.experts",
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


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for a in ARCHITECTURES for t in a.model_types)


def architecture_for_type(model_type: str | None, where: str = "the model") -> Architecture:
    """The row of `model_type`; a one-line refusal naming it, the supported types and the fix."""
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise UsageError(
        f"unsupported model type '{model_type}' ({where}); supported: {', '.join(supported_model_types())}. "
        "Use a model of a supported type, or add its row to sparse_expansion/arch.py (docs/ARCHITECTURE.md)")


def check_config(config: dict, where: str = "the model") -> Architecture:
    """Refuse, from config.json's contents alone (before any weight is read), what the table cannot
    handle: an unknown model type, or a MoE whose layers are not all mixtures (dense MLP layers
    between them would need a second set of target names)."""
    model_type = config.get("model_type")
    arch = architecture_for_type(model_type, where)
    if arch.experts is not None and (config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1):
        raise UsageError(f"model type '{model_type}' ({where}) mixes dense MLP layers with expert layers "
                         "(mlp_only_layers / decoder_sparse_step); only models whose every layer is a mixture "
                         "are supported")
    return arch


def refuse_expansion(arch: Architecture, model_type: str | None) -> None:
    """Sparse Expansion of fused MoE experts is not supported: one line, before anything loads."""
    if arch.experts is not None:
        raise UsageError(f"expand does not support model type '{model_type}': its MLPs are mixtures of fused "
                         "experts; prune it instead (`sparse-expansion prune`, every expert's linears are pruned) "
                         "or expand a dense model")


def architecture_of(model: nn.Module) -> Architecture:
    """Look the model up by its config's model_type; a clear error names what was found instead."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    kinds = sorted({type(m).__name__ for m in model.modules()})[:12]
    raise UsageError(
        f"unsupported model type '{model_type}' (modules found: {', '.join(kinds)}); "
        f"supported: {', '.join(supported_model_types())}"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(architecture_of(model).layers)


def layer_kinds(model: nn.Module) -> tuple[str, ...]:
    """Each decoder layer's attention kind: the text config's `layer_types` ('sliding_attention',
    'full_attention': Gemma 2/3, Qwen with sliding windows), or one kind for all layers. The model
    gives layers of different kinds different masks and rotary tables, so whatever replays a
    layer's keyword arguments must take them from a layer of the same kind (engine.py)."""
    layers = decoder_layers(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kinds = getattr(config, "layer_types", None)
    if not kinds or len(kinds) != len(layers):
        return ("all",) * len(layers)
    return tuple(str(k) for k in kinds)


def mlp_activation(config) -> str | None:
    """The MLP activation's name as the model's forward applies it: Gemma 2/3 name it
    `hidden_activation` (GELU-tanh) and have no `hidden_act`, so code that reads only `hidden_act`
    with a SiLU default gets Gemma wrong; read it here."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_activation", "hidden_act", "activation_function"):
        value = getattr(text, key, None)
        if isinstance(value, str):
            return value
    return None


def num_experts(model: nn.Module) -> int:
    """Experts per MoE layer (0 for a dense model), read from the first layer's experts module."""
    arch = architecture_of(model)
    if arch.experts is None:
        return 0
    experts = decoder_layers(model)[0].get_submodule(arch.experts)
    return int(experts.num_experts)


def expert_groups(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Each expert's linears as their own input groups (an expert sees only the tokens routed to it)."""
    arch = architecture_of(model)
    return tuple((f"{arch.experts}.{e}.{proj}",) for e in range(num_experts(model))
                 for proj in ("gate_up_proj", "down_proj"))


def mlp_names(model: nn.Module) -> tuple[str, ...]:
    """The MLP linears of a decoder layer, every expert's included."""
    return architecture_of(model).mlp + tuple(name for (name,) in expert_groups(model))


def target_groups(model: nn.Module, targets: str = "mlp") -> tuple[tuple[str, ...], ...]:
    """Linears to compress in each decoder layer, grouped by shared input: 'mlp' or 'all'."""
    arch = architecture_of(model)
    mlp = arch.mlp_input_groups + expert_groups(model)
    if targets == "mlp":
        return mlp
    if targets == "all":
        return arch.attention_input_groups + mlp
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


def set_output_head(model: nn.Module, head: nn.Module) -> None:
    """Make `head` (a quantized LM head) the model's output embeddings; a tied head is untied, and the
    token embedding keeps its float weights."""
    model.set_output_embeddings(head)
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
