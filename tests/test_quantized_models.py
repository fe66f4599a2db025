"""Quantized models end to end on tiny ones: `--bits 4|8` stores exactly SparseGPT's grid, `--quantize-dense`
puts the dense linears on GPTQ's, `convert` quantizes any folder by round-to-nearest, and a quantized folder
saves and loads to identical logits."""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli, tiny_model, watch_tensor_reads, windows

from sparse_expansion.artifact import load_artifact, read_manifest, save_artifact
from sparse_expansion.errors import UsageError
from sparse_expansion.expand import SparseExpertLinear
from sparse_expansion.kernels import CompressedLinear, QuantizedLinear, decompress
from sparse_expansion.methods import compress, make_config
from sparse_expansion.models import load_model
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, Sparsity, parse_sparsity
from sparse_expansion.prune.compressors import prune_weight, quantized_linear
from sparse_expansion.prune.dense import DenseQuantConfig
from sparse_expansion.storage import quantize_weights
from sparse_expansion.surgery import replace


def logits(model, seed=0):
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def hessian(cols=64, tokens=256, seed=0):
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(seed))
    return 2 * x.t() @ x / tokens


@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 32), (4, 16)])
@pytest.mark.parametrize("grid", ["minmax", "mse"])
def test_sparsegpt_grid_is_stored_exactly(sparsity, bits, group, grid):
    """The stored codes de-quantize to the very weight SparseGPT returned, and that weight lies on the
    grid it reports (per row or per group of columns), min/max or clipped (mse)."""
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    config = SparseGPTConfig(parse_sparsity(sparsity), bits=bits, group_size=group, grid=grid)
    new, info = prune_weight(config, weight, hessian())
    scale, zero, grid_bits, group_size = info["grid"]
    assert scale.shape == (24, 64 // group_size) and grid_bits == bits
    module = quantized_linear(new, None, info["grid"])
    assert isinstance(module, CompressedLinear) and module.format == ("bitmask" if sparsity == "0.5" else "2:4")
    assert torch.equal(decompress(module.compressed()), new)
    assert module.bits == bits and module.group_size == group_size
    levels = torch.round(new / scale.repeat_interleave(group_size, 1)) + zero.repeat_interleave(group_size, 1)
    assert levels.min() >= 0 and levels.max() <= 2**bits - 1


def test_group_size_must_divide_the_block():
    with pytest.raises(ValueError, match="divide the block size"):
        prune_weight(SparseGPTConfig(parse_sparsity("0.5"), bits=4, group_size=48), torch.randn(8, 96),
                     hessian(96))


def make(command, tmp_path, source, text_file, capsys, *flags):
    out = tmp_path / f"{command}{len(list(tmp_path.iterdir()))}"
    code, _, err = run_cli([command, source, *flags, "--calib", text_file, "--calib-windows", "4",
                            "--seqlen", "32", "--out", out], capsys)
    assert code == 0, err
    return out


def test_prune_and_expand_with_bits_store_codes(tmp_path, tiny_model_dir, text_file, capsys):
    pruned = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt", "--sparsity", "0.5",
                  "--bits", "4", "--group-size", "16", "--grid", "mse")
    assert read_manifest(pruned)["record"]["grid"] == "mse"
    modules = read_manifest(pruned)["modules"]
    assert modules and {(s["type"], s["value_dtype"], s["group_size"]) for s in modules.values()} == \
        {("compressed_linear", "int4", 16)}
    model, _ = load_model(str(pruned))
    again, _ = load_model(str(pruned))
    assert torch.equal(logits(model), logits(again))
    expanded = make("expand", tmp_path, tiny_model_dir, text_file, capsys, "--experts", "2", "--sparsity", "0.5",
                    "--bits", "8")
    specs = read_manifest(expanded)["modules"].values()
    assert all(s["value_dtype"] == "int8" and s["group_size"] == s["in_features"] for s in specs)  # per row
    model, _ = load_model(str(expanded))
    experts = [m for m in model.modules() if isinstance(m, SparseExpertLinear)]
    assert experts and all(m.experts.bits == 8 for m in experts)
    for flags, message in ((["--method", "sparsegpt", "--group-size", "16"], "--group-size needs --bits"),
                           (["--method", "sparsegpt", "--bits", "4", "--group-size", "48"], "must divide 128"),
                           (["--method", "sparsegpt", "--grid", "mse"], "--grid needs --bits")):
        code, _, err = run_cli(["prune", tiny_model_dir, *flags, "--sparsity", "0.5", "--out", tmp_path / "bad"],
                               capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bits,group", [(4, None), (4, 16), (8, None)])
def test_gptq_at_sparsity_zero_beats_rounding_on_the_layer_output(bits, group):
    """--quantize-dense is SparseGPT's solve at sparsity 0 (GPTQ): on correlated inputs its output error
    tr((Q - W) H (Q - W)^T) is below round-to-nearest's on a grid of the same kind, and it prunes nothing."""
    from sparse_expansion.kernels.formats import fit_grid
    from sparse_expansion.prune.quantize import round_to_grid

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated features
    h = 2 * x.t() @ x / x.shape[0]
    weight = torch.randn(48, 64, generator=gen)
    new, info = prune_weight(SparseGPTConfig(Sparsity(0.0), bits=bits, group_size=group), weight, h)
    width = group or 64
    scale, zero = fit_grid(weight, bits, width, "minmax")
    rounded = round_to_grid(weight, scale.repeat_interleave(width, 1), zero.repeat_interleave(width, 1), bits)

    def error(q):
        return float(torch.trace((q - weight) @ h @ (q - weight).t()))

    assert error(new) < 0.8 * error(rounded)
    assert isinstance(quantized_linear(new, None, info["grid"]), QuantizedLinear)
    assert (new == 0).float().mean() < 1.5 * (rounded == 0).float().mean() + 0.01  # zeros only where rounding puts them


def test_quantize_dense_leaves_the_pruned_linears_of_the_first_layer_as_they_were():
    """The attention projections are observed in the same pass as the MLP, on the same inputs: layer 0's
    pruned MLP comes out identical with and without them; the LM head is GPTQ'd and untied."""
    config = make_config("sparsegpt", parse_sparsity("0.5"), bits=4, group_size=16)
    plain, quantized = tiny_model("llama"), tiny_model("llama")
    compress(plain, windows(), config, progress=False)
    record = compress(quantized, windows(), config, progress=False, dense=DenseQuantConfig(4, 16, head_bits=8))
    for name in ("gate_proj", "up_proj", "down_proj"):
        a = plain.model.layers[0].mlp.get_submodule(name).compressed()
        b = quantized.model.layers[0].mlp.get_submodule(name).compressed()
        assert torch.equal(decompress(a), decompress(b))
    attention = [m for m in quantized.model.layers.modules() if isinstance(m, QuantizedLinear)]
    assert len(attention) == 8 and {(m.bits, m.group_size) for m in attention} == {(4, 16)}
    assert isinstance(quantized.lm_head, QuantizedLinear) and quantized.lm_head.bits == 8
    assert not quantized.config.tie_word_embeddings
    assert quantized.model.embed_tokens.weight.dtype == torch.float32
    assert set(record["dense_quantization"]["linears"]) == {f"{i}.self_attn.{p}_proj" for i in range(2)
                                                             for p in "qkvo"}
    assert record["dense_quantization"]["head"]["bits"] == 8 and "head" in record["seconds"]
    assert torch.isfinite(logits(quantized)).all()


def test_quantize_dense_from_the_command_line(tmp_path, tiny_model_dir, text_file, capsys):
    pruned = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt", "--sparsity", "0.5",
                  "--bits", "4", "--group-size", "16", "--quantize-dense")
    modules = read_manifest(pruned)["modules"]
    assert {(s["type"], s["value_dtype"], s["group_size"]) for s in modules.values()} == \
        {("compressed_linear", "int4", 16), ("quantized_linear", "int4", 16)}
    assert len(modules) == 2 * 7 + 1  # every linear of two layers and the LM head
    model, _ = load_model(str(pruned))
    again, _ = load_model(str(pruned))
    assert torch.equal(logits(model), logits(again))
    expanded = make("expand", tmp_path, tiny_model_dir, text_file, capsys, "--experts", "2", "--sparsity", "0.5",
                    "--bits", "8", "--quantize-dense", "--head-bits", "0")
    assert read_manifest(expanded)["record"]["dense_quantization"]["head_bits"] == 0
    model, _ = load_model(str(expanded))
    assert {m.bits for m in model.model.layers.modules() if isinstance(m, QuantizedLinear)} == {8}
    assert not isinstance(model.lm_head, QuantizedLinear)  # --head-bits 0: the head stays float
    sequential = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt",
                      "--sparsity", "0.5", "--bits", "4", "--group-size", "16", "--quantize-dense", "--true-sequential")
    assert read_manifest(sequential)["record"]["true_sequential"] is True
    assert read_manifest(pruned)["record"]["true_sequential"] is False
    model, _ = load_model(str(sequential))
    assert torch.isfinite(logits(model)).all() and not torch.equal(logits(model), logits(again))
    for flags, message in ((["--quantize-dense"], "--bits 4 or --bits 8"),
                           (["--bits", "3", "--quantize-dense"], "--bits 4 or --bits 8"),
                           (["--bits", "4", "--head-bits", "8"], "--head-bits needs --quantize-dense")):
        code, _, err = run_cli(["prune", tiny_model_dir, "--method", "sparsegpt", *flags, "--sparsity", "0.5",
                                "--out", tmp_path / "bad"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bits,group,grid", [(8, None, "minmax"), (4, 16, "minmax"), (4, 16, "mse")])
def test_quantized_model_saves_and_loads_to_identical_logits(tmp_path, tokenizer, bits, group, grid):
    model = tiny_model("llama")
    before = logits(model)
    counts = quantize_weights(model, bits, group, grid=grid)
    assert counts["dense"] == 2 * 7 + 1  # every linear of two layers and the LM head
    assert isinstance(model.lm_head, QuantizedLinear) and not model.config.tie_word_embeddings
    after = logits(model)
    if bits == 8:  # a sanity bound (random tiny weights: int4 by rounding moves them too far for one)
        assert (after - before).abs().max() < 0.06 * before.abs().max()
    save_artifact(tmp_path / "q", model, tokenizer=tokenizer, record={})
    loaded, _ = load_artifact(tmp_path / "q")
    assert torch.equal(logits(loaded), after)
    bf16, _ = load_artifact(tmp_path / "q", torch.bfloat16)  # codes stay codes whatever the dtype
    assert bf16.lm_head.values.dtype == torch.uint8


@pytest.mark.parametrize("sparsity,grid", [("0.7", "minmax"), ("0.7", "mse"), ("2:4", "minmax")])
def test_pruned_linears_quantized_on_load_are_their_grids_codes(sparsity, grid):
    # Pruned nn.Linear weights go through their float format (and the C++ rounding for a bitmask on the
    # min/max grid): the codes must be those fit_grid + quantize give the dense weight.
    from sparse_expansion.arch import decoder_layers, linear_weight
    from sparse_expansion.kernels.formats import choose_format, fit_grid, quantize

    model = tiny_model("llama")
    compress(model, None, make_config("magnitude", parse_sparsity(sparsity)), progress=False)
    mlp = decoder_layers(model)[0].mlp
    weight = linear_weight(mlp.up_proj).detach().float()
    quantize_weights(model, 4, 16, grid=grid)
    assert isinstance(mlp.up_proj, CompressedLinear)
    want = quantize(weight, choose_format(weight), 4, 16, *fit_grid(weight, 4, 16, grid))
    got = mlp.up_proj.compressed()
    assert got.format == want.format == ("2:4" if sparsity == "2:4" else "bitmask")
    for name, tensor in want.tensors().items():
        assert torch.equal(got.tensors()[name], tensor), name


def test_convert_command(tmp_path, tiny_model_dir, text_file, capsys):
    pruned = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt", "--sparsity", "2:4",
                  "--bits", "8")
    out = tmp_path / "int4"
    code, stdout, err = run_cli(["convert", pruned, "--bits", "4", "--out", out], capsys)
    assert code == 0, err
    assert "kept 6 already quantized" in stdout  # SparseGPT's int8 grid stays; the rest goes int4 by rounding
    manifest = read_manifest(out)
    assert manifest["record"]["converted"]["bits"] == 4 and manifest["record"]["method"] == "sparsegpt"
    kinds = {(s["type"], s["value_dtype"]) for s in manifest["modules"].values()}
    assert kinds == {("compressed_linear", "int8"), ("quantized_linear", "int4")}
    original, _ = load_model(str(pruned))
    converted, _ = load_model(str(out))
    mlp = "model.layers.0.mlp.up_proj"
    assert torch.equal(decompress(converted.get_submodule(mlp).compressed()),
                       decompress(original.get_submodule(mlp).compressed()))
    expanded = make("expand", tmp_path, tiny_model_dir, text_file, capsys, "--experts", "2", "--sparsity", "0.5")
    code, stdout, err = run_cli(["convert", expanded, "--bits", "8", "--group-size", "0", "--out", tmp_path / "e8"],
                                capsys)
    assert code == 0 and "6 expert sets" in stdout, err
    code, stdout, err = run_cli(["convert", tiny_model_dir, "--bits", "8", "--out", tmp_path / "d8"], capsys)
    assert code == 0 and "15 dense linears" in stdout, err
    code, stdout, err = run_cli(["convert", tiny_model_dir, "--bits", "4", "--head-bits", "8",
                                 "--out", tmp_path / "h8"], capsys)
    assert code == 0, err
    model, _ = load_model(str(tmp_path / "h8"))
    assert (model.lm_head.bits, model.lm_head.group_size) == (8, 32)  # per row: the head's rows are 32 wide
    assert {m.bits for m in model.model.layers.modules() if isinstance(m, QuantizedLinear)} == {4}


def test_convert_grid_is_recorded_and_only_changes_scales_and_zeros(tmp_path, tiny_model_dir, capsys):
    folders = {}
    for grid in ("mse", "minmax"):
        folders[grid] = tmp_path / grid
        code, stdout, err = run_cli(["convert", tiny_model_dir, "--bits", "4", "--group-size", "16", "--grid", grid,
                                     "--out", folders[grid]], capsys)
        assert code == 0 and f"{grid} grid" in stdout, err
        assert read_manifest(folders[grid])["record"]["converted"]["grid"] == grid
    code, _, err = run_cli(["convert", tiny_model_dir, "--bits", "4", "--out", tmp_path / "default"], capsys)
    assert code == 0 and read_manifest(tmp_path / "default")["record"]["converted"]["grid"] == "minmax", err
    mse, _ = load_model(str(folders["mse"]))
    minmax, _ = load_model(str(folders["minmax"]))
    again, _ = load_model(str(folders["mse"]))
    assert torch.equal(logits(mse), logits(again))  # saved then loaded: identical
    source, _ = load_model(str(tiny_model_dir))
    name = "model.layers.0.self_attn.q_proj"
    weight = source.get_submodule(name).weight.float()
    a, b = mse.get_submodule(name).compressed(), minmax.get_submodule(name).compressed()
    assert (a.format, a.shape, a.bits, a.group_size) == (b.format, b.shape, b.bits, b.group_size) == \
        ("dense", tuple(weight.shape), 4, 16)
    assert not torch.equal(a.scales, b.scales)
    assert (decompress(a) - weight).square().sum() < (decompress(b) - weight).square().sum()


def test_quantize_on_load(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), weights="int4")
    linears = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(linears) == 15 and {m.bits for m in linears} == {4} and {m.group_size for m in linears} == {32, 64}
    converted = tiny_model("llama")
    quantize_weights(converted, 4, 128)  # what the default group means (128, capped at the row)
    assert torch.equal(logits(model), logits(converted))


