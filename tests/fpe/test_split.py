import copy

import pytest
import torch

from sparse_expansion.fpe import dnf
from sparse_expansion.fpe.mlp import MaskedMLP, MLPConfig, MLPTrainConfig, count_nonzeros, train_epochs
from sparse_expansion.fpe.rules import RULES, SplitInputs, clause_partition
from sparse_expansion.fpe.split import clause_collisions, split_and_prune

DISJOINT = [name for name, rule in RULES.items() if rule.disjoint]


def make(in_f=12, hidden=(6,), out=3, act="relu", seed=0):
    torch.manual_seed(seed)
    return MaskedMLP(MLPConfig(in_f, hidden, out, act))


@pytest.mark.parametrize("rule", DISJOINT)
@pytest.mark.parametrize("alpha", [2, 3])
def test_children_cover_every_parent_input_exactly_once(rule, alpha):
    model = make()
    clauses = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    parent_in, parent_out = model.layers[0], model.layers[1]
    assert bool((parent_in.weight != 0).all())  # so a zero below means "not this child's input"
    wide, info = split_and_prune(model, alpha, rule, clauses=clauses, seed=1, prune=False)
    masks = info.child_masks[0]  # (parents, alpha, inputs)
    assert masks.shape == (6, alpha, 12)
    assert torch.equal(masks.sum(dim=1), torch.ones(6, 12, dtype=torch.long))  # each edge: one child
    w = wide.layers[0].effective_weight().view(6, alpha, 12)
    assert torch.equal((w != 0).sum(dim=1), torch.ones(6, 12, dtype=torch.long))
    assert torch.equal(w.sum(dim=1), parent_in.weight)  # the one child holding an edge holds its weight
    assert torch.equal(w != 0, masks)
    assert torch.allclose(wide.layers[0].bias.view(6, alpha).sum(dim=1), parent_in.bias)
    for c in range(alpha):  # outgoing weights copied to every child
        assert torch.equal(wide.layers[1].weight[:, c::alpha], parent_out.weight)
    assert torch.equal(wide.layers[1].bias, parent_out.bias)
    # after pruning: the non-zero count is the parent's, and every survivor is a parent's weight
    pruned, info = split_and_prune(model, alpha, rule, clauses=clauses, seed=1)
    assert count_nonzeros(pruned) == count_nonzeros(model) == info.nonzeros
    kept = pruned.layers[0].effective_weight().view(6, alpha, 12)
    assert bool(((kept == 0) | (kept == w)).all())


def test_overlapping_control_shares_inputs_and_dense_wide_keeps_all():
    model = make(in_f=40)
    _, info = split_and_prune(model, 2, "overlapping", seed=0, overlap=0.5)
    per_edge = info.child_masks[0].sum(dim=1)
    assert per_edge.min() >= 1 and (per_edge == 2).any()
    _, info = split_and_prune(model, 2, "dense-wide", seed=0)
    assert bool(info.child_masks[0].all())


@pytest.mark.parametrize("hidden", [(6,), (5, 4, 3)])
def test_split_is_exact_with_identity_activation(hidden):
    model = make(hidden=hidden, act="identity")
    with torch.no_grad():  # non-zero biases everywhere so their split is exercised too
        for layer in model.layers:
            layer.bias.uniform_(-1, 1)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    for rule in ("random", "feature"):
        wide, info = split_and_prune(model, 2, rule, seed=0, prune=False)
        assert wide.config.hidden == tuple(2 * h for h in hidden)
        torch.testing.assert_close(wide(x), model(x), rtol=1e-5, atol=1e-5)


def test_split_changes_function_with_relu_before_pruning():
    # sanity check that the exactness test can fail: ReLU is not additive over the split
    model = make(act="relu")
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    wide, _ = split_and_prune(model, 2, "random", seed=0, prune=False)
    assert not torch.allclose(wide(x), model(x), atol=1e-4)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("hidden", [(8,), (8, 6, 4)])
