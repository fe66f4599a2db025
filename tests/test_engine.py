"""The layer-sequential engine on tiny random models of every family."""

import pytest
import torch
from helpers import FAMILIES, forward_inputs, tiny_model

from sparse_expansion.arch import architecture_of, decoder_layers, linear_weight, target_groups, target_names
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
    expected = forward_inputs(model, ids, target_names(model, "all"))
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


# --- true-sequential: each group calibrated on the groups compressed before it -------------------------

class HalveGroups(RecordingIdentity):
    """Halves every target linear, group by group (finish_groups), remembering what each group was shown."""

    def start_layer(self, index, layer, groups):
        super().start_layer(index, layer, groups)
        self.layer, self.left = layer, list(groups)

    def finish_groups(self, groups):
        out = {}
        for group in groups:
            self.left.remove(group)
            for name in group:
                out[name] = linear_weight(self.layer.get_submodule(name)).detach() * 0.5
        return out

    def finish_layer(self):
        return self.finish_groups(tuple(self.left))


@pytest.mark.parametrize("family", FAMILIES)
def test_true_sequential_observes_each_group_after_the_groups_before_it_are_compressed(family):
    """With every group halved in turn, each layer's last group is observed on what the finished model feeds
    it (every earlier group already halved); layer 0's first group sees what it sees without the option,
    and its last group differs from what it sees without it (the layer's dense inputs)."""
    ids = windows()
    firsts = [group[0] for group in target_groups(tiny_model(family), "all")]
    model = tiny_model(family)
    rec = HalveGroups()
    calibrate(model, ids, rec, targets="all", batch_size=2, progress=False, true_sequential=True)
    final = forward_inputs(model, ids, firsts)
    for i in range(len(decoder_layers(model))):
        assert torch.allclose(torch.cat(rec.seen[(i, firsts[-1])]), final[(i, firsts[-1])], atol=1e-5)
    plain = HalveGroups()
    calibrate(tiny_model(family), ids, plain, targets="all", batch_size=2, progress=False)
    assert torch.allclose(torch.cat(plain.seen[(0, firsts[0])]), torch.cat(rec.seen[(0, firsts[0])]))
    assert not torch.allclose(torch.cat(plain.seen[(0, firsts[-1])]), torch.cat(rec.seen[(0, firsts[-1])]))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # the cut passes cleaned up


def test_true_sequential_sparsegpt_solves_down_proj_on_the_pruned_gate_and_up():
    """SparseGPT group by group: layer 0's gate and up come out as without the option (same inputs), its
    down_proj is SparseGPT of the original weight on the Hessian of what the pruned gate and up feed it."""
    from sparse_expansion.prune.sparsegpt import sparsegpt_solve
    from sparse_expansion.prune.stats import HessianStat

    ids, config = windows(), SparseGPTConfig(parse_sparsity("0.5"))
    down = linear_weight(decoder_layers(tiny_model("llama"))[0].mlp.down_proj).detach().clone()
    model, plain = tiny_model("llama"), tiny_model("llama")
    calibrate(model, ids, PruneCompressor(config), batch_size=2, progress=False, true_sequential=True)
    calibrate(plain, ids, PruneCompressor(config), batch_size=2, progress=False)
    mlp, plain_mlp = decoder_layers(model)[0].mlp, decoder_layers(plain)[0].mlp
    for name in ("gate_proj", "up_proj"):
        assert torch.equal(linear_weight(mlp.get_submodule(name)), linear_weight(plain_mlp.get_submodule(name)))
    stat = HessianStat()
    handle = mlp.down_proj.register_forward_hook(lambda _m, args, _o: stat.add(args[0].reshape(-1, args[0].shape[-1])))
    for start in (0, 2):
        model(ids[start:start + 2], use_cache=False)
    handle.remove()
    want, _ = sparsegpt_solve(down, stat.value(), config.sparsity)
    got = linear_weight(mlp.down_proj)
    assert torch.equal(got == 0, want == 0) and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, linear_weight(plain_mlp.down_proj), atol=1e-3)


def test_true_sequential_expansion_routes_down_proj_on_the_experts_outputs():
    """Sparse Expansion group by group: layer 0's gate / up experts as without the option; down_proj's router
    and experts fit on what the gate / up experts produce, so they differ; the model still runs."""
    from sparse_expansion.expand import ExpandCompressor, ExpandConfig

    ids, config = windows(n=8), ExpandConfig(experts=2, sparsity=parse_sparsity("0.5"))
    model, plain = tiny_model("llama"), tiny_model("llama")
    calibrate(model, ids, ExpandCompressor(config), batch_size=4, progress=False, true_sequential=True)
    calibrate(plain, ids, ExpandCompressor(config), batch_size=4, progress=False)
    mlp, plain_mlp = decoder_layers(model)[0].mlp, decoder_layers(plain)[0].mlp
    assert torch.equal(mlp.gate_proj.dense_experts(), plain_mlp.gate_proj.dense_experts())
    assert not torch.allclose(mlp.down_proj.dense_experts(), plain_mlp.down_proj.dense_experts(), atol=1e-3)
    assert torch.isfinite(model(ids).logits).all()
