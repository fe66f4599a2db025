"""The layer-sequential engine on tiny random models of every family."""

import pytest
import torch
from helpers import FAMILIES, tiny_model

from sparse_expansion.arch import architecture_of, decoder_layers, linear_weight, target_names
from sparse_expansion.engine import LayerCompressor, calibrate
from sparse_expansion.errors import UsageError
from sparse_expansion.methods import METHODS, PRUNING_METHODS, make_config
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity


def windows(n=4, seqlen=16, vocab=128, seed=0):
    return torch.randint(2, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


class RecordingIdentity(LayerCompressor):
    """Changes nothing; remembers every input it was shown."""

    def __init__(self):
        self.seen = {}

    def start_layer(self, index, layer, groups):
        self.index, self.groups = index, groups

    def observe(self, group, inputs):
        self.seen.setdefault((self.index, group[0]), []).append(inputs.clone())

    def finish_layer(self):
        return {}


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_compressor_keeps_logits(family):
    model = tiny_model(family)
    ids = windows()
    before = model(ids).logits
    calibrate(model, ids, RecordingIdentity(), targets="all", batch_size=3, progress=False)
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_sees_the_inputs_a_full_forward_pass_sees(family):
    """Layer-sequential capture (masks, rotary embeddings passed along) equals the real forward."""
    model = tiny_model(family)
    ids = windows()
    expected = {}
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):
        for name in target_names(model, "all"):
            def hook(_m, args, _o, key=(i, name)):
                expected[key] = args[0].reshape(-1, args[0].shape[-1]).clone()
            hooks.append(layer.get_submodule(name).register_forward_hook(hook))
    model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    rec = RecordingIdentity()
    calibrate(model, ids, rec, targets="all", batch_size=2, progress=False)
    assert rec.seen, "no inputs observed"
    for key, batches in rec.seen.items():
        assert torch.allclose(torch.cat(batches), expected[key], atol=1e-5), key


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", PRUNING_METHODS)
def test_prune_reaches_sparsity_on_every_family(family, method):
    model = tiny_model(family)
    comp = METHODS[method].compressor(make_config(method, parse_sparsity("0.5")))
    calibrate(model, windows(), comp, progress=False)
    arch = architecture_of(model)
    for layer in decoder_layers(model):
        for name in arch.mlp:
            w = linear_weight(layer.get_submodule(name))
            assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-9)
        for name in arch.attention:  # default targets: MLP only
            assert (linear_weight(layer.get_submodule(name)) != 0).all()
    assert len(comp.record()) == len(arch.mlp) * len(decoder_layers(model))


def test_targets_all_prunes_attention_too():
    model = tiny_model("llama")
    calibrate(model, windows(), PruneCompressor(SparseGPTConfig(parse_sparsity("2:4"))), targets="all",
              progress=False)
    q = linear_weight(decoder_layers(model)[1].get_submodule("self_attn.q_proj"))
    assert (q != 0).reshape(q.shape[0], -1, 4).sum(-1).eq(2).all()


def test_later_layers_calibrate_on_compressed_outputs():
    """Layer 1's observed inputs must differ between a dense and a pruned layer 0."""
    ids = windows()
    dense, pruned = RecordingIdentity(), None
    model = tiny_model("llama")
    calibrate(model, ids, dense, progress=False)

    class PruneThenRecord(RecordingIdentity):
        def finish_layer(self):
            if self.index == 0:
                return {"mlp.down_proj": torch.zeros_like(linear_weight(layer0.mlp.down_proj))}
            return {}

    model = tiny_model("llama")
    layer0 = decoder_layers(model)[0]
    pruned = PruneThenRecord()
    calibrate(model, ids, pruned, progress=False)
    key = (1, "mlp.gate_proj")
    assert not torch.allclose(torch.cat(dense.seen[key]), torch.cat(pruned.seen[key]))
    assert torch.allclose(torch.cat(dense.seen[(0, "mlp.gate_proj")]), torch.cat(pruned.seen[(0, "mlp.gate_proj")]))


def test_unsupported_model_names_what_it_found():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=64, is_decoder=True))
    with pytest.raises(UsageError, match="unsupported model type 'bert'.*BertLayer"):
        calibrate(model, windows(vocab=64), RecordingIdentity(), progress=False)


class ZeroOneRow(LayerCompressor):
    """Zeroes row 0 of every target linear; records which layers it saw and in what order."""

    needs_calibration = False

    def __init__(self):
        self.order = []

    def start_layer(self, index, layer, groups):
        self.index, self.layer, self.groups = index, layer, groups
        self.order.append(index)

    def observe(self, group, inputs):
        raise AssertionError("a data-free compressor must not be shown inputs")

    def finish_layer(self):
        out = {}
        for group in self.groups:
            for name in group:
                w = linear_weight(self.layer.get_submodule(name)).detach().clone()
                w[0] = 0
                out[name] = w
        return out


@pytest.mark.parametrize("family", FAMILIES)
def test_data_free_compressor_runs_no_forward_and_writes_weights_in_place(family):
    model = tiny_model(family)
    comp = ZeroOneRow()
    calibrate(model, None, comp, progress=False)
    assert comp.order == list(range(len(decoder_layers(model))))
    for layer in decoder_layers(model):
        for name in architecture_of(model).mlp:
            w = linear_weight(layer.get_submodule(name))
            assert (w[0] == 0).all() and (w[1:] != 0).all(), name
