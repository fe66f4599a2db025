"""Saved folders restore exactly, or fail clearly; finished folders are readable as any other file."""

import json

import pytest
import torch
from helpers import run_cli, tiny_model, watch_tensor_reads

from sparse_expansion.artifact import load_artifact as load_saved
from sparse_expansion.artifact import save_artifact
from sparse_expansion.engine import calibrate
from sparse_expansion.errors import UsageError
from sparse_expansion.kernels import CompressedLinear
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity
from sparse_expansion.storage import quantize_weights
from sparse_expansion.surgery import replace


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_load_identical_logits(tmp_path, tokenizer, family):
    model = tiny_model(family)
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    calibrate(model, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"))), progress=False)
    save_artifact(tmp_path / "m", model, tokenizer=tokenizer, record={"kind": "pruned"})
    loaded, _ = load_saved(tmp_path / "m")
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    record = json.loads((tmp_path / "m" / "sparse_expansion.json").read_text())
    assert record["format_version"] == 2 and record["kind"] == "causal_lm" and record["modules"] == {}
    assert record["record"] == {"kind": "pruned"}


@pytest.mark.parametrize("tied", [True, False])
def test_loading_replaced_modules_draws_no_random_weights(tmp_path, tokenizer, monkeypatch, tied):
    """Every weight of a folder with replaced modules comes from its file (a strict load), so building
    the model skips random initialisation (most of a 1.1B folder's load time and its peak memory);
    what loads is still exactly what was saved, a tied LM head included (stored once, as the embedding)."""
    model = tiny_model("llama")
    if tied:  # one MLP linear replaced, the head left tied to the embedding
        assert model.config.tie_word_embeddings
        up = model.model.layers[0].mlp.up_proj
        replace(model, "model.layers.0.mlp.up_proj", CompressedLinear.from_linear(up, torch.float32))
    else:
        quantize_weights(model, 8)  # every linear replaced (the head untied), norms and embeddings as they are
    ids = torch.randint(2, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    save_artifact(tmp_path / "q", model, tokenizer=tokenizer, record={})
    drawn = []

    def counted(name):
        real = getattr(torch.nn.init, name)

        def draw(tensor, *args, **kwargs):
            drawn.append(name)
            return real(tensor, *args, **kwargs)
        return draw

    for name in ("normal_", "uniform_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, counted(name))
    loaded, _ = load_saved(tmp_path / "q")
    assert drawn == []
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_corrupt_and_mismatched_folders(tmp_path, tokenizer):
    model = tiny_model("llama")
    save_artifact(tmp_path / "m", model, tokenizer=tokenizer, record={"kind": "pruned"})
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UsageError, match="corrupt"):
        load_saved(tmp_path / "m")
    save_artifact(tmp_path / "v", model, tokenizer=tokenizer, record={"kind": "pruned"})
    record = tmp_path / "v" / "sparse_expansion.json"
    record.write_text(record.read_text().replace('"format_version": 2', '"format_version": 99'))
    with pytest.raises(UsageError, match="format_version 99"):
        load_saved(tmp_path / "v")


def _saved_quantized(tmp_path, tokenizer):
    """A folder with replaced modules (the manifest path of the loader): every linear int8, head untied."""
    model = tiny_model("llama")
    quantize_weights(model, 8)
    save_artifact(tmp_path / "q", model, tokenizer=tokenizer, record={})
    return tmp_path / "q"


@pytest.mark.parametrize("change, message", [
    ("drop one key of a layer", "missing key.*model.layers.1.self_attn.k_proj"),
    ("drop a whole layer", "missing key.*model.layers.1."),
    ("drop the embedding", "missing key.*model.embed_tokens.weight"),
    ("add a key to a layer", "unexpected key.*model.layers.0.extra"),
    ("add a key outside the layers", "unexpected key.*model.extra"),
])
def test_loading_block_by_block_stays_strict(tmp_path, tokenizer, change, message):
    from safetensors.torch import load_file, save_file

    folder = _saved_quantized(tmp_path, tokenizer)
    tensors = load_file(folder / "model.safetensors")
    if change == "drop one key of a layer":
        del tensors[next(k for k in tensors if k.startswith("model.layers.1.self_attn.k_proj."))]
    elif change == "drop a whole layer":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}
    elif change == "drop the embedding":
        del tensors["model.embed_tokens.weight"]
    elif change == "add a key to a layer":
        tensors["model.layers.0.extra"] = torch.zeros(3)
    else:
        tensors["model.extra"] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(UsageError, match=message):
        load_saved(folder)


@pytest.mark.parametrize("layer", [0, 1])
def test_a_compressed_weight_that_disagrees_with_itself_is_refused_in_any_layer(tmp_path, tokenizer, layer):
    """Each compressed module checks its tensors after its block is loaded; the last pass over the whole
    model (the rest) does not check them again, and must not skip one it has not checked."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    for i in (0, 1):
        up = model.model.layers[i].mlp.up_proj
        up.weight.data[up.weight.abs() < up.weight.abs().median()] = 0
        replace(model, f"model.layers.{i}.mlp.up_proj", CompressedLinear.from_linear(up, torch.float32))
    save_artifact(tmp_path / "m", model, tokenizer=tokenizer, record={})
    file = tmp_path / "m" / "model.safetensors"
    tensors = load_file(file)
    name = f"model.layers.{layer}.mlp.up_proj.mask"
    tensors[name] = tensors[name].flip(0).contiguous()  # same popcount in total, not row by row
    assert not torch.equal(tensors[name], load_file(file)[name])
    save_file(tensors, file)
    with pytest.raises(UsageError, match="row_offsets disagree"):
        load_saved(tmp_path / "m")


def test_loading_reads_one_layer_at_a_time(tmp_path, tokenizer, monkeypatch):
    """The file's tensors are read a decoder layer at a time and copied into the model, so a load never
    holds the whole state dict beside the model (twice the model's memory at its peak)."""
    import weakref

    folder = _saved_quantized(tmp_path, tokenizer)
    alive, most = [], [0]

    def count(_key, tensor):
        alive.append(weakref.ref(tensor))
        most[0] = max(most[0], sum(ref() is not None for ref in alive))

    watch_tensor_reads(monkeypatch, count)
    loaded, _ = load_saved(folder)
    per_layer = sum(1 for k in loaded.state_dict() if k.startswith("model.layers.0."))
    outside = sum(1 for k in loaded.state_dict() if not k.startswith("model.layers."))
    assert len(alive) == len(loaded.state_dict())  # every tensor read once (the int8 head is untied)
    assert 0 < most[0] <= max(per_layer, outside) < len(alive) / 2


def test_a_folder_saved_without_tokenizer_loads_and_commands_say_what_is_missing(tmp_path, capsys):
    # A model built from a config (random weights) has no tokenizer to save: its folder still loads.
    model = tiny_model("llama")
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    calibrate(model, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"), bits=4, group_size=16)),
              progress=False)
    model = quantize_weights(model, 4, 16) and model  # replaced modules: the manifest path of the loader
    save_artifact(tmp_path / "m", model, record={"kind": "pruned"})
    loaded, tokenizer = load_saved(tmp_path / "m")
    assert tokenizer is None and torch.equal(loaded(ids).logits, model(ids).logits)
    code, out, err = run_cli(["eval", tmp_path / "m", "--windows", "1", "--seqlen", "16"], capsys)
    assert code == 2 and "has no tokenizer" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_finite_check_is_exact_when_the_sum_overflows(dtype):
    from sparse_expansion.artifact import _all_finite

    big = torch.finfo(dtype).max
    finite = torch.full((64,), big, dtype=dtype)  # every value finite, their sum is not
    assert _all_finite(finite) and _all_finite(torch.randn(100).to(dtype))
    for bad in (float("inf"), float("-inf"), float("nan")):
        broken = torch.randn(100).to(dtype)
        broken[37] = bad
        assert not _all_finite(broken)
    mixed = torch.full((4,), big, dtype=dtype)
    mixed[1] = -float("inf")
    assert not _all_finite(mixed)


def test_finished_output_folder_has_umask_permissions(tmp_path):
    # mkdtemp/mkstemp make owner-only entries; a finished result must be readable like any mkdir.
    import os

    from sparse_expansion.io import atomic_output_dir, write_json

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            write_json(tmp / "a.json", {"x": 1})
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert (out.stat().st_mode & 0o777, (out / "a.json").stat().st_mode & 0o777) == (0o755, 0o644)
    assert (out / "sub").stat().st_mode & 0o777 == 0o755
