"""The fast C++ decode step (decode.py, kernels/csrc/decode_step.cpp) against the Hugging Face forward
pass: logits for every linear kind (dense float32 / bfloat16, bitmask, 2:4, routed experts with a
folded and an unfolded router), for Llama, Qwen 3, Gemma 3 and Granite (every other family the step
runs: dense float32), at 1 and 2 threads, at positions after a filled cache longer than the tiny
models' sliding window; greedy generation gives Hugging Face's tokens; save -> load -> generate is
identical; what it cannot run falls back to Hugging Face and says why (also in `generate --json`)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import SAMPLE_TEXT, tiny_gemma3_multimodal, tiny_model, windows

from sparse_expansion import decode
from sparse_expansion.arch import decoder_layers, supported_model_types
from sparse_expansion.artifact import save_artifact
from sparse_expansion.cli import main
from sparse_expansion.engine import calibrate
from sparse_expansion.expand import ExpandCompressor, ExpandConfig, SparseExpertLinear
from sparse_expansion.kernels import CompressedLinear, DecodeLinear, build, ops
from sparse_expansion.methods import compress
from sparse_expansion.models import load_model
from sparse_expansion.prune import SparseGPTConfig, parse_sparsity

pytestmark = pytest.mark.skipif(build.find_compiler() is None, reason="the fast step needs the C++ kernels")



# Tiny random models of the families beyond Llama. Their sliding window (WINDOW) is shorter than the
# 12 positions the logit tests run and than their 8-token prompts, and every family's extras are on
# (soft caps, Gemma 3's local rotary base and a scaled global one, Granite's multipliers), so a step
# that skipped any of them would fail (test_the_tiny_models_extras_change_their_logits).
WINDOW = 6
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, bos_token_id=1, eos_token_id=1,
            pad_token_id=0, tie_word_embeddings=True)
SLIDING = dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}
FAMILY_CONFIGS = {
    "mistral": dict(sliding_window=WINDOW),
    "qwen2": dict(use_sliding_window=True, **SLIDING),
    "qwen3": dict(use_sliding_window=True, **SLIDING),  # q/k norms
    "gemma": {},
    "gemma2": dict(final_logit_softcapping=3.0, attn_logit_softcapping=2.0, query_pre_attn_scalar=16, **SLIDING),
    "gemma3_text": dict(final_logit_softcapping=3.0, query_pre_attn_scalar=16, rope_parameters=GEMMA3_ROPE,
                        **SLIDING),
    "granite": dict(embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=2.0, attention_multiplier=0.3),
}
FAMILIES = ("llama", "qwen3", "gemma3_text", "granite")  # every linear kind, both dtypes, 1 and 2 threads


def family_config(model_type: str):
    from transformers import AutoConfig

    if model_type == "gemma3":  # the multimodal wrapper: its text decoder runs a text-only prompt
        return tiny_gemma3_multimodal(dict(TINY, query_pre_attn_scalar=16, **SLIDING))
    return AutoConfig.for_model(model_type, **TINY, **FAMILY_CONFIGS[model_type])


def family_model(model_type: str, seed: int = 0):
    """A tiny random float32 model of `model_type` (tiny_model for llama), weights and norms drawn
    large enough that every part of the forward moves the logits."""
    from transformers import AutoModelForCausalLM

    if model_type == "llama":
        return tiny_model("llama", seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(model_type), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
            elif "norm" in name:  # around each family's own start (Llama's 1, Gemma's 0 in 1 + w)
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Tiny folders of every family in FAMILIES: SparseGPT 50% (bitmask) and 2:4, a 2-expert
    expansion (folded router) and a 3-expert one with 2 PCA dimensions (a router that does not fold)."""
    root = tmp_path_factory.mktemp("decode_models")
    out = {}
    for family in FAMILIES:
        for name, sparsity in (("bitmask", "0.5"), ("2:4", "2:4")):
            model = family_model(family)
            record = compress(model, windows(), SparseGPTConfig(parse_sparsity(sparsity)), batch_size=2,
                              progress=False)
            save_artifact(root / family / name, model, tokenizer=tokenizer, record=record)
            out[family, name] = root / family / name
        for name, experts, pca in (("experts", 2, None), ("experts unfolded", 3, 2)):
            model = family_model(family)
            config = ExpandConfig(experts=experts, sparsity=parse_sparsity("0.5"), pca_dim=pca)
            calibrate(model, windows(), ExpandCompressor(config), batch_size=2, progress=False)
            save_artifact(root / family / name, model, tokenizer=tokenizer, record={"kind": "expanded"})
            out[family, name] = root / family / name
    for kind in KINDS[1:]:  # the tests of llama alone
        out[kind] = out["llama", kind]
    return out


