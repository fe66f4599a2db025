"""Whole models on compressed weights: pruned and expanded folders generate the same tokens with
the C++ kernels, the pure-torch fallback and dense weights; save -> load -> generate is
identical; folders written before the experts were kept compressed still load; the shared
router is stored once, evaluated once and counted once; generate --json."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import DATA, tiny_model, windows

from sparse_expansion.artifact import read_manifest, save_artifact
from sparse_expansion.cli import main
from sparse_expansion.engine import calibrate
from sparse_expansion.evaluate import model_costs
from sparse_expansion.expand import ExpandCompressor, ExpandConfig, SparseExpertLinear
from sparse_expansion.kernels import CompressedLinear, build, ops
from sparse_expansion.methods import compress
from sparse_expansion.models import load_model
from sparse_expansion.prune import SparseGPTConfig, parse_sparsity
from sparse_expansion.storage import set_weights, weights_in_memory

# The kernels' backends: the C++ library where a compiler exists, and always the pure-torch
# fallback, which is what a machine without a compiler runs.
BACKENDS = ["auto", "torch"] if build.find_compiler() else ["torch"]



@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """A SparseGPT 50% folder, a 2:4 one, and a 3-expert 50% expansion, all of the tiny llama."""
    root = tmp_path_factory.mktemp("kernel_models")
    out = {}
    for name, sparsity in (("pruned", "0.5"), ("pruned24", "2:4")):
        model = tiny_model("llama")
        record = compress(model, windows(), SparseGPTConfig(parse_sparsity(sparsity)), batch_size=2, progress=False)
        save_artifact(root / name, model, tokenizer=tokenizer, record=record)
        out[name] = root / name
    model = tiny_model("llama")
    calibrate(model, windows(), ExpandCompressor(ExpandConfig(experts=3, sparsity=parse_sparsity("0.5"))),
              batch_size=2, progress=False)
    save_artifact(root / "expanded", model, tokenizer=tokenizer, record={"kind": "expanded"})
    out["expanded"] = root / "expanded"
    return out


def greedy(model, n=12, seed=3):
    ids = windows(1, 6, seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=1)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", ["pruned", "pruned24", "expanded"])
def test_kernels_fallback_and_dense_weights_generate_the_same_tokens(folders, name):
    dense, _ = load_model(str(folders[name]), weights="dense")
    assert weights_in_memory(dense) == "dense"
    want = greedy(dense)
    ids = windows(2, 20, 9)
    with torch.no_grad():
        logits = dense(ids).logits
    for backend in BACKENDS:
        with ops.use_backend(backend):
            model, _ = load_model(str(folders[name]), weights="compressed")
            assert weights_in_memory(model) == "compressed"
            if name.startswith("pruned"):
                compressed = [m for m in model.modules() if isinstance(m, CompressedLinear)]
                assert len(compressed) == 6 and all(m.format == ("2:4" if name == "pruned24" else "bitmask")
                                                    for m in compressed)
            assert greedy(model) == want, backend
            assert model_costs(model) == model_costs(dense)  # the same FLOPs, non-zeros and params
            with torch.no_grad():
                torch.testing.assert_close(model(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_auto_weights_follow_the_kernels(folders):
    with ops.use_backend("torch"):  # no C++ kernels: a pruned model stays dense, experts stay compressed
        pruned, _ = load_model(str(folders["pruned"]), weights="auto")
        expanded, _ = load_model(str(folders["expanded"]), weights="auto")
    assert weights_in_memory(pruned) == "dense" and weights_in_memory(expanded) == "compressed"
    as_stored, _ = load_model(str(folders["pruned"]))  # the library's default: as the folder holds it
    assert not any(isinstance(m, CompressedLinear) for m in as_stored.modules())
    if build.find_compiler():
        auto, _ = load_model(str(folders["pruned"]), weights="auto")
        assert weights_in_memory(auto) == "compressed"
    set_weights(as_stored, "compressed")
    set_weights(as_stored, "dense")  # and back: CompressedLinear -> nn.Linear with the same weights
    assert greedy(as_stored) == greedy(load_model(str(folders["pruned"]))[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_values(folders, dtype):
    model, _ = load_model(str(folders["expanded"]), dtype=dtype, weights="compressed")
    experts = [m for m in model.modules() if isinstance(m, SparseExpertLinear)]
    assert all(m.value_dtype == dtype and m.router.mean.dtype == torch.float32 for m in experts)
    pruned, _ = load_model(str(folders["pruned"]), dtype=dtype, weights="compressed")
    assert all(m.values.dtype == dtype for m in pruned.modules() if isinstance(m, CompressedLinear))
    reference, _ = load_model(str(folders["expanded"]))
    ids = windows(2, 20, 4)
    with torch.no_grad():
        want, got = reference(ids).logits, model(ids).logits.float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_save_load_generate_is_identical(folders, tmp_path, tokenizer):
    model, _ = load_model(str(folders["expanded"]))
    save_artifact(tmp_path / "again", model, tokenizer=tokenizer, record={})
    again, _ = load_model(str(tmp_path / "again"))
    assert greedy(again) == greedy(model)
    ids = windows(2, 20, 5)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    # A pruned model held compressed saves as what it is (a guarded folder of compressed_linear modules).
    pruned, _ = load_model(str(folders["pruned"]), weights="compressed")
    save_artifact(tmp_path / "pruned-compressed", pruned, tokenizer=tokenizer, record={})
    modules = read_manifest(tmp_path / "pruned-compressed")["modules"]
    assert len(modules) == 6 and {m["type"] for m in modules.values()} == {"compressed_linear"}
    back, _ = load_model(str(tmp_path / "pruned-compressed"))
    assert greedy(back) == greedy(pruned)


def test_shared_router_is_stored_once_and_evaluated_once(folders, monkeypatch):
    from safetensors import safe_open

    from sparse_expansion.expand import module

    manifest = read_manifest(folders["expanded"])["modules"]
    assert manifest["model.layers.0.mlp.up_proj"]["router_from"] == "model.layers.0.mlp.gate_proj"
    assert "router_from" not in manifest["model.layers.0.mlp.down_proj"]
    with safe_open(str(folders["expanded"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.gate_proj.router.centroids" in keys
    assert not any(k.startswith("model.layers.0.mlp.up_proj.router.") for k in keys)

    model, _ = load_model(str(folders["expanded"]))
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.router is mlp.up_proj.router and mlp.down_proj.router is not mlp.gate_proj.router
    calls = []
    evaluate = module.evaluate_router
    monkeypatch.setattr(module, "evaluate_router", lambda router, x: calls.append(router) or evaluate(router, x))
    for tokens in (1, 20):  # one C++ call at decode, torch's GEMM for a batch
        calls.clear()
        with torch.no_grad():
            model(windows(1, tokens))
        assert len(calls) == 2 * len(model.model.layers)  # gate+up once, down once, per layer
        assert len({id(r) for r in calls}) == len(calls)

    # The cache is keyed by the tensor and its version: a changed or new input is routed afresh.
    router = mlp.gate_proj.router
    x = torch.randn(5, 32)
    first = module.route_once(router, x)
    assert module.route_once(mlp.up_proj.router, x) is first
    x.mul_(-3)
    again = module.route_once(router, x)
    assert again is not first and torch.equal(again, router(x)) and torch.equal(mlp.up_proj.route(x), router(x))
    assert module.route_once(router, x.clone()) is not module.route_once(router, x)
    import copy
    import pickle

    copied = pickle.loads(pickle.dumps(copy.deepcopy(model)))  # the remembered route does not get in the way
    with torch.no_grad():
        assert torch.equal(copied(windows(1, 5)).logits, model(windows(1, 5)).logits)
    for shape in ((1, 32), (3, 32), (1, 1, 32)):  # the C++ route agrees with the router's own forward
        y = torch.randn(shape)
        assert torch.equal(module.evaluate_router(router, y), router(y).reshape(-1))
        assert torch.equal(mlp.gate_proj.route(y), router(y))


def test_old_folders_load_to_the_outputs_main_computed(tmp_path, tokenizer):
    """Folders saved by main 12b955f (experts as expert_values + an MSB-first bitmask, two router
    copies): same logits as main computed, routers shared after loading, and re-saved in the new layout."""
    from safetensors.torch import load_file

    for family in ("llama", "gpt2"):
        folder = DATA / f"expanded_{family}_before_kernels"
        expected = load_file(str(DATA / f"expanded_{family}_before_kernels.expected.safetensors"))
        assert "format" not in next(iter(read_manifest(folder)["modules"].values()))
        for backend in BACKENDS:
            with ops.use_backend(backend):
                model, _ = load_model(str(folder))
                with torch.no_grad():
                    torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], rtol=1e-5,
                                               atol=1e-5)
        if family == "llama":
            mlp = model.model.layers[1].mlp
            assert mlp.gate_proj.router is mlp.up_proj.router
        save_artifact(tmp_path / family, model, tokenizer=tokenizer, record={})
        again, _ = load_model(str(tmp_path / family))
        with torch.no_grad():
            assert torch.equal(again(expected["ids"]).logits, model(expected["ids"]).logits)


def test_generate_json(folders, capsys):
    assert main(["generate", str(folders["expanded"]), "--prompt", "To be", "--max-new-tokens", "6",
                 "--ignore-eos", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"prefill_seconds", "decode_tokens_per_second", "new_tokens", "peak_rss_mb", "text", "weights",
            "loaded_rss_mb", "prompt_tokens", "decode_tokens_per_cpu_second"} <= set(result)
    assert result["new_tokens"] == 6 and result["weights"] == "compressed"
    assert result["prefill_seconds"] > 0 and result["decode_tokens_per_second"] > 0 and result["peak_rss_mb"] > 0
    assert main(["generate", str(folders["pruned"]), "--prompt", "To be", "--max-new-tokens", "6", "--ignore-eos",
                 "--weights", "dense"]) == 0
    dense_text = capsys.readouterr().out
    assert main(["generate", str(folders["pruned"]), "--prompt", "To be", "--max-new-tokens", "6", "--ignore-eos",
                 "--weights", "compressed"]) == 0
    assert capsys.readouterr().out == dense_text
