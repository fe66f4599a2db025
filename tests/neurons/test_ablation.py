"""The ablation prunes exactly the chosen rows and nothing else, and restores the model after."""

from __future__ import annotations

import torch
from helpers import tiny_model

from sparse_expansion.arch import decoder_layers, linear_weight
from sparse_expansion.engine import calibrate
from sparse_expansion.metrics.wasserstein import random_pairs
from sparse_expansion.neurons.ablation import (
    RULES,
    RowPruneCompressor,
    prune_rows,
    run_ablation,
    select_rows,
)
from sparse_expansion.neurons.collect import iter_layer_inputs, neuron_projections
from sparse_expansion.neurons.measure import measure_projection
from sparse_expansion.prune import parse_sparsity, sparsegpt_solve


def _windows(n=4, seqlen=32, seed=0):
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _stats(model, windows):
    pairs = random_pairs(windows.numel(), 40, seed=0)
    out = {}
    for i, x in iter_layer_inputs(model, windows, [0, 1], windows.numel(), progress=False):
        layer = decoder_layers(model)[i]
        out[i] = {n: measure_projection(n, layer.get_submodule(n), x, pairs) for n in neuron_projections(model)}
    return out


def test_prune_rows_touches_only_the_chosen_rows():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 16, generator=g)
    x = torch.randn(200, 16, generator=g)
    hessian = 2 * x.t() @ x / 200
    rows = torch.tensor([1, 5, 7])
    new = prune_rows(weight, rows, hessian, parse_sparsity("0.5"))
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(new[untouched], weight[untouched])
    assert (new[rows] == 0).double().mean().item() == 0.5
    expected, _ = sparsegpt_solve(weight[rows], hessian, parse_sparsity("0.5"))
    assert torch.equal(new[rows], expected)  # exactly SparseGPT on the sub-matrix


def test_select_rows_rules():
    model = tiny_model("llama")
    stats = _stats(model, _windows())[0]["mlp.gate_proj"]
    wd_rows = select_rows("wd", stats, 0.1)
    assert len(wd_rows) == 7  # ceil(0.1 * 64)
    assert set(wd_rows.tolist()) == set(stats.wd.argsort(descending=True)[:7].tolist())
    assert set(select_rows("norm", stats, 0.1).tolist()) == set(stats.norm.argsort(descending=True)[:7].tolist())
    assert torch.equal(select_rows("random", stats, 0.1, seed=3), select_rows("random", stats, 0.1, seed=3))
    assert not torch.equal(select_rows("random", stats, 0.1, seed=3), select_rows("random", stats, 0.1, seed=4))


def test_engine_compressor_changes_only_chosen_rows():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {(1, "mlp.gate_proj"): torch.tensor([0, 3, 9]), (0, "mlp.up_proj"): torch.tensor([2, 60])}
    calibrate(model, _windows(), RowPruneCompressor(rows, parse_sparsity("0.75")), batch_size=2, progress=False)
    changed = set()
    for key, value in model.state_dict().items():
        if not torch.equal(value, before[key]):
            changed.add(key)
            diff_rows = (value != before[key]).any(1).nonzero().flatten().tolist()
            layer = int(key.split(".")[2])
            name = ".".join(key.split(".")[3:5])
            assert set(diff_rows) <= set(rows[(layer, name)].tolist())
            assert (value[rows[(layer, name)]] == 0).double().mean() >= 0.74
    assert changed == {"model.layers.1.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"}


def test_run_ablation_restores_the_model_and_reports_every_rule():
    model = tiny_model("llama")
    windows = _windows()
    stats = _stats(model, windows)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for hessians, seeds in (("dense", 2), ("sequential", 1)):
        rows = run_ablation(model, stats, windows, windows[:1], fractions=[0.1], sparsity=parse_sparsity("0.9"),
                            random_seeds=seeds, hessians=hessians, batch_size=2, progress=False)
        assert {r["rule"] for r in rows} == {"dense", *RULES}
        assert len([r for r in rows if r["rule"] == "random"]) == seeds
        assert all(r["rows"] == 2 * 2 * 7 for r in rows if r["rule"] != "dense")  # 2 layers x 2 projections
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
        dense = rows[0]["perplexity"]
        assert all(r["perplexity"] != dense for r in rows[1:])  # pruning did change the model
    w = linear_weight(decoder_layers(model)[0].get_submodule("mlp.gate_proj"))
    assert torch.equal(w, before["model.layers.0.mlp.gate_proj.weight"])
