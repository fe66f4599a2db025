"""Asymmetric calibration: the target weight is the least-squares map from the compressed inputs onto the dense
outputs, it leaves a weight alone where the two streams agree, and the engine pairs each token's two inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import forward_inputs, run_cli, tiny_model, windows

from sparse_expansion.arch import decoder_layers, linear_weight, target_groups
from sparse_expansion.engine import calibrate
from sparse_expansion.errors import UsageError
from sparse_expansion.kernels import decompress
from sparse_expansion.methods import check_asymmetric, compress, make_config
from sparse_expansion.models import load_model
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity
from sparse_expansion.prune.asymmetric import asymmetric_target
from sparse_expansion.prune.dense import DenseQuantConfig
from sparse_expansion.prune.stats import HessianStat


def streams(tokens=600, cols=24, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(tokens, cols, generator=gen) @ torch.randn(cols, cols, generator=gen)
    return dense, dense + noise * torch.randn(tokens, cols, generator=gen)


def test_target_is_the_least_squares_map_onto_the_dense_outputs():
    dense, compressed = streams()
    weight = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    stat = HessianStat()
    for chunk in range(0, 600, 200):
        stat.add(compressed[chunk:chunk + 200], reference=dense[chunk:chunk + 200])
    target = asymmetric_target(weight, stat.value(), stat.cross(), percdamp=0.0)
    best = torch.linalg.lstsq(compressed.double(), (dense @ weight.t()).double()).solution.t()
    torch.testing.assert_close(target.double(), best, rtol=1e-4, atol=1e-4)
    loss = lambda w: float((dense @ weight.t() - compressed @ w.t()).square().sum())  # noqa: E731
    assert loss(target) < loss(weight)


def test_target_is_the_weight_itself_where_the_two_streams_agree():
    dense, _ = streams()
    weight = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    stat = HessianStat()
    stat.add(dense, reference=dense)
    assert torch.equal(stat.cross(), stat.value())
    assert torch.equal(asymmetric_target(weight, stat.value(), stat.cross()), weight)
    assert HessianStat().cross() is None


class PairedRecorder(PruneCompressor):
    """SparseGPT that also remembers each (compressed, dense) pair it is shown."""

    def __init__(self, config):
        super().__init__(config)
        self.pairs = {}

    def observe(self, group, inputs, reference=None):
        self.pairs.setdefault((self.index, group[0]), []).append((inputs.clone(), reference.clone()))
        super().observe(group, inputs, reference=reference)


def test_engine_pairs_each_token_with_the_dense_models_input():
    """Every reference the compressor gets is the dense model's input for the same tokens; group by group (the
    option implies true-sequential), layer 0's gate and up come out as with plain true-sequential (their two
    streams agree), its down_proj does not (it sees the pruned gate / up and aims at the dense ones' outputs),
    nor does any linear of layer 1."""
    ids, config = windows(), SparseGPTConfig(parse_sparsity("0.5"))
    dense = tiny_model("llama")
    want = forward_inputs(dense, ids, [g[0] for g in target_groups(dense, "mlp")], batch=2)
    model, plain = tiny_model("llama"), tiny_model("llama")
    rec = PairedRecorder(config)
    calibrate(model, ids, rec, batch_size=2, progress=False, asymmetric=True)
    calibrate(plain, ids, PruneCompressor(config), batch_size=2, progress=False, true_sequential=True)
    assert set(rec.pairs) == set(want)
    for key, pairs in rec.pairs.items():
        torch.testing.assert_close(torch.cat([reference for _, reference in pairs]), want[key], rtol=0, atol=1e-5)
    assert not torch.allclose(rec.pairs[(1, "mlp.gate_proj")][0][0], rec.pairs[(1, "mlp.gate_proj")][0][1])
    first, second = (decoder_layers(m) for m in (model, plain))
    for name in ("gate_proj", "up_proj", "down_proj"):
        a, b = (linear_weight(layers[0].mlp.get_submodule(name)) for layers in (first, second))
        assert torch.equal(a, b) == (name != "down_proj"), name
    assert not torch.equal(linear_weight(first[1].mlp.down_proj), linear_weight(second[1].mlp.down_proj))


def test_asymmetric_is_refused_where_it_does_not_apply(tmp_path, tiny_model_dir, text_file, capsys):
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "wanda", "--sparsity", "0.5", "--asymmetric",
                            "--calib", text_file, "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "works with `prune --method sparsegpt` and `expand`" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    with pytest.raises(UsageError, match="mixture of experts"):
        check_asymmetric("sparsegpt", tiny_moe())


def test_float_asymmetric_gives_the_dense_linears_their_targets_unquantized(tmp_path, tiny_model_dir, text_file,
                                                                             capsys):
    """Without --quantize-dense the attention projections and the LM head still aim at the dense outputs, in
    float: layer 0's q / k / v (whose two streams agree) come out as they were, later ones and the head do
    not, and the embedding keeps its weights."""
    from sparse_expansion.artifact import read_manifest

    out = tmp_path / "float-asym"
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "sparsegpt", "--sparsity", "0.5", "--asymmetric",
                            "--calib", text_file, "--calib-windows", "4", "--seqlen", "32", "--out", out], capsys)
    assert code == 0, err
    record = read_manifest(out)["record"]
    assert record["asymmetric"] is True and record["dense_quantization"]["bits"] is None
    assert record["dense_quantization"]["head"] == {"bits": None, "group_size": None, "asymmetric": True}
    original, _ = load_model(tiny_model_dir)
    model, _ = load_model(str(out))
    layers = [decoder_layers(m) for m in (original, model)]
    assert torch.equal(layers[0][0].self_attn.q_proj.weight, layers[1][0].self_attn.q_proj.weight)
    assert not torch.equal(layers[0][1].self_attn.q_proj.weight, layers[1][1].self_attn.q_proj.weight)
    assert type(model.lm_head) is torch.nn.Linear
    assert not torch.equal(original.lm_head.weight, model.lm_head.weight)
    assert torch.equal(original.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_float_asymmetric_model_saved_then_loaded_is_the_same(tmp_path, tokenizer):
    from sparse_expansion.artifact import load_artifact, save_artifact

    model, ids = tiny_model("llama"), windows()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    compress(model, ids, make_config("sparsegpt", parse_sparsity("0.5")), progress=False, asymmetric=True)
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    save_artifact(tmp_path / "m", model, tokenizer=tokenizer, record={"kind": "pruned"})
    again, _ = load_artifact(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def tiny_moe():
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=32, shared_expert_intermediate_size=32)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_asymmetric_from_the_command_line_is_recorded(tmp_path, tiny_model_dir, text_file, capsys):
    from sparse_expansion.artifact import read_manifest

    out = tmp_path / "asym"
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "sparsegpt", "--sparsity", "0.5", "--bits", "4",
                            "--group-size", "16", "--quantize-dense", "--asymmetric", "--calib", text_file,
                            "--calib-windows", "4", "--seqlen", "32", "--out", out], capsys)
    assert code == 0, err
    assert read_manifest(out)["record"]["asymmetric"] is True
    expanded = tmp_path / "expanded"
    code, _, err = run_cli(["expand", tiny_model_dir, "--experts", "2", "--sparsity", "0.5", "--bits", "8",
                            "--quantize-dense", "--asymmetric", "--calib", text_file, "--calib-windows", "4",
                            "--seqlen", "32", "--out", expanded], capsys)
    assert code == 0, err
    record = read_manifest(expanded)["record"]
    assert record["asymmetric"] is True and record["true_sequential"] is True
    model, _ = load_model(str(expanded))
    assert torch.isfinite(model(windows()).logits).all()


def test_compress_with_asymmetric_records_it_and_runs_group_by_group():
    """Layer 0's q / k / v see the same inputs in both streams (their GPTQ is as without the option); what
    follows them differs; the run is group by group."""
    config, dense = make_config("sparsegpt", parse_sparsity("0.5")), DenseQuantConfig(8)
    a, b = tiny_model("llama"), tiny_model("llama")
    compress(a, windows(), config, progress=False, true_sequential=True, dense=dense)
    record = compress(b, windows(), config, progress=False, asymmetric=True, dense=dense)
    assert record["asymmetric"] is True and record["true_sequential"] is True
    q = [decompress(m.model.layers[0].self_attn.q_proj.compressed()) for m in (a, b)]
    o = [decompress(m.model.layers[0].self_attn.o_proj.compressed()) for m in (a, b)]
    assert torch.equal(q[0], q[1]) and not torch.equal(o[0], o[1])
    assert not torch.equal(a.model.layers[1].mlp.gate_proj.weight, b.model.layers[1].mlp.gate_proj.weight)


def test_one_expert_with_asymmetric_calibration_is_sparsegpt_with_it():
    """k = 1 is SparseGPT, also aiming at the dense outputs: the expert's cross term and target are the layer's."""
    from sparse_expansion.expand import ExpandCompressor, ExpandConfig, SparseExpertLinear

    sparsity = parse_sparsity("0.5")
    pruned, expanded = tiny_model("llama"), tiny_model("llama")
    calibrate(pruned, windows(), PruneCompressor(SparseGPTConfig(sparsity)), batch_size=2, progress=False,
              asymmetric=True)
    calibrate(expanded, windows(), ExpandCompressor(ExpandConfig(experts=1, sparsity=sparsity)), batch_size=2,
              progress=False, asymmetric=True)
    for lp, le in zip(decoder_layers(pruned), decoder_layers(expanded)):
        for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            module = le.get_submodule(name)
            assert isinstance(module, SparseExpertLinear)
            torch.testing.assert_close(module.dense_experts()[0], linear_weight(lp.get_submodule(name)),
                                       rtol=0, atol=1e-5)


def test_cluster_statistic_keeps_the_layers_cross_term():
    """Split by cluster, the statistic's one cross term is the layer's (the experts share its target)."""
    from sparse_expansion.expand.hessians import ClusterHessianStat

    dense, compressed = streams(tokens=300, cols=8)
    labels = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(2))
    stat, whole = ClusterHessianStat(3, fourth=False), HessianStat()
    for chunk in range(0, 300, 100):
        stat.add(compressed[chunk:chunk + 100], labels[chunk:chunk + 100], reference=dense[chunk:chunk + 100])
        whole.add(compressed[chunk:chunk + 100], reference=dense[chunk:chunk + 100])
    assert stat.has_cross() and not ClusterHessianStat(3, fourth=False).has_cross()
    torch.testing.assert_close(stat.layer_cross(), whole.cross())
    torch.testing.assert_close(stat.layer_hessian(), whole.value(), rtol=1e-5, atol=1e-5)


def head_inputs(model, ids, **kwargs):
    from sparse_expansion.engine import capture_head_inputs

    got = []
    capture_head_inputs(model, ids, got.append, batch_size=2, **kwargs)
    return torch.cat(got)


def test_engine_hands_back_the_dense_models_last_hidden_states():
    """The dense stream leaves the last layer too: given in place of the compressed model's last layer output,
    the LM head sees exactly the dense model's head inputs (final norm included)."""
    ids = windows()
    dense, model = tiny_model("llama"), tiny_model("llama")
    run = calibrate(model, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"))), batch_size=2,
                    progress=False, asymmetric=True)
    assert len(run.dense_outputs) == 2 and run.dense_outputs[0].shape == (2, ids.shape[1], 32)
    want = head_inputs(dense, ids)
    torch.testing.assert_close(head_inputs(model, ids, last_outputs=run.dense_outputs), want, rtol=0, atol=1e-5)
    assert not torch.allclose(head_inputs(model, ids), want, atol=1e-3)
    plain = calibrate(tiny_model("llama"), ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"))),
                      batch_size=2, progress=False)
    assert plain.dense_outputs is None


def test_asymmetric_head_is_plain_gptq_where_the_streams_agree_and_aims_at_dense_logits_otherwise():
    from sparse_expansion.prune.dense import quantize_head

    ids, config = windows(), DenseQuantConfig(4, group_size=16)
    own = []  # the model's own last-layer outputs: the two streams agree
    model = tiny_model("llama")
    keep = lambda _m, _a, out: own.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
    handle = decoder_layers(model)[-1].register_forward_hook(keep)
    with torch.no_grad():
        for start in range(0, ids.shape[0], 2):
            model(ids[start:start + 2])
    handle.remove()
    same, plain = tiny_model("llama"), tiny_model("llama")
    assert quantize_head(same, ids, config, batch_size=2, dense_outputs=own)["asymmetric"] is True
    assert quantize_head(plain, ids, config, batch_size=2)["asymmetric"] is False
    assert torch.equal(decompress(same.lm_head.compressed()), decompress(plain.lm_head.compressed()))

    # on a pruned body the asymmetric head fits the dense model's logits better than GPTQ's own on the same body
    dense, body = tiny_model("llama"), tiny_model("llama")
    run = calibrate(body, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.7"))), batch_size=2,
                    progress=False, asymmetric=True)
    symmetric = copy.deepcopy(body)
    quantize_head(body, ids, config, batch_size=2, dense_outputs=run.dense_outputs)
    quantize_head(symmetric, ids, config, batch_size=2)
    with torch.no_grad():
        dense_logits = dense(ids).logits
        error = [float((m(ids).logits - dense_logits).square().mean()) for m in (symmetric, body)]
    assert error[1] < 0.9 * error[0], error