def load(folders, kind: str, dtype: torch.dtype, family: str = "llama"):
    """A model of `kind` with its linears as generate holds them (--weights auto)."""
    if kind == "dense":
        model = family_model(family).to(dtype)
        from sparse_expansion.storage import set_weights

        set_weights(model, "auto")
        return model
    model, _ = load_model(str(folders[family, kind]), dtype=dtype, weights="auto")
    return model


KINDS = ["dense", "bitmask", "2:4", "experts", "experts unfolded"]


def expect_kind(model, kind: str) -> None:
    """The model holds the linear kind the test means to cover."""
    mlp = decoder_layers(model)[0].mlp.gate_proj
    if kind == "dense":
        assert type(mlp) is (DecodeLinear if model.dtype == torch.bfloat16 and ops.bf16_dot_available()
                             else torch.nn.Linear)
    elif kind in ("bitmask", "2:4"):
        assert isinstance(mlp, CompressedLinear) and mlp.format == kind
    else:
        assert isinstance(mlp, SparseExpertLinear) and mlp.router.folds == (kind == "experts")


def step_logits(model, ids: torch.Tensor, threads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's logits for ids [1, 12]: after an 8-token prefill by the forward pass (its last
    logits, then positions 8-11), and for positions 0-11 with a cache the step filled itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = decode.FastDecoder(model, 16)
        prompt = fast.prefill(ids[:, :8])  # positions 0-7 through the forward pass, into the cache
        got = torch.stack([fast.step(int(ids[0, p]), p).clone() for p in range(8, 12)])
        own = decode.FastDecoder(model, 16)
        mine = torch.stack([own.step(int(ids[0, p]), p).clone() for p in range(12)])
    finally:
        torch.set_num_threads(before)
    return prompt, got, mine


@pytest.fixture(scope="module")
def forward_passes(folders):
    """(model, its forward pass's logits over LOGIT_IDS) per family, kind and dtype, loaded once for
    both thread counts (the step does not change the model)."""
    cache = {}

    def get(family: str, kind: str, dtype: torch.dtype):
        if (family, kind, dtype) not in cache:
            model = load(folders, kind, dtype, family)
            with torch.no_grad():
                cache[family, kind, dtype] = model, model(LOGIT_IDS).logits[0].float()  # every position
        return cache[family, kind, dtype]
    return get