def log_reads_and_roundings(monkeypatch) -> list:
    """("read", key) for every tensor a load reads, ("quantize", layer) for every layer it rounds, in order."""
    from sparse_expansion import storage

    events = []
    real_layer = storage.quantize_layer
    watch_tensor_reads(monkeypatch, lambda key, _tensor: events.append(("read", key)))

    def logged_layer(layer, *args, **kwargs):
        events.append(("quantize", layer))
        return real_layer(layer, *args, **kwargs)

    monkeypatch.setattr(storage, "quantize_layer", logged_layer)
    return events


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_a_folder_quantized_while_loading_equals_quantizing_after(tmp_path, tokenizer, monkeypatch, weights):
    """An expanded folder loaded with int8 / int4 storage rounds each decoder layer as soon as its weights
    are read (so one layer's float weights, not the whole model's, sit beside the codes): every layer is
    rounded before the next one is read, and the model is the one quantizing after the load gives."""
    from sparse_expansion.engine import calibrate
    from sparse_expansion.expand import ExpandCompressor, ExpandConfig

    model = tiny_model("llama")
    ids = torch.randint(2, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    calibrate(model, ids, ExpandCompressor(ExpandConfig(experts=2, sparsity=parse_sparsity("0.5"))), progress=False)
    save_artifact(tmp_path / "e", model, tokenizer=tokenizer, record={})
    events = log_reads_and_roundings(monkeypatch)
    loaded, _ = load_model(str(tmp_path / "e"), weights=weights)
    monkeypatch.undo()
    layers = list(loaded.model.layers)
    last_read = max(i for i, (kind, _) in enumerate(events) if kind == "read")
    quantized_at = [i for i, (kind, _) in enumerate(events) if kind == "quantize" and i < last_read]
    assert len(quantized_at) == len(layers) == 2  # while loading (set_weights then passes over them, keeping them)
    first_read_of_layer_1 = next(i for i, (kind, key) in enumerate(events)
                                 if kind == "read" and key.startswith("model.layers.1."))
    assert quantized_at[0] < first_read_of_layer_1 < quantized_at[1]
    after, _ = load_artifact(tmp_path / "e")
    bits = int(weights[3:])
    quantize_weights(after, bits, 128 if bits == 4 else None)  # the defaults storage.set_weights uses
    assert loaded.state_dict().keys() == after.state_dict().keys()
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(logits(loaded), logits(after))


def test_a_plain_pruned_folder_is_read_a_layer_at_a_time_too(tmp_path, tokenizer, monkeypatch):
    """A pruned folder (plain transformers files, tensors under the model's own names) goes through the same
    loader: each layer rounded as it is read with int8 storage, the same model as transformers'
    from_pretrained then quantizing, and its generation config kept."""
    from transformers import AutoModelForCausalLM

    from sparse_expansion.engine import calibrate

    model = tiny_model("llama")
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    calibrate(model, ids, PruneCompressor(SparseGPTConfig(parse_sparsity("0.5"))), progress=False)
    model.generation_config.max_new_tokens = 7
    save_artifact(tmp_path / "p", model, tokenizer=tokenizer, record={})
    assert not read_manifest(tmp_path / "p")["modules"]
    events = log_reads_and_roundings(monkeypatch)
    loaded, _ = load_model(str(tmp_path / "p"), weights="int8")
    monkeypatch.undo()
    first_quantize = next(i for i, (kind, _) in enumerate(events) if kind == "quantize")
    first_read_of_layer_1 = next(i for i, (kind, key) in enumerate(events)
                                 if kind == "read" and key.startswith("model.layers.1."))
    assert first_quantize < first_read_of_layer_1
    assert loaded.generation_config.max_new_tokens == 7
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p", dtype=torch.float32).eval()
    quantize_weights(plain, 8)
    assert torch.equal(logits(loaded), logits(plain))


def test_a_broken_layer_is_refused_before_it_is_quantized_on_load(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    up = model.model.layers[1].mlp.up_proj
    up.weight.data[up.weight.abs() < up.weight.abs().median()] = 0
    replace(model, "model.layers.1.mlp.up_proj", CompressedLinear.from_linear(up, torch.float32))
    save_artifact(tmp_path / "m", model, tokenizer=tokenizer, record={})
    file = tmp_path / "m" / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.1.mlp.up_proj.values"][3] = float("nan")
    save_file(tensors, file)
    with pytest.raises(UsageError, match="model.layers.1.*mlp.up_proj.values holds NaN"):
        load_model(str(tmp_path / "m"), weights="int8")


BAD = [
    (["--bits", "3"], "invalid choice"),
    (["--bits", "4", "--group-size", "-2"], "--group-size must be 0"),
    (["--bits", "4", "--out-exists"], "not empty"),
    (["--bits", "4", "--missing"], "not found"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[b[1][:16] for b in BAD])
def test_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys, flags, message):
    out = tmp_path / "out"
    source = tiny_model_dir
    if "--out-exists" in flags:
        out.mkdir()
        (out / "keep.txt").write_text("x")
    if "--missing" in flags:
        source = tmp_path / "nope"
    flags = [f for f in flags if not f.startswith(("--out-exists", "--missing"))]
    code, _, err = run_cli(["convert", source, *flags, "--out", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and message in lines[-1], err
    if message != "invalid choice":
        assert len(lines) == 1, err
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert (out / "keep.txt").exists() if "not empty" in message else not out.exists()
