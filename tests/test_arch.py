"""The architecture table against the real transformers classes of every model type it names."""

import pytest
import torch
from helpers import tiny_model

from sparse_expansion.arch import ARCHITECTURES, architecture_of, decoder_layers, is_linear_like, linear_weight
from sparse_expansion.engine import calibrate
from sparse_expansion.expand import ExpandCompressor, ExpandConfig, SparseExpertLinear
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity

LLAMA_LIKE = [t for a in ARCHITECTURES if a.family in ("llama", "phi3") for t in a.model_types]


def tiny_of_type(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=64,
                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", LLAMA_LIKE)
def test_every_named_module_exists_and_is_a_linear(model_type):
    model = tiny_of_type(model_type)
    arch = architecture_of(model)
    assert len(decoder_layers(model)) == 2
    for layer in decoder_layers(model):
        for name in (*arch.mlp, *arch.attention):
            assert is_linear_like(layer.get_submodule(name)), (model_type, name)
        grouped = [name for group in arch.mlp_input_groups + arch.attention_input_groups for name in group]
        assert sorted(grouped) == sorted((*arch.mlp, *arch.attention))


def test_phi3_fused_projections_prune_and_expand():
    """Phi-3 keeps gate and up in one linear (and q, k, v in another): each is compressed whole."""
    ids = torch.randint(2, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_of_type("phi3")
    calibrate(model, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("2:4"))), targets="all", progress=False)
    for layer in decoder_layers(model):
        for name in ("mlp.gate_up_proj", "mlp.down_proj", "self_attn.qkv_proj", "self_attn.o_proj"):
            w = linear_weight(layer.get_submodule(name))
            assert (w != 0).reshape(w.shape[0], -1, 4).sum(-1).eq(2).all(), name
    expanded = tiny_of_type("phi3")
    calibrate(expanded, ids, ExpandCompressor(ExpandConfig(experts=2, sparsity=parse_sparsity("0.5"))),
              progress=False)
    fused = decoder_layers(expanded)[0].get_submodule("mlp.gate_up_proj")
    assert isinstance(fused, SparseExpertLinear) and fused.out_features == 128
    assert torch.isfinite(expanded(ids).logits).all()


def test_table_rows_do_not_share_model_types():
    types = [t for a in ARCHITECTURES for t in a.model_types]
    assert len(types) == len(set(types))


def test_gpt2_conv1d_weight_is_read_as_out_by_in():
    model = tiny_model("gpt2")
    c_fc = decoder_layers(model)[0].get_submodule("mlp.c_fc")
    assert linear_weight(c_fc).shape == (64, 32) and c_fc.weight.shape == (32, 64)