LOGIT_IDS = windows(1, 12, seed=5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_step_logits_equal_the_forward_pass(forward_passes, family, kind, dtype, threads):
    """float32: within 1e-4 of the forward pass. bfloat16: within 10% of the largest logit (the
    step keeps the residual stream and attention in float32 where the forward rounds them to
    bfloat16) and the same top token at >= 75% of the positions."""
    model, want = forward_passes(family, kind, dtype)
    expect_kind(model, kind)
    prompt, got, mine = step_logits(model, LOGIT_IDS, threads)
    tol = 1e-4 if dtype == torch.float32 else 0.1 * float(want.abs().max())
    torch.testing.assert_close(prompt, want[7], atol=tol, rtol=0)
    torch.testing.assert_close(got, want[8:], atol=tol, rtol=0)
    torch.testing.assert_close(mine, want, atol=tol, rtol=0)
    if dtype == torch.bfloat16:  # loose tolerance, but the choice of token must mostly agree
        agree = (mine.argmax(-1) == want.argmax(-1)).float().mean()
        assert agree >= 0.75


@pytest.mark.parametrize("model_type", decode.MODEL_TYPES)
def test_every_family_the_step_runs_equals_its_forward_pass(model_type):
    """Dense float32, the families not covered kind by kind above included (Mistral's window from
    its config, Gemma 2's soft-capped attention, the multimodal Gemma 3's text decoder)."""
    model = family_model(model_type)
    assert decode.choose_path(model) == ("fast", None)
    ids = windows(1, 12, seed=5)
    with torch.no_grad():
        want = model(ids).logits[0].float()
    prompt, got, mine = step_logits(model, ids, 1)
    torch.testing.assert_close(prompt, want[7], atol=1e-4, rtol=0)
    torch.testing.assert_close(got, want[8:], atol=1e-4, rtol=0)
    torch.testing.assert_close(mine, want, atol=1e-4, rtol=0)


def _without(model, model_type: str, extra: str) -> None:
    """Switch one of the tiny model's extras off, in place, as if its config lacked it."""
    config = model.config.get_text_config()
    if extra == "window":
        config.sliding_window = 10_000
        for layer in decoder_layers(model):
            if getattr(layer.self_attn, "sliding_window", None):
                layer.self_attn.sliding_window = 10_000
    elif extra == "softcap":
        config.final_logit_softcapping = None
    elif extra == "local rope":  # the sliding layers' table made the global one
        rotary = model.model.rotary_emb
        rotary.sliding_attention_inv_freq = rotary.full_attention_inv_freq
    elif extra == "multipliers":
        config.logits_scaling = 1.0


@pytest.mark.parametrize("model_type, extra", [
    ("mistral", "window"), ("qwen2", "window"), ("qwen3", "window"), ("gemma2", "window"), ("gemma3_text", "window"),
    ("gemma2", "softcap"), ("gemma3_text", "softcap"), ("gemma3_text", "local rope"), ("granite", "multipliers")])
def test_the_tiny_models_extras_change_their_logits(model_type, extra):
    """The tests above could not pass with a step that ignored the sliding window (12 positions,
    window 6), the soft caps, Gemma 3's local rotary base or Granite's multipliers: each changes the
    forward pass's logits by far more than the float32 tolerance."""
    model = family_model(model_type)
    ids = windows(1, 12, seed=5)
    with torch.no_grad():
        want = model(ids).logits[0]
        _without(model, model_type, extra)
        other = model(ids).logits[0]
    assert float((want - other).abs().max()) > 0.05


def test_the_step_runs_the_table_rows_it_has_a_layout_for_and_refuses_the_rest():
    """decode.LAYOUTS is keyed by rows of arch.py's table (no second list of architectures); every
    other type of the table is refused with its name and the types the step runs."""
    from types import SimpleNamespace

    table = supported_model_types()
    assert set(decode.LAYOUTS) <= set(table)
    assert decode.MODEL_TYPES == tuple(t for t in table if t in decode.LAYOUTS)
    assert {"llama", "qwen3", "gemma3_text", "granite"} <= set(decode.MODEL_TYPES)
    for model_type in set(table) - set(decode.LAYOUTS):
        path, why = decode.choose_path(SimpleNamespace(config=SimpleNamespace(model_type=model_type)))
        assert path == "hf" and repr(model_type) in why and "gemma3_text" in why


def test_a_soft_cap_the_forward_ignores_is_refused():
    """transformers' multimodal Gemma 3 does not cap its logits even where the text config sets a
    cap: the step refuses rather than guess which the user meant."""
    model = family_model("gemma3")
    model.config.text_config.final_logit_softcapping = 3.0
    path, why = decode.choose_path(model)
    assert path == "hf" and "final_logit_softcapping" in why


@pytest.mark.parametrize("family, kind", [("llama", kind) for kind in KINDS] + [
    (family, kind) for family in FAMILIES[1:] for kind in ("dense", "2:4", "experts unfolded")])
def test_greedy_generation_gives_hugging_faces_tokens(folders, family, kind):
    model = load(folders, kind, torch.float32, family)
    ids = windows(1, 6, seed=3)
    hf = decode.generate(model, ids, 12, path="hf", pad_token_id=1, ignore_eos=True)
    fast = decode.generate(model, ids, 12, path="auto", ignore_eos=True)
    assert hf["decode_path"] == "hf" and fast["decode_path"] == "fast"
    assert fast["new_ids"].tolist() == hf["new_ids"].tolist()
    assert fast["new_tokens"] == 12 and 1 not in fast["new_ids"].tolist()  # ignore_eos: eos never chosen


def test_stops_at_eos_like_hugging_face(folders):
    model = load(folders, "dense", torch.float32)
    model.generation_config.eos_token_id = None
    ids = windows(1, 6, seed=3)
    free = decode.generate(model, ids, 10, path="fast")["new_ids"].tolist()
    model.generation_config.eos_token_id = free[3]  # make the 4th token end the text
    hf = decode.generate(model, ids, 10, path="hf", pad_token_id=1)["new_ids"].tolist()
    fast = decode.generate(model, ids, 10, path="fast")["new_ids"].tolist()
    assert fast == hf == free[:free.index(free[3]) + 1]


def test_sampling_is_seeded(folders):
    model = load(folders, "experts", torch.float32)
    ids = windows(1, 6, seed=3)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(decode.generate(model, ids, 16, temperature=1.5, ignore_eos=True)["new_ids"].tolist())
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(0 <= t < 128 for t in runs[2])


def test_save_load_generate_identical(tmp_path, tokenizer):
    model = tiny_model("llama")
    calibrate(model, windows(), ExpandCompressor(ExpandConfig(experts=2, sparsity=parse_sparsity("0.5"))),
              batch_size=2, progress=False)
    ids = windows(1, 6, seed=4)
    before = decode.generate(model, ids, 10, path="fast", ignore_eos=True)["new_ids"].tolist()
    save_artifact(tmp_path / "se", model, tokenizer=tokenizer, record={"kind": "expanded"})
    loaded, _ = load_model(str(tmp_path / "se"), weights="auto")
    assert decode.generate(loaded, ids, 10, path="fast", ignore_eos=True)["new_ids"].tolist() == before


def test_unsupported_models_fall_back_and_say_why(folders):
    gpt2 = tiny_model("gpt2")
    path, why = decode.choose_path(gpt2)
    assert path == "hf" and "gpt2" in why
    result = decode.generate(gpt2, windows(1, 6), 5, pad_token_id=1, ignore_eos=True)
    assert result["decode_path"] == "hf" and "gpt2" in result["fast_unavailable"] and result["new_tokens"] == 5
    with pytest.raises(decode.Unsupported):
        decode.generate(gpt2, windows(1, 6), 5, path="fast")
    llama = tiny_model("llama")
    handle = llama.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert "hooks" in decode.choose_path(llama)[1]  # the step would skip what the hook does
    handle.remove()
    assert decode.choose_path(llama) == ("fast", None)
    assert decode.choose_path(llama, "hf") == ("hf", "asked for")


def test_the_torch_kernel_fallback_takes_the_hugging_face_path(folders):
    model, _ = load_model(str(folders["experts"]), weights="compressed")
    ids = windows(1, 6, seed=3)
    want = decode.generate(model, ids, 8, path="fast", ignore_eos=True)["new_ids"].tolist()
    with ops.use_backend("torch"):
        path, why = decode.choose_path(model)
        assert path == "hf" and "SPARSE_EXPANSION_KERNELS=torch" in why
        result = decode.generate(model, ids, 8, pad_token_id=1, ignore_eos=True)
    assert result["decode_path"] == "hf" and result["new_ids"].tolist() == want


def test_generate_json_says_which_path_ran(folders, capsys):
    args = ["generate", str(folders["2:4"]), "--prompt", "To be", "--max-new-tokens", "6", "--ignore-eos", "--json",
            "--weights", "auto"]  # float values: the two paths' arithmetic is the same (int8 differs by act8)
    rows = {}
    for extra in ([], ["--decode", "hf"]):
        assert main(args + extra) == 0
        rows[tuple(extra)] = json.loads(capsys.readouterr().out)
    fast, hf = rows[()], rows[("--decode", "hf")]
    assert fast["decode_path"] == "fast" and fast["fast_unavailable"] is None and fast["kernels"] != "torch"
    # only the fields: on a tiny random model the two paths' float rounding (our kernels against torch's BLAS,
    # whose blocking follows the thread count) can flip a near-tie; the paths' agreement has its own tests
    assert hf["decode_path"] == "hf" and fast["new_tokens"] == hf["new_tokens"] == 6


def test_generate_json_on_an_unsupported_model(tmp_path, tokenizer, capsys):
    folder = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["generate", str(folder), "--prompt", "To be", "--max-new-tokens", "3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["decode_path"] == "hf" and "gpt2" in row["fast_unavailable"]
    assert main(["generate", str(folder), "--prompt", "To be", "--decode", "fast"]) == 2
    assert "--decode fast cannot run here" in capsys.readouterr().err


QUANT_KINDS = ["dense", "bitmask", "2:4", "experts"]


def quantized_model(folders, kind: str, bits: int, dtype: torch.dtype = torch.float32):
    """`kind` with every linear held as `bits`-bit codes in groups of 32 (the down projection's 64 inputs
    make two groups; the others one): QuantizedLinear for dense ones and the LM head, quantized
    CompressedLinear / experts for the pruned ones."""
    from sparse_expansion.storage import quantize_weights

    model = load(folders, kind, dtype)
    quantize_weights(model, bits, 32)
    return model


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", QUANT_KINDS)
def test_quantized_step_equals_the_forward_pass_in_its_arithmetic(folders, kind, bits, threads):
    """The step runs every quantized linear as ops.quant_decode_linear does: equal to that forward pass
    (kernels.linear.decode_arithmetic) within float rounding, as float32 models are, until an input code
    flips. act8 rounds every linear's input to int8, so a float-rounding difference upstream (the step's
    norms and attention are C++, the forward's torch) can move one code across a rounding boundary, and
    attention carries that to every later position (seen once: 2:4 int4, layer 1's q/k/v at position 2,
    inputs 1.2e-6 apart, outputs 0.009). Checked: the first two positions within float rounding (a wrong
    kernel, scale or route differs from the first token on), every position within the bound one such
    flip stays inside (the exact-arithmetic test's, below)."""
    from sparse_expansion.kernels.linear import decode_arithmetic

    model = quantized_model(folders, kind, bits)
    ids = windows(1, 12, seed=5)
    with torch.no_grad(), decode_arithmetic(model):
        want = model(ids).logits[0].float()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = decode.FastDecoder(model, 16)
        mine = torch.stack([fast.step(int(ids[0, p]), p).clone() for p in range(12)])
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(mine[:2], want[:2], atol=1e-4, rtol=0)
    assert (mine - want).abs().max() <= 0.2 * want.abs().max()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", QUANT_KINDS)
def test_quantized_step_logits_match_the_forward_pass(folders, kind, bits):
    """Against the exact de-quantized forward pass: each act8 linear is within the input rounding's bound
    (tests/test_kernels_quant.py); through a whole tiny random model (hidden 32: one block of 32 per
    vector) the logits moved by 1.4-5.8% of the mean |logit| on average and up to 13% of the largest
    (experts int4: a route flipped). Checked: mean within 8%, max within 20%, the same greedy token at
    least 3 times in 4. The real model's perplexity is the measure that matters (BENCHMARKS.md)."""
    from sparse_expansion.kernels import QuantizedLinear

    model = quantized_model(folders, kind, bits)
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.bits == bits
    mlp = model.model.layers[0].mlp.gate_proj
    assert (mlp.experts if kind == "experts" else mlp).bits == bits
    ids = windows(1, 12, seed=5)
    with torch.no_grad():
        want = model(ids).logits[0].float()
    fast = decode.FastDecoder(model, 16)
    mine = torch.stack([fast.step(int(ids[0, p]), p).clone() for p in range(12)])
    diff = (mine - want).abs()
    assert diff.mean() <= 0.08 * want.abs().mean() and diff.max() <= 0.2 * want.abs().max()
    assert (mine.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75


@pytest.mark.parametrize("kind", ["bitmask", "experts", "experts unfolded"])
def test_quantized_step_is_the_same_at_1_2_and_3_threads(folders, kind):
    """Rows split over threads compute exactly what one thread computes (each row's sum is fixed), however
    the q, k and v heads fall to threads (4 + 2 + 2 here: at 3 threads one takes q heads and a k head,
    another a k head and the v heads, so each rotates and caches only what it computed), and each
    thread's routes are the same."""
    model = quantized_model(folders, kind, 4)
    ids = windows(1, 8, seed=2)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fast = decode.FastDecoder(model, 8)
            runs.append(torch.stack([fast.step(int(ids[0, p]), p).clone() for p in range(8)]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_quantized_values_take_the_fast_step(folders):
    model, _ = load_model(str(folders["bitmask"]), weights="int8")
    assert decode.choose_path(model) == ("fast", None)
    result = decode.generate(model, windows(1, 6), 4, pad_token_id=1, ignore_eos=True)
    assert result["decode_path"] == "fast" and result["fast_unavailable"] is None and result["new_tokens"] == 4


def test_generate_picks_int8_values_for_sparse_folders_where_vnni_runs_them(folders, tiny_model_dir, tmp_path,
                                                                           capsys):
    """--weights fast (generate's default): int8 on load for sparse float folders, nothing else."""
    from sparse_expansion.storage import fast_weights

    expect = "int8" if ops.act8_vector_available() else "auto"
    assert fast_weights(str(folders["bitmask"]), "cpu")[0] == expect
    assert fast_weights(str(folders["experts"]), "cpu")[0] == expect
    assert fast_weights(str(folders["2:4"]), "cpu")[0] == expect  # N:M codes run as a bitmask in act8
    assert fast_weights(str(tiny_model_dir), "cpu") == ("auto", "a dense model")
    assert fast_weights(str(folders["bitmask"]), "cuda")[0] == "auto"
    assert main(["convert", str(folders["bitmask"]), "--bits", "4", "--out", str(tmp_path / "int4")]) == 0
    assert fast_weights(str(tmp_path / "int4"), "cpu")[0] == "auto"  # codes already: kept as they are
    capsys.readouterr()
    for args, chosen, held in (([], expect, "int8" if expect == "int8" else None), (["--weights", "auto"], "auto",
                                                                                  None)):
        assert main(["generate", str(folders["bitmask"]), "--prompt", "To be", "--max-new-tokens", "2", "--json",
                     *args]) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["weights_chosen"] == chosen and row["weights_chosen_because"]
        model, _ = load_model(str(folders["bitmask"]), weights=chosen)
        bits = {getattr(m, "bits", None) for m in model.modules() if hasattr(m, "bits")}
        assert bits == ({8} if held == "int8" else {None})


def test_generate_picks_bfloat16_for_a_sparse_folder_and_float32_for_a_dense_one(folders, tiny_model_dir, capsys):
    """--dtype auto (the default): the fastest storage within 1% of float32 where the kernels have it."""
    from sparse_expansion.storage import fast_dtype

    expect = "bfloat16" if ops.bf16_dot_available() else "float32"
    assert fast_dtype(str(folders["bitmask"]), "cpu")[0] == expect
    assert fast_dtype(str(folders["experts"]), "cpu")[0] == expect
    assert fast_dtype(str(tiny_model_dir), "cpu") == ("float32", "a dense model")
    for args, dtype in (([], expect), (["--dtype", "float32"], "float32")):
        assert main(["generate", str(folders["bitmask"]), "--prompt", "To be", "--max-new-tokens", "2", "--json",
                     *args]) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["dtype"] == dtype and row["dtype_chosen_because"]


def test_a_step_without_layers_is_the_embedding_through_the_final_norm_and_head():
    """FastDecoder(layers=0), what the benchmark times as the LM head alone, computes exactly that:
    Gemma 3's scaled embedding, final norm, head and logit soft cap, with no decoder layer."""
    model = family_model("gemma3_text")
    ids = windows(1, 4, seed=2)
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(model.model.embed_tokens(ids)))[0]
        cap = model.config.final_logit_softcapping
        want = torch.tanh(logits / cap) * cap
    head = decode.FastDecoder(model, 8, layers=0)
    got = torch.stack([head.step(int(ids[0, p]), p).clone() for p in range(4)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prefill needs all"):
        head.prefill(ids)


@pytest.mark.real_model
def test_gemma3_270m_decodes_past_its_sliding_window_as_hugging_face_does():
    """The shipped Gemma 3 270M (head_dim 256, 262k vocabulary, window 512 on 15 of its 18 layers):
    after a 530-token prompt the sliding layers see only their last 512 positions; the step's logits
    equal the forward pass's and greedy decoding gives Hugging Face's tokens."""
    from sparse_expansion.models import load_causal_lm

    model, tokenizer = load_causal_lm("gemma3-270m", "cpu", torch.float32, weights="dense")
    ids = tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids[:, :531]
    assert ids.shape[1] == 531 and model.config.sliding_window == 512
    fast = decode.FastDecoder(model, 531)
    fast.prefill(ids[:, :530])
    got = fast.step(int(ids[0, 530]), 530)
    with torch.no_grad():
        want = model(ids).logits[0, -1]
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    hf = decode.generate(model, ids, 12, path="hf", ignore_eos=True, pad_token_id=0)
    assert decode.generate(model, ids, 12, path="fast", ignore_eos=True)["new_ids"].tolist() == hf["new_ids"].tolist()


def test_phase_profile_times_every_phase_on_every_thread(folders):
    """Profiling times each phase of a step on every thread: what it spent computing the phase and
    waiting at the barrier that ends it. A Llama's phases are all there (Gemma's output norms are not),
    nothing before `profile(True)` counts, and no thread accounts for more than the steps' wall time."""
    model = load(folders, "experts", torch.float32)
    ids = windows(1, 8, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fast = decode.FastDecoder(model, 8)
        fast.step(int(ids[0, 0]), 0)  # before profiling: not counted
        fast.profile(True)
        start = time.perf_counter()
        for p in range(1, 8):
            fast.step(int(ids[0, p]), p)
        wall = time.perf_counter() - start
        phases, steps = fast.phase_profile(), fast.profile()[0]
    finally:
        torch.set_num_threads(before)
    assert steps == 7
    assert list(phases) == ["embedding", "q/k/v", "attention", "o", "gate/up", "down", "lm head"]
    assert all(len(rows) == 2 and all(r["work"] > 0 and r["wait"] >= 0 for r in rows) for rows in phases.values())
    for t in range(2):
        assert 0 < sum(rows[t]["work"] + rows[t]["wait"] for rows in phases.values()) <= wall
