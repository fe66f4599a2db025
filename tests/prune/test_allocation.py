"""Non-uniform sparsity at a fixed total: OWL layers, WD / variance / norm rows, exact counts."""

import json

import pytest
import torch
from helpers import tiny_model, windows

from sparse_expansion.arch import decoder_layers, linear_weight, target_groups
from sparse_expansion.cli import main
from sparse_expansion.errors import UsageError
from sparse_expansion.expand import ExpandConfig, SparseExpertLinear
from sparse_expansion.methods import compress
from sparse_expansion.prune import SparseGPTConfig, WandaConfig, parse_sparsity, sparsegpt_solve, wanda_prune
from sparse_expansion.prune.allocation import (
    block_counts,
    exact_counts,
    outlier_ratio,
    owl_layer_sparsities,
    rank_sparsities,
)


def test_exact_counts_add_up_and_stay_in_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        fractions = torch.rand(37, generator=g)
        sizes = torch.randint(1, 50, (37,), generator=g)
        total = int((fractions * sizes).sum().round())
        counts = exact_counts(fractions, sizes, total)
        assert int(counts.sum()) == total and (counts >= 0).all() and (counts <= sizes).all()
        assert (counts - fractions * sizes).abs().max() < 1.5
    assert exact_counts(torch.full((3,), 0.999), 4, 12).tolist() == [4, 4, 4]  # capped units pass it on


def test_owl_layer_sparsities_follow_the_published_formula():
    ratios = [1.0, 3.0, 2.0, 6.0]
    s = owl_layer_sparsities(ratios, 0.7, 0.08)
    scaled = [(r - 1) / 5 * 0.16 for r in ratios]
    assert s == pytest.approx([0.7 - (x - sum(scaled) / 4) for x in scaled])
    assert sum(s) / 4 == pytest.approx(0.7) and max(s) - min(s) == pytest.approx(0.16)
    assert s[3] == min(s)  # most outliers: pruned least
    assert owl_layer_sparsities([2.0, 2.0], 0.5, 0.08) == [0.5, 0.5]
    assert outlier_ratio(torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 1, 1, 100]), 5) == 0.1


def test_rank_sparsities_mean_is_target_and_high_scores_keep_more():
    scores = torch.tensor([0.3, float("nan"), 5.0, 1.0, 0.2])
    s = rank_sparsities(scores, 0.6, 0.1)
    assert s.mean().item() == pytest.approx(0.6)
    assert s[2] == pytest.approx(0.5) and s[1] == pytest.approx(0.7)  # highest keeps most; NaN ranks lowest
    assert s.argsort().tolist() == [2, 3, 0, 4, 1]


def test_block_counts_split_each_row_exactly():
    zeros = torch.tensor([0, 1, 100, 287, 300])
    blocks = block_counts(zeros, 300, 128)
    assert blocks.shape == (5, 3) and torch.equal(blocks.sum(1), zeros)
    assert (blocks <= torch.tensor([128, 128, 44])).all()


def test_sparsegpt_exact_counts_per_block_and_per_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g)
    x = torch.randn(200, 40, generator=g)
    h = 2 * x.t() @ x / 200
    sparsity = parse_sparsity("0.5")
    # per-block counts equal to what the fraction gives: the very same weights
    same, _ = sparsegpt_solve(w, h, sparsity, blocksize=16, zeros=torch.tensor([128, 128, 64]))
    ref, _ = sparsegpt_solve(w, h, sparsity, blocksize=16)
    assert torch.equal(same, ref)
    rows = torch.arange(16) + 10
    new, _ = sparsegpt_solve(w.expand(2, 16, 40), h.expand(2, 40, 40), sparsity, blocksize=16,
                             zeros=block_counts(rows, 40, 16), zeros_per_row=True)
    assert torch.equal((new == 0).sum(-1), rows.expand(2, 16))


