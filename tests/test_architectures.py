"""Every row of the architecture table (arch.py), end to end on a tiny random model built from its
transformers config (no download): prune with every method, expand with 2 experts (or its one-line
refusal for fused MoE experts), eval, save -> load with identical logits, generate, and the
remote-code load equal to ours. Adding an architecture = its row in arch.py + its config here."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, tiny_config, tiny_gemma3_multimodal, tiny_tokenizer

from sparse_expansion.arch import (
    ARCHITECTURES,
    architecture_of,
    decoder_layers,
    expert_groups,
    layer_kinds,
    linear_weight,
    mlp_activation,
    supported_model_types,
    target_names,
)
from sparse_expansion.artifact import save_artifact
from sparse_expansion.engine import capture_layer_inputs, run_layer
from sparse_expansion.errors import UsageError
from sparse_expansion.methods import PRUNING_METHODS, compress, make_config
from sparse_expansion.models import load_model
from sparse_expansion.moe import expert_linears
from sparse_expansion.prune import parse_sparsity

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=1, pad_token_id=0)
# A sliding window shorter than the test windows, on a layer of its own: the engine must give each
# layer the mask and rotary table of its own kind.
SLIDING = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": dict(sliding_window=8),
    "qwen2": {},
    "qwen3": dict(head_dim=8),  # q/k norms
    "gemma": dict(head_dim=8),
    "gemma2": dict(head_dim=8, **SLIDING),
    "gemma3_text": dict(head_dim=8, **SLIDING),  # GELU-tanh, scaled embedding, pre/post FF norms
    "olmo": {},
    "olmo2": {},
    "granite": dict(embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=2.0),
    "phi3": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, shared_expert_intermediate_size=48, **MOE),
    "qwen3_moe": dict(num_experts=4, head_dim=8, **MOE),
}
FROM_CONFTEST = ("gpt_neox", "opt", "gpt2")
SEQLEN = 16


def config_of(model_type: str):
    from transformers import AutoConfig

    if model_type in FROM_CONFTEST:
        return tiny_config(model_type)
    if model_type == "gemma3":  # the multimodal wrapper: text decoder plus a (tiny) vision tower
        return tiny_gemma3_multimodal(dict(COMMON, head_dim=8, **SLIDING))
    return AutoConfig.for_model(model_type, **COMMON, **CONFIGS[model_type])


def build(model_type: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_of(model_type), dtype=torch.float32)
    with torch.no_grad():  # random init is tiny; scale up so pruning visibly matters (fused experts too)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                p.normal_(0, 0.2)
    return model.eval()


def windows(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(8, 128, (n, SEQLEN), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def zero_fractions(model) -> dict[str, float]:
    """Every target linear's fraction of zeros, every MoE expert's included."""
    with expert_linears(model):
        return {f"{i}.{name}": float((linear_weight(layer.get_submodule(name)) == 0).float().mean())
                for i, layer in enumerate(decoder_layers(model)) for name in target_names(model)}


ALL_TYPES = supported_model_types()


def test_every_table_row_has_a_tiny_config():
    assert set(ALL_TYPES) == set(CONFIGS) | set(FROM_CONFTEST) | {"gemma3"}


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_layer_by_layer_replay_equals_the_models_forward(model_type):
    """The engine runs each layer on its own with the keyword arguments captured for its kind: the
    hidden states must equal the whole model's (sliding-window and global layers alike)."""
    model = build(model_type)
    ids = windows(2)
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
        inputs = capture_layer_inputs(model, ids, batch_size=2)
        states = inputs.hidden
        layers = decoder_layers(model)
        for i, layer in enumerate(layers[:-1]):  # the last hidden state has the final norm applied
            states = [run_layer(layer, s, kw) for s, kw in zip(states, inputs.kwargs_for(i))]
            torch.testing.assert_close(states[0], reference[i + 1], rtol=1e-5, atol=1e-5)
    if model_type in ("gemma2", "gemma3_text", "gemma3"):
        assert layer_kinds(model) == ("sliding_attention", "full_attention")


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_architecture_end_to_end(model_type, tmp_path, tokenizer, text_file, capsys):
    from transformers import AutoModelForCausalLM
    from transformers.activations import ACT2FN

    source = tmp_path / "source"
    build(model_type).save_pretrained(source)
    tokenizer.save_pretrained(source)
    calib = ["--calib", text_file, "--calib-windows", "2", "--seqlen", SEQLEN]
    arch = architecture_of(build(model_type))
    ids = windows(2, seed=1)

    # prune, every method, through the CLI: every target linear (every expert's) is half zeros
    for method in PRUNING_METHODS:
        out = tmp_path / f"pruned-{method}"
        code, _, err = run_cli(["prune", source, "--method", method, "--sparsity", "0.5", *calib, "--out", out], capsys)
        assert code == 0, err
        pruned, _ = load_model(str(out))
        fractions = zero_fractions(pruned)
        assert fractions and all(abs(f - 0.5) < 0.02 for f in fractions.values()), (method, fractions)
        if arch.experts:
            assert any(".experts.3.down_proj" in name for name in fractions)
    # a pruned folder is a plain transformers folder: plain from_pretrained equals our loader
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(plain, ids), logits(pruned, ids), rtol=0, atol=0)

    if arch.experts:  # fused MoE experts: expansion refused in one line, before any weight is read
        code, _, err = run_cli(["expand", source, "--experts", "2", "--sparsity", "0.5", *calib,
                                "--out", tmp_path / "expanded"], capsys)
        assert code == 2 and f"model type '{model_type}'" in err and "prune it instead" in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "expanded").exists()
        folder = out
    else:  # expand through the library; saved -> loaded gives identical logits
        model = build(model_type)
        config = make_config("sparse_expansion", parse_sparsity("0.5"), experts=2)
        record = compress(model, windows(), config, progress=False)
        folder = tmp_path / "expanded"
        save_artifact(folder, model, tokenizer=tokenizer, record=record)
        loaded, _ = load_model(str(folder))
        expected = logits(model, ids)
        torch.testing.assert_close(logits(loaded, ids), expected, rtol=1e-5, atol=1e-5)
        # remote code (plain transformers + the folder's modeling file) equals our loader
        remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
        torch.testing.assert_close(logits(remote, ids), logits(loaded, ids), rtol=1e-5, atol=1e-5)
        # the MLP activation is the config's (GELU-tanh for Gemma), in both loaders
        mlp = decoder_layers(remote)[0].get_submodule(arch.mlp[0].rsplit(".", 1)[0])
        act = mlp_activation(remote.config)
        if model_type.startswith("gemma"):
            assert act == "gelu_pytorch_tanh"
        if hasattr(mlp, "act_fn"):
            assert type(mlp.act_fn) is type(ACT2FN[act])
            assert type(decoder_layers(loaded)[0].get_submodule(arch.mlp[0].rsplit(".", 1)[0]).act_fn) \
                is type(ACT2FN[act])

    # eval and generate through the CLI, on the expanded folder (the pruned one for a MoE)
    code, stdout, err = run_cli(["eval", folder, "--data", text_file, "--windows", "2", "--seqlen", SEQLEN,
                                 "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["perplexity"] > 1 and result["flops_per_token"] > 0
    code, stdout, err = run_cli(["generate", folder, "--prompt", "To be", "--max-new-tokens", "4",
                                 "--ignore-eos", "--json"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("mode", ["plain", "true_sequential", "asymmetric"])
@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_quantize_dense_on_every_architecture(model_type, mode, tmp_path, tokenizer):
    """--quantize-dense GPTQs every linear pruning leaves dense (attention, GPT-2's transposed Conv1D, the
    LM head after whatever final norm the family has) into int8 codes; saved -> loaded gives identical logits.
    Also group by group (--true-sequential): every family's groups, a MoE's experts among them, in the order
    they run; and against the dense model's outputs (--asymmetric: each family's layer copied and run on the
    dense stream; a mixture of experts is refused in one line)."""
    from sparse_expansion.kernels import QuantizedLinear
    from sparse_expansion.prune.dense import DenseQuantConfig

    model = build(model_type)
    ids = windows(2, seed=1)
    before = logits(model, ids)
    config = make_config("sparsegpt", parse_sparsity("0.5"), bits=8)
    options = {mode: True} if mode != "plain" else {}
    if mode == "asymmetric" and expert_groups(model):
        with pytest.raises(UsageError, match="mixture of experts"):
            compress(model, windows(), config, progress=False, dense=DenseQuantConfig(8), **options)
        return
    record = compress(model, windows(), config, progress=False, dense=DenseQuantConfig(8), **options)
    attention = architecture_of(model).attention
    for layer in decoder_layers(model):
        assert all(isinstance(layer.get_submodule(name), QuantizedLinear) for name in attention)
    assert isinstance(model.get_output_embeddings(), QuantizedLinear)
    assert len(record["dense_quantization"]["linears"]) == len(attention) * len(decoder_layers(model))
    after = logits(model, ids)
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    save_artifact(tmp_path / "q", model, tokenizer=tokenizer, record=record)
    loaded, _ = load_model(str(tmp_path / "q"))
    torch.testing.assert_close(logits(loaded, ids), after, rtol=0, atol=0)


def test_moe_flops_count_the_routed_experts_only():
    """A token goes through top_k of the experts: FLOPs per token grow with top_k, not with the
    number of experts, and pruning the experts halves their share."""
    from sparse_expansion.evaluate import model_costs

    model = build("mixtral")  # 2 layers of 4 experts, top-2, hidden 32, intermediate 64
    per_expert = 2 * 64 * 32 + 32 * 64  # gate_up_proj + down_proj
    experts = 2 * (2 * 2 * per_expert)  # layers x (2 FLOPs x top_k x one expert)
    router = 2 * (2 * 4 * 32)
    dense = model_costs(model)["flops_per_token"]
    linears = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert dense == linears + experts + router  # attention, head, routed experts, routers
    compress(model, windows(), make_config("magnitude", parse_sparsity("0.5")), progress=False)
    assert dense - model_costs(model)["flops_per_token"] == experts // 2


def test_unknown_model_type_is_refused_before_its_weights_load(tmp_path, capsys):
    folder = tmp_path / "mamba"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (folder / "model.safetensors").write_bytes(b"not read")
    for command in (["eval", folder], ["prune", folder, "--method", "magnitude", "--sparsity", "0.5",
                                       "--out", tmp_path / "out"]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "unsupported model type 'mamba'" in err and "arch.py" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_moe_with_dense_layers_is_refused_from_its_config(tmp_path, capsys):
    folder = tmp_path / "qwen2moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_moe", "mlp_only_layers": [0]}))
    code, _, err = run_cli(["eval", folder], capsys)
    assert code == 2 and "mixes dense MLP layers" in err


def test_table_rows_name_distinct_types():
    types = [t for a in ARCHITECTURES for t in a.model_types]
    assert len(types) == len(set(types))


def test_windows_start_with_bos_when_the_tokenizer_prepends_one(tokenizer):
    """Gemma's tokenizer puts <bos> before every text and the model needs it there: calibration and
    evaluation windows then start with it (same shape, last token dropped); a tokenizer that adds
    none (SmolLM2's, the tiny one) leaves the windows exactly as they were."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from sparse_expansion.data import bos_prefix, start_with_bos

    windows = torch.arange(12).reshape(2, 6)
    assert bos_prefix(tokenizer) is None and start_with_bos(windows, tokenizer) is windows
    backend = tiny_tokenizer().backend_tokenizer  # its own copy: the session's tokenizer stays as it is
    with_bos = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                       bos_token="<eos>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", with_bos.eos_token_id)])
    bos = with_bos.bos_token_id
    assert with_bos("to be")["input_ids"][0] == bos and bos_prefix(with_bos) == bos
    started = start_with_bos(windows, with_bos)
    assert started.shape == windows.shape and (started[:, 0] == bos).all()
    assert torch.equal(started[:, 1:], windows[:, :-1])
    assert bos_prefix(tokenizer) is None


def test_neurons_refuses_a_mixture_of_experts_in_one_line(tmp_path, tokenizer, text_file, capsys):
    build("qwen3_moe").save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    code, _, err = run_cli(["neurons", tmp_path / "moe", "--data", text_file, "--windows", "2", "--seqlen", SEQLEN,
                            "--out", tmp_path / "n"], capsys)
    assert code == 2 and "model type 'qwen3_moe' has no dense MLP neurons" in err
    assert "Traceback" not in err and not (tmp_path / "n").exists()
