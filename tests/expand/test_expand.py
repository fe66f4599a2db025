"""Sparse Expansion: router, expert module, compressor invariants, save/load, CLI."""

import json

import pytest
import torch
from helpers import FAMILIES, tiny_model, windows

from sparse_expansion.arch import architecture_of, decoder_layers, linear_weight
from sparse_expansion.artifact import load_artifact as load_saved
from sparse_expansion.artifact import save_artifact
from sparse_expansion.cli import main
from sparse_expansion.engine import calibrate
from sparse_expansion.expand import ExpandCompressor, ExpandConfig, Router, SparseExpertLinear, kmeans
from sparse_expansion.expand.hessians import blend_small_clusters, cluster_hessians
from sparse_expansion.expand.module import grouped_mm_fits, routed_matmul
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity


def expand(model, k, sparsity="0.5", **kw):
    comp = ExpandCompressor(ExpandConfig(experts=k, sparsity=parse_sparsity(sparsity), **kw))
    calibrate(model, windows(), comp, batch_size=2, progress=False)
    return comp


def test_kmeans_finds_separated_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    z = torch.cat([c + torch.randn(50, 2, generator=g) * 0.3 for c in centres])
    a, b = kmeans(z, 3, seed=1, n_init=3), kmeans(z, 3, seed=1, n_init=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    for i in range(3):  # each blob is one cluster
        assert a.labels[i * 50 : (i + 1) * 50].unique().numel() == 1
    assert a.labels.unique().numel() == 3


@pytest.mark.parametrize("k,pca_dim", [(4, 8), (6, 3)])  # folded routing (k <= pca_dim) and projected
def test_router_routes_equal_kmeans_labels(k, pca_dim):
    x = torch.randn(500, 32) @ torch.randn(32, 32)
    router, labels = Router.fit(x, k, pca_dim, seed=0)
    assert router.folds == (k <= pca_dim)
    independent = kmeans(router.project(x), k, seed=0).labels  # k-means on its own, same seed
    assert torch.equal(labels, independent)
    assert torch.equal(router(x), labels)
    assert router(x.reshape(5, 100, 32)).shape == (5, 100)


def test_folded_routing_follows_new_buffers():
    x = torch.randn(400, 24)
    router, _ = Router.fit(x, 4, 6, seed=1)
    before = router(x)
    with torch.no_grad():
        router.centroids.copy_(router.centroids.flip(0))  # relabel the clusters in place
    assert torch.equal(router(x), 3 - before)
    other, _ = Router.fit(x * 2 + 1, 4, 6, seed=2)
    router.load_state_dict(other.state_dict())
    assert torch.equal(router(x), other(x))


def test_grouped_forward_equals_per_token_loop():
    x = torch.randn(300, 16)
    router, _ = Router.fit(x, 3, 4)
    experts = torch.randn(3, 8, 16)
    module = SparseExpertLinear.build(router, experts, torch.randn(8))
    batch = torch.randn(2, 7, 16)
    out = module(batch)
    labels = router(batch)
    for i in range(2):
        for t in range(7):
            ref = experts[labels[i, t]] @ batch[i, t] + module.bias
            assert torch.allclose(out[i, t], ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routed_matmul_grouped_equals_one_matmul_per_expert(dtype):
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(5, 24, 32, generator=g).to(dtype)
    x = torch.randn(40, 32, generator=g).to(dtype)
    labels = torch.randint(0, 5, (40,), generator=g)
    labels[labels == 3] = 1  # expert 3 gets no token: an empty group
    per_token = torch.stack([x[t] @ weights[labels[t]].t() for t in range(40)])
    looped = routed_matmul(x, labels, weights, grouped=False)
    tol = {"rtol": 2e-2, "atol": 0.1} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-4}
    assert torch.allclose(looped.float(), per_token.float(), **tol)
    if grouped_mm_fits(x, weights):  # torch >= 2.10: one grouped GEMM, the same bits as the loop
        assert torch.equal(routed_matmul(x, labels, weights, grouped=True), looped)
    assert torch.equal(routed_matmul(x, torch.full((40,), 2), weights), x @ weights[2].t())
    assert routed_matmul(x[:0], labels[:0], weights).shape == (0, 24)


def test_grouped_mm_is_only_used_on_aligned_rows():
    weights = torch.randn(3, 8, 12)  # 12 float32 inputs: 48-byte rows, aligned
    assert grouped_mm_fits(torch.randn(4, 12), weights) == (torch.nn.functional.__dict__.get("grouped_mm") is not None)
    assert not grouped_mm_fits(torch.randn(4, 6), torch.randn(3, 8, 6))  # 24-byte rows
    assert not grouped_mm_fits(torch.randn(4, 12), torch.randn(3, 7, 12))  # 7 outputs: 28-byte columns
    labels = torch.tensor([0, 2, 2, 1])
    x = torch.randn(4, 6)
    odd = torch.randn(3, 8, 6)
    assert torch.allclose(routed_matmul(x, labels, odd), torch.stack([x[t] @ odd[labels[t]].t() for t in range(4)]),
                          atol=1e-6)


def test_dense_copy_forward_equals_compressed_forward():
    x = torch.randn(300, 16)
    router, _ = Router.fit(x, 4, 4)
    experts = torch.randn(4, 8, 16) * (torch.rand(4, 8, 16) > 0.5)
    module = SparseExpertLinear.build(router, experts, torch.randn(8))
    batch = torch.randn(3, 11, 16)
    compressed = module(batch)
    dense = module.use_dense_weights()(batch)
    assert module.uses_dense_weights and torch.allclose(dense, compressed, atol=1e-5)


def test_one_expert_is_exactly_sparsegpt():
    pruned = tiny_model("llama")
    calibrate(pruned, windows(), PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"))), batch_size=2,
              progress=False)
    expanded = tiny_model("llama")
    expand(expanded, 1)
    for lp, le in zip(decoder_layers(pruned), decoder_layers(expanded)):
        for name in architecture_of(pruned).mlp:
            module = le.get_submodule(name)
            assert isinstance(module, SparseExpertLinear)
            assert torch.allclose(module.dense_experts()[0], linear_weight(lp.get_submodule(name)), atol=1e-6)
    ids = windows(seed=5)
    assert torch.allclose(expanded(ids).logits, pruned(ids).logits, atol=1e-4)


def test_sparsity_zero_is_dense():
    dense = tiny_model("llama")
    model = tiny_model("llama")
    expand(model, 4, "0")
    ids = windows(seed=7)
    assert torch.allclose(model(ids).logits, dense(ids).logits, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_every_expert_reaches_sparsity(family, sparsity):
    model = tiny_model(family)
    comp = expand(model, 3, sparsity)
    records = comp.record()
    assert len(records) == 2 * len(architecture_of(model).mlp)
    for rec in records.values():
        assert rec["expert_sparsity"] == [0.5] * 3
        assert sum(rec["cluster_tokens"]) == 4 * 24
    module = decoder_layers(model)[0].get_submodule(architecture_of(model).mlp[0])
    if sparsity == "2:4":
        assert module.experts.format == "2:4"
        assert ((module.dense_experts() != 0).reshape(3, module.out_features, -1, 4).sum(-1) == 2).all()
    assert torch.isfinite(model(windows()).logits).all()


@pytest.mark.parametrize("pca_dim,router_flops", [(4, 2 * 16 * 4 + 4), (2, 2 * 16 * 2 + 3 * 2 * 4)])
def test_flops_per_token_is_one_expert_plus_router(pca_dim, router_flops):
    x = torch.randn(200, 16)
    router, _ = Router.fit(x, 4, pca_dim)
    experts = torch.randn(4, 8, 16)
    experts[experts.abs() < 0.7] = 0
    module = SparseExpertLinear.build(router, experts, None)
    nnz = (experts != 0).flatten(1).sum(1).float()
    assert module.flops_per_token() == round(2 * nnz.mean().item()) + router_flops
    assert module.nonzeros() >= int(nnz.sum())


def test_tiny_cluster_is_blended_not_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    x[:2] += 50  # two far-away tokens form their own cluster
    labels = torch.zeros(400, dtype=torch.long)
    labels[:2] = 1
    hessians, counts = cluster_hessians([x], [labels], 2)
    full, _ = cluster_hessians([x], [torch.zeros_like(labels)], 1)
    blended = blend_small_clusters(hessians, counts, full[0], min_tokens=16)
    assert counts == [398, 2] and blended == [1]
    from sparse_expansion.prune import sparsegpt_solve
    out, _ = sparsegpt_solve(torch.randn(2, 8, 16), hessians, parse_sparsity("0.5"))
    assert torch.isfinite(out).all()


def test_blend_threshold_is_a_multiple_of_in_features():
    # 96 calibration tokens: R = 0 blends nothing; otherwise exactly the clusters under R x in_features.
    off = expand(tiny_model("llama"), 3, blend_below=0.0, shrink="blend").record()
    assert all(r["blended_clusters"] == [] for r in off.values())
    model = tiny_model("llama")
    inputs = {"gate_proj": model.config.hidden_size, "up_proj": model.config.hidden_size,
              "down_proj": model.config.intermediate_size}
    record = expand(model, 3, blend_below=0.75, shrink="blend").record()
    some = 0
    for name, r in record.items():
        threshold = round(0.75 * inputs[name.rsplit(".", 1)[1]])
        assert r["blended_clusters"] == [c for c, n in enumerate(r["cluster_tokens"]) if n < threshold]
        some += len(r["blended_clusters"])
    assert 0 < some < 3 * len(record)  # the case distinguishes blended from not


def test_same_seed_same_model_and_save_load(tmp_path, tokenizer):
    states = []
    for _ in range(2):
        model = tiny_model("llama")
        expand(model, 3, seed=11)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

    save_artifact(tmp_path / "se", model, tokenizer=tokenizer, record={"kind": "expanded"})
    loaded, _ = load_saved(tmp_path / "se")
    ids = windows(seed=3)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    record = json.loads((tmp_path / "se" / "sparse_expansion.json").read_text())
    assert len(record["modules"]) == 6
    assert all(spec["type"] == "sparse_expert_linear" for spec in record["modules"].values())


def test_expand_cli_roundtrip(tmp_path, tiny_model_dir, text_file, capsys):
    out = tmp_path / "se"
    assert main(["expand", str(tiny_model_dir), "--experts", "4", "--memory-budget", "2", "--out", str(out),
                 "--calib", str(text_file), "--calib-windows", "4", "--seqlen", "32"]) == 0
    record = json.loads((out / "sparse_expansion.json").read_text())["record"]
    assert record["kind"] == "expanded" and record["sparsity"] == 0.5 and record["memory_budget"] == 2
    assert {"clustering", "hessians", "solves", "forward"} <= set(record["seconds"])
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(text_file), "--windows", "2", "--seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # The same numbers from the library on the loaded folder: the CLI measured the saved model.
    from sparse_expansion.data import corpus_tokens, evaluation_windows
    from sparse_expansion.evaluate import perplexity
    from sparse_expansion.models import load_model

    model, tok = load_model(str(out))
    batch = evaluation_windows(corpus_tokens(str(text_file), tok), 32, 2)
    assert result["perplexity"] == pytest.approx(perplexity(model, batch, progress=False)["perplexity"], rel=1e-6)
    # FLOPs: dense attention + head, and per MLP linear one expert at 50% (budget 2 over 4) plus its router.
    dense, _ = load_model(str(tiny_model_dir))
    mlp_numel = sum(linear_weight(layer.get_submodule(n)).numel() for layer in decoder_layers(dense)
                    for n in architecture_of(dense).mlp)
    # gate_proj and up_proj share one router: its FLOPs are counted once.
    routers = {id(m.router): m.router for m in model.modules() if isinstance(m, SparseExpertLinear)}
    assert len(routers) == 2 * len(decoder_layers(model))
    routers = sum(r.flops_per_token() for r in routers.values())
    dense_flops = 2 * sum(linear_weight(m).numel() for m in dense.modules() if isinstance(m, torch.nn.Linear))
    assert result["flops_per_token"] == dense_flops - mlp_numel + routers

    # --weights auto: the float values as loaded (generate's default, int8 on load, would not match them)
    assert main(["generate", str(out), "--prompt", "To be", "--max-new-tokens", "4", "--dtype", "float32",
                 "--weights", "auto"]) == 0
    ids = tok("To be", return_tensors="pt").input_ids
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                            pad_token_id=tok.eos_token_id)
    # Exact, less the one newline print adds: strip() would also eat a generated form feed or space.
    expected = "To be" + tok.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    assert capsys.readouterr().out.removesuffix("\n") == expected


def test_expand_cli_bad_budget(tmp_path, tiny_model_dir, capsys):
    code = main(["expand", str(tiny_model_dir), "--experts", "4", "--memory-budget", "5", "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "--memory-budget" in capsys.readouterr().err


def test_experts_are_saved_as_the_compressed_tensors_they_are_in_memory():
    dense = torch.randn(3, 5, 16)
    dense[dense.abs() < 0.8] = 0
    x = torch.randn(100, 16)
    router, _ = Router.fit(x, 3, 2)
    module = SparseExpertLinear.build(router, dense, torch.randn(5))
    state = module.state_dict()
    assert set(state) == {"router.mean", "router.components", "router.centroids", "experts.values", "experts.mask",
                          "experts.row_offsets", "experts.bias"}
    assert state["experts.values"].numel() == int((dense != 0).sum())
    assert module.spec()["format"] == "bitmask" and module.spec()["value_dtype"] == "float32"
    fresh = SparseExpertLinear.from_spec(module.spec())
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.dense_experts(), dense) and torch.equal(fresh(x), module(x))


def legacy_state(module: SparseExpertLinear, dense: torch.Tensor, bias: torch.Tensor | None) -> dict:
    """The state dict main wrote before the experts were kept compressed (pack_sparse's layout)."""
    from sparse_expansion.expand.module import pack_sparse

    values, mask = pack_sparse(dense)
    state = {f"router.{k}": v for k, v in module.router.state_dict().items()}
    state.update({"expert_values": values, "expert_mask": mask})
    if bias is not None:
        state["bias"] = bias.to(dense.dtype)
    return state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_layout_saved_before_the_kernels_loads_bit_exact(dtype):
    dense = torch.randn(4, 6, 10).to(dtype)
    dense[dense.abs() < 0.5] = 0
    router, _ = Router.fit(torch.randn(50, 10), 4, 2)
    bias = torch.randn(6)
    module = SparseExpertLinear.build(router, dense, bias)
    old_spec = {k: module.spec()[k] for k in ("in_features", "out_features", "num_experts", "pca_dim", "bias")}
    fresh = SparseExpertLinear.from_spec(old_spec)
    fresh.load_state_dict(legacy_state(module, dense, bias), strict=True)
    assert fresh.value_dtype == torch.float32  # what the spec's module allocates; artifact.py casts after
    assert torch.equal(fresh.dense_experts(), dense.float())
    assert torch.equal(fresh.bias, bias.to(dtype).float())
    state = legacy_state(module, dense, bias)
    state["expert_values"] = state["expert_values"][1:]
    with pytest.raises(RuntimeError, match="do not match expert_mask"):
        SparseExpertLinear.from_spec(old_spec).load_state_dict(state)


def test_pca_matches_svd_of_centred_inputs():
    from sparse_expansion.expand import fit_pca

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3.0
    mean, comps = fit_pca(x, 4)
    _, _, vt = torch.linalg.svd((x - x.mean(0)).double(), full_matrices=False)
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    assert torch.allclose(comps.abs().double(), vt[:4].t().abs(), atol=1e-4)
    _, again = fit_pca(x, 4, second_moment=x.t() @ x)
    assert torch.allclose(again, comps, atol=1e-5)