@pytest.mark.parametrize("alpha", [2, 4])
def test_pruned_nonzeros_equal_parent_exactly(rule, hidden, alpha):
    if rule == "clause" and len(hidden) > 1:
        pytest.skip("the clause rule splits the first layer only")
    model = make(in_f=16, hidden=hidden, out=5)
    clauses = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    layers = [0] if rule == "clause" else None
    wide, info = split_and_prune(model, alpha, rule, layers=layers, clauses=clauses, seed=2)
    assert info.nonzeros_before_pruning > count_nonzeros(model)
    assert count_nonzeros(wide) == count_nonzeros(model) == info.nonzeros
    assert wide.config.hidden[0] == hidden[0] * alpha


def test_pruning_is_exact_with_tied_magnitudes():
    model = make(in_f=10, hidden=(4,), out=2)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.fill_(0.5)
            layer.bias.fill_(0.1)
    wide, _ = split_and_prune(model, 2, "dense-wide", seed=0)
    assert count_nonzeros(wide) == count_nonzeros(model)


def test_masked_weights_stay_zero_through_training():
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x[:, 0] + x[:, 5] > 0).long()
    model = make(out=2)
    wide, _ = split_and_prune(model, 2, "random", seed=0)
    masks = [layer.mask.clone() for layer in wide.layers]
    before = [layer.weight.detach().clone() for layer in wide.layers]
    tc = MLPTrainConfig(lr=1e-2, weight_decay=1e-2, batch_size=32)
    train_epochs(wide, x, y, 5, tc, torch.Generator().manual_seed(0))
    changed = False
    for layer, mask, w0 in zip(wide.layers, masks, before, strict=True):
        assert torch.equal(layer.mask, mask)  # masks fixed
        assert bool((layer.weight[mask == 0] == 0).all())  # stored weights stay zero
        changed |= not torch.equal(layer.weight[mask == 1], w0[mask == 1])
    assert changed  # training did move the live weights
    # and the gradient reaching a masked entry is exactly zero
    wide.zero_grad()
    torch.nn.functional.cross_entropy(wide(x), y).backward()
    layer = wide.layers[0]
    assert bool((layer.weight.grad[layer.mask == 0] == 0).all())
    assert count_nonzeros(wide) <= count_nonzeros(model)


def test_clause_split_puts_each_clause_in_one_child():
    task = dnf.make_task(24, 6, 3, seed=0)  # 6·3 ≤ 24: clauses share no variable
    inputs = SplitInputs(torch.Generator().manual_seed(0), clauses=task.clauses)
    masks = clause_partition(torch.zeros(8, 24), 2, inputs)
    for p in range(8):
        for clause in task.clauses:
            holders = masks[p][:, clause].any(dim=1)
            assert int(holders.sum()) == 1  # exactly one child holds any literal of the clause
            child = int(holders.nonzero())
            assert bool(masks[p, child, clause].all())  # and it holds all of them
        per_child = [sum(bool(masks[p, c, cl].all()) for cl in task.clauses) for c in range(2)]
        assert per_child == [3, 3]  # clauses dealt evenly


def test_clause_collisions_drop_for_clause_split_and_not_for_dense():
    task = dnf.make_task(24, 6, 3, seed=0)
    model = make(in_f=24, hidden=(8,), out=1)
    dense = clause_collisions(model.layers[0].effective_weight(), task.clauses)
    assert dense["clauses_per_neuron"] == 6 and dense["collisions_per_neuron"] == 15
    wide, _ = split_and_prune(model, 2, "clause", clauses=task.clauses, seed=0, prune=False)
    split = clause_collisions(wide.layers[0].effective_weight(), task.clauses)
    assert split["clauses_per_neuron"] == 3 and split["partial_clause_fraction"] == 0
    rand, _ = split_and_prune(model, 2, "random", seed=0, prune=False)
    assert clause_collisions(rand.layers[0].mask, task.clauses)["partial_clause_fraction"] > 0


def test_split_and_prune_is_deterministic_and_leaves_parent_alone():
    model = make()
    snapshot = copy.deepcopy(model.state_dict())
    a, _ = split_and_prune(model, 2, "random", seed=5)
    b, _ = split_and_prune(model, 2, "random", seed=5)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_bad_inputs_raise():
    model = make()
    with pytest.raises(ValueError):
        split_and_prune(model, 2, "nope")
    with pytest.raises(ValueError):
        split_and_prune(model, 2, "clause")  # no clauses given
    with pytest.raises(ValueError):
        split_and_prune(make(in_f=3), 4, "random")