def test_wanda_row_quota_hand_built():
    w = torch.arange(1.0, 9.0).reshape(2, 4)
    out = wanda_prune(w, torch.ones(4), parse_sparsity("0.5"), row_zeros=torch.tensor([1, 3]))
    assert out.tolist() == [[0, 2, 3, 4], [0, 0, 0, 8]]


def mlp_zeros(model):
    total = numel = 0
    for layer in decoder_layers(model):
        for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            module = layer.get_submodule(name)
            w = module.dense_experts() if isinstance(module, SparseExpertLinear) else linear_weight(module)
            total += int((w == 0).sum())
            numel += w.numel()
    return total, numel


@pytest.mark.parametrize("config", [
    SparseGPTConfig(parse_sparsity("0.6"), layer_alloc="owl", owl_lmbda=0.1),
    WandaConfig(parse_sparsity("0.6"), layer_alloc="owl", owl_m=2.0, row_alloc="wd"),
    SparseGPTConfig(parse_sparsity("0.6"), row_alloc="variance", row_lmbda=0.3),
    SparseGPTConfig(parse_sparsity("0.6"), row_alloc="equal"),
    ExpandConfig(3, parse_sparsity("0.6"), layer_alloc="owl", row_alloc="norm", owl_m=2.0),
])
def test_total_zeros_are_exactly_the_requested_ones(config):
    model = tiny_model("llama")
    record = compress(model, windows(), config, batch_size=2, progress=False)
    zeros, numel = mlp_zeros(model)
    experts = getattr(config, "experts", 1)
    assert zeros == experts * round(0.6 * numel / experts)
    for name, rec in record["linears"].items():
        index, linear = name.split(".", 1)
        w = decoder_layers(model)[int(index)].get_submodule(linear)
        w = w.dense_experts() if isinstance(w, SparseExpertLinear) else linear_weight(w)[None]
        assert ((w == 0).flatten(1).sum(1) == rec["target_zeros"]).all()  # every expert: the linear's count
    if config.layer_alloc == "owl":
        layer = [r["layer_sparsity"] for r in record["linears"].values()]
        assert max(layer) > 0.6 > min(layer)


def test_row_allocation_gives_high_score_rows_more_weights():
    model = tiny_model("llama")
    compress(model, windows(), SparseGPTConfig(parse_sparsity("0.5"), row_alloc="norm", row_lmbda=0.4),
             batch_size=2, progress=False)
    dense = tiny_model("llama")
    for lm, ld in zip(decoder_layers(model), decoder_layers(dense)):
        for g in target_groups(model, "mlp"):
            for name in g:
                kept = (linear_weight(lm.get_submodule(name)) != 0).sum(1).double()
                norm = linear_weight(ld.get_submodule(name)).norm(dim=1).double()
                assert torch.corrcoef(torch.stack([kept, norm]))[0, 1] > 0.9


def test_allocation_is_deterministic_and_refuses_n_m():
    runs = []
    for _ in range(2):
        model = tiny_model("llama")
        compress(model, windows(), WandaConfig(parse_sparsity("0.5"), row_alloc="wd", row_tokens=30), batch_size=2,
                 progress=False)
        runs.append([linear_weight(layer.get_submodule("mlp.up_proj")) for layer in decoder_layers(model)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    with pytest.raises(UsageError, match="unstructured"):
        SparseGPTConfig(parse_sparsity("2:4"), layer_alloc="owl")


def test_prune_cli_owl(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "owl"
    assert main(["prune", str(tiny_model_dir), "--method", "wanda", "--sparsity", "0.5", "--layer-alloc", "owl",
                 "--owl-m", "2", "--row-alloc", "wd", "--out", str(out), "--calib", str(text_file),
                 "--calib-windows", "4", "--seqlen", "32"]) == 0
    record = json.loads((out / "sparse_expansion.json").read_text())["record"]
    assert record["layer_alloc"] == "owl" and record["row_alloc"] == "wd" and "allocation" in record["seconds"]
    assert main(["prune", str(tiny_model_dir), "--method", "magnitude", "--sparsity", "0.5", "--layer-alloc", "owl",
                 "--out", str(tmp_path / "m")]) == 2
