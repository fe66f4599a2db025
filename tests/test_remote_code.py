"""Folders with replaced modules load in plain transformers with trust_remote_code=True, without
sparse_expansion importable: the same logits and greedy tokens as our loader (bitmask and N:M
experts, bfloat16 values, compressed linears, a re-saved pre-kernels folder), one copy of the
unpack math, and a loud refusal without trust_remote_code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import DATA, tiny_model, windows

from sparse_expansion.artifact import hugging_face_config, read_manifest, save_artifact
from sparse_expansion.engine import calibrate
from sparse_expansion.expand import ExpandCompressor, ExpandConfig, SparseExpertLinear
from sparse_expansion.hub import AUTO_MAP, MODELING_FILE, modeling_source
from sparse_expansion.hub import modeling_sparse_expansion as remote
from sparse_expansion.kernels import CompressedExperts, CompressedLinear
from sparse_expansion.kernels import formats as F
from sparse_expansion.methods import compress
from sparse_expansion.models import load_model
from sparse_expansion.prune import MagnitudeConfig, parse_sparsity
from sparse_expansion.storage import quantize_weights, set_weights

NEW_TOKENS = 8



def expanded(family, sparsity, experts=3):
    model = tiny_model(family)
    config = ExpandConfig(experts=experts, sparsity=parse_sparsity(sparsity))
    calibrate(model, windows(), ExpandCompressor(config), batch_size=2, progress=False)
    return model


def greedy(model, ids):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=1)
    return out[:, ids.shape[1]:]


# Runs with -I (no PYTHONPATH, no user site) and sparse_expansion blocked in sys.modules, so the
# folders' own modeling file is all there is; stdin is empty, as in any non-interactive job.
REMOTE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["sparse_expansion"] = None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    jobs, out, TEXT = json.loads(sys.argv[1]), sys.argv[2], "To be, or not to be"
    try:
        import sparse_expansion  # noqa: F401
        raise SystemExit("sparse_expansion is importable")
    except ImportError:
        pass
    results = {}
    for name, job in jobs.items():
        ids = torch.load(job["ids"])
        dtype = getattr(torch, job["dtype"]) if job["dtype"] else None
        model = AutoModelForCausalLM.from_pretrained(job["path"], trust_remote_code=True,
                                                     **({"dtype": dtype} if dtype else {}))
        with torch.no_grad():
            logits = model(ids).logits
            tokens = model.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=%d,
                                    min_new_tokens=%d, do_sample=False, pad_token_id=1)[:, ids.shape[1]:]
        mlp = model.get_submodule(job["mlp"])
        routers = [m.router for m in mlp.children() if hasattr(m, "router")]
        try:
            model.save_pretrained(job["path"] + "-copy")
            saved = "saved"
        except NotImplementedError as error:
            saved = str(error)
        classes = [(c.__module__.rpartition(".")[2], c.__name__) for c in type(model).__mro__[:2]]
        results[name] = {"logits": logits, "tokens": tokens, "class": classes,
                         "routers": len(routers), "distinct_routers": len({id(r) for r in routers}),
                         "config": type(AutoConfig.from_pretrained(job["path"], trust_remote_code=True)).__name__,
                         "saved": saved, "dtype": str(next(model.parameters()).dtype),
                         "encoded": AutoTokenizer.from_pretrained(job["path"], trust_remote_code=True)(TEXT).input_ids}
    for trust in (None, False):
        try:
            AutoModelForCausalLM.from_pretrained(next(iter(jobs.values()))["path"],
                                                 **({} if trust is None else {"trust_remote_code": trust}))
            results[f"untrusted_{trust}"] = "loaded"
        except ValueError as error:
            results[f"untrusted_{trust}"] = str(error)
    torch.save(results, out)
""") % (NEW_TOKENS, NEW_TOKENS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Folders, each with what our loader computes and what plain transformers computed on it."""
    root = tmp_path_factory.mktemp("remote_code")
    ids = windows(2, 12, 7)
    torch.save(ids, root / "ids.pt")
    made = {}

    made["llama"] = expanded("llama", "0.5")  # bitmask experts, shared gate/up router
    made["gpt2_24"] = expanded("gpt2", "2:4")  # N:M experts (GPT-2's Conv1D linears)
    bf16 = expanded("llama", "4:8", experts=2)
    for module in bf16.modules():
        if isinstance(module, SparseExpertLinear):
            module.to_storage_dtype(torch.bfloat16)  # values stored bfloat16; the rest stays float32
    made["llama_bf16"] = bf16
    pruned = tiny_model("llama")
    compress(pruned, None, MagnitudeConfig(parse_sparsity("0.5")), progress=False)
    save_artifact(root / "pruned_plain", pruned, tokenizer=tokenizer, record={})
    set_weights(pruned, "compressed")  # held compressed: saved as compressed_linear modules
    made["pruned_compressed"] = pruned
    old, _ = load_model(str(DATA / "expanded_llama_before_kernels"))  # re-saved in today's layout
    made["old_llama"] = old
    quant = expanded("llama", "0.5")  # int4 experts in groups of 16, attention and LM head int4 dense
    quantize_weights(quant, 4, 16)
    made["quant_int4"] = quant
    quant_pruned = tiny_model("llama")  # int8 per row: pruned linears bitmask, the rest dense
    compress(quant_pruned, None, MagnitudeConfig(parse_sparsity("2:4")), progress=False)
    quantize_weights(quant_pruned, 8)
    made["quant_int8_24"] = quant_pruned
    for name, model in made.items():
        save_artifact(root / name, model, tokenizer=tokenizer, record={})

    jobs = {name: {"path": str(root / name), "ids": str(root / "ids.pt"), "dtype": None,
                   "mlp": "transformer.h.0.mlp" if name.startswith("gpt2") else "model.layers.0.mlp"}
            for name in made}
    jobs["llama_bf16_as_bf16"] = {**jobs["llama_bf16"], "dtype": "bfloat16"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "hf_modules"), TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    proc = subprocess.run([sys.executable, "-I", "-c", REMOTE_SCRIPT, json.dumps(jobs), str(root / "remote.pt")],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "ids": ids, "jobs": jobs, "remote": torch.load(root / "remote.pt")}


def ours(folders, name, dtype=torch.float32):
    model, tokenizer = load_model(folders["jobs"][name]["path"], dtype=dtype)
    with torch.no_grad():
        return model, tokenizer, model(folders["ids"]).logits


@pytest.mark.parametrize("name", ["llama", "gpt2_24", "llama_bf16", "pruned_compressed", "old_llama", "quant_int4",
                                  "quant_int8_24"])
def test_plain_transformers_computes_what_our_loader_computes(folders, name):
    model, tokenizer, logits = ours(folders, name)
    got = folders["remote"][name]
    torch.testing.assert_close(got["logits"], logits, rtol=1e-5, atol=1e-5)
    assert got["encoded"] == tokenizer("To be, or not to be").input_ids
    assert torch.equal(got["tokens"], greedy(model, folders["ids"][:1]))
    base = type(model).__name__
    # the base architecture's own class, only refusing save_pretrained
    assert got["class"] == [("modeling_sparse_expansion", base), (f"modeling_{model.config.model_type}", base)]
    assert got["dtype"] == "torch.float32"
    assert got["config"] == "SparseExpansionConfig"


def test_the_folders_hold_what_the_cases_say(folders):
    root = folders["root"]
    formats = {name: {spec.get("format") for spec in read_manifest(root / name)["modules"].values()}
               for name in ("llama", "gpt2_24", "llama_bf16", "pruned_compressed")}
    assert formats == {"llama": {"bitmask"}, "gpt2_24": {"2:4"}, "llama_bf16": {"4:8"},
                       "pruned_compressed": {"bitmask"}}
    bf16 = read_manifest(root / "llama_bf16")["modules"]
    assert {spec["value_dtype"] for spec in bf16.values()} == {"bfloat16"}
    types = {spec["type"] for spec in read_manifest(root / "pruned_compressed")["modules"].values()}
    assert types == {"compressed_linear"}
    for name in ("llama", "gpt2_24", "llama_bf16", "pruned_compressed", "old_llama"):
        config = json.loads((root / name / "config.json").read_text())
        assert config["auto_map"] == AUTO_MAP and config["model_type"] == "sparse_expansion"
        assert (root / name / MODELING_FILE).read_text() == modeling_source()
        assert type(hugging_face_config(root / name)).__name__ in ("LlamaConfig", "GPT2Config")  # ours ignores it


def test_quantized_folders_hold_codes(folders):
    modules = read_manifest(folders["root"] / "quant_int4")["modules"]
    assert {spec["value_dtype"] for spec in modules.values()} == {"int4"}
    assert {spec["type"] for spec in modules.values()} == {"sparse_expert_linear", "quantized_linear"}
    assert "lm_head" in modules and {spec["group_size"] for spec in modules.values()} == {16}
    modules = read_manifest(folders["root"] / "quant_int8_24")["modules"]
    assert {(spec["type"], spec.get("format")) for spec in modules.values()} == {("compressed_linear", "2:4"),
                                                                                  ("quantized_linear", None)}


def test_shared_routers_stay_shared(folders):
    remote_llama = folders["remote"]["llama"]
    assert remote_llama["routers"] == 3 and remote_llama["distinct_routers"] == 2  # gate and up share one
    assert folders["remote"]["gpt2_24"]["routers"] == 2  # c_fc and c_proj read different inputs


def test_bfloat16_load(folders):
    *_, logits = ours(folders, "llama_bf16", torch.bfloat16)
    got = folders["remote"]["llama_bf16_as_bf16"]
    assert got["dtype"] == "torch.bfloat16"
    # The experts compute in float32 either way; the rest of the model in bfloat16 (and our C++
    # path rounds differently), so only bfloat16 agreement is expected.
    assert (got["logits"].float() - logits.float()).abs().max() < 0.05 * logits.float().abs().max()


def test_without_trust_remote_code_transformers_refuses(folders):
    for trust in (None, False):
        message = folders["remote"][f"untrusted_{trust}"]
        assert message != "loaded" and "trust_remote_code=True" in message
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="trust_remote_code"):  # in this process too (stdin captured)
        AutoModelForCausalLM.from_pretrained(folders["jobs"]["llama"]["path"])


def test_pruned_folder_stays_plain(folders):
    path = folders["root"] / "pruned_plain"
    config = json.loads((path / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "llama"
    assert not (path / MODELING_FILE).exists()


def test_a_remote_model_refuses_save_pretrained(folders):
    assert "copy or upload the folder" in folders["remote"]["llama"]["saved"]


def test_the_modeling_file_imports_only_torch_and_transformers():
    tree = ast.parse(modeling_source())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # safetensors: what the weights file is, and a dependency transformers always installs
    assert roots <= {"__future__", "json", "math", "re", "typing", "torch", "transformers", "safetensors"}


def test_old_folders_have_no_remote_code_and_still_load():
    for family in ("llama", "gpt2"):
        folder = DATA / f"expanded_{family}_before_kernels"
        assert "auto_map" not in json.loads((folder / "config.json").read_text())
        model, _ = load_model(str(folder))
        assert any(isinstance(m, SparseExpertLinear) for m in model.modules())


# --------------------------------------------------------------- one copy of the unpacking math


def random_sparse(shape, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    if fmt == "bitmask":
        w[torch.rand(shape, generator=g) < 0.6] = 0.0
        w[..., 1, :] = 0.0  # an empty row
        return w
    n, m = F.parse_format(fmt)
    groups = w.reshape(*shape[:-1], -1, m)
    groups.scatter_(-1, torch.rand(groups.shape, generator=g).argsort(-1)[..., : m - n], 0.0)
    return groups.reshape(shape)


@pytest.mark.parametrize("fmt", ["bitmask", "2:4", "4:8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_folder_code_unpacks_what_our_kernels_unpack(fmt, dtype):
    """The remote modules load our modules' state dicts and unpack them to exactly what our
    kernels (C++ where they build) and the original dense weights say."""
    dense = random_sparse((3, 10, 24), fmt, seed=len(fmt))
    experts = CompressedExperts.from_dense(dense, torch.randn(10), dtype, fmt)
    spec = {"type": "sparse_expert_linear", "pca_dim": 4, **experts.spec()}
    mine = remote.build_module(spec).experts
    mine.load_state_dict(experts.state_dict())
    mine.check("experts")
    want = dense.to(dtype).float()
    assert torch.equal(mine.dense(), want) and torch.equal(experts.dense_weight(), want)
    assert all(torch.equal(mine.dense(e), want[e]) for e in range(3))
    assert torch.equal(F.decompress(experts.compressed()).float(), want)

    linear = CompressedLinear.from_dense(dense[1], None, dtype, fmt)
    copy = remote.build_module({"type": "compressed_linear", **linear.spec()})
    copy.load_state_dict(linear.state_dict())
    x = torch.randn(5, 24)
    torch.testing.assert_close(copy(x), linear(x), rtol=1e-5, atol=1e-5)


def test_a_corrupt_bitmask_is_refused():
    experts = CompressedExperts.from_dense(random_sparse((2, 4, 16), "bitmask", 1), None, torch.float32, "bitmask")
    mine = remote.build_module({"type": "sparse_expert_linear", "pca_dim": 2, **experts.spec()}).experts
    state = experts.state_dict()
    state["mask"] = state["mask"].clone()
    state["mask"][0, 0, 0] ^= 0xFF
    mine.load_state_dict(state)
    with pytest.raises(ValueError, match="disagree"):
        mine.check("experts")
