"""compressed-tensors export: pruned folders round-trip through transformers and compressed-tensors
with identical weights and logits; expanded folders and bad inputs are refused with one line."""

import json

import pytest
import torch
from helpers import run_cli

pytest.importorskip("compressed_tensors")




def make(kind, tmp_path, tiny_model_dir, text_file, capsys, *flags):
    out = tmp_path / kind
    code, _, err = run_cli([kind, tiny_model_dir, *flags, "--out", out, "--calib", text_file, "--calib-windows", "4",
                        "--seqlen", "32"], capsys)
    assert code == 0, err
    return out


def logits(model, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        return model(ids).logits


CASES = [  # (prune flags, stored format in config.json, linears quantized)
    (["--method", "sparsegpt", "--sparsity", "0.5"], None, 0),
    (["--method", "wanda", "--sparsity", "2:4"], None, 0),
    (["--method", "sparsegpt", "--sparsity", "2:4", "--bits", "4"], "pack-quantized", 6),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--bits", "3"], "pack-quantized", 6),
]


@pytest.mark.parametrize("flags,stored,quantized", CASES, ids=["sg50", "wanda24", "sg24-4bit", "sg50-3bit"])
def test_round_trip_identical_logits(tmp_path, tiny_model_dir, text_file, capsys, flags, stored, quantized):
    from transformers import AutoModelForCausalLM

    from sparse_expansion.models import load_model

    pruned = make("prune", tmp_path, tiny_model_dir, text_file, capsys, *flags)
    out = tmp_path / "ct"
    code, stdout, err = run_cli(["export", pruned, "--format", "compressed-tensors", "--out", out], capsys)
    assert code == 0, err
    assert "compressed-tensors" in stdout
    ours, _ = load_model(str(pruned), weights="dense")  # --bits 4 / 8 folders hold codes
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.equal(logits(ours), logits(theirs))
    theirs_weights = theirs.state_dict()
    for name, weight in ours.state_dict().items():
        assert torch.equal(weight, theirs_weights[name]), name
    if "2:4" in flags:  # the 2:4 pattern survives: 2 zeros in every 4 consecutive inputs of every MLP row
        for name, weight in theirs_weights.items():
            if name.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")):
                assert ((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all(), name
    config = json.loads((out / "config.json").read_text())
    assert (config.get("quantization_config") or {}).get("format") == stored
    provenance = json.loads((out / "sparse_expansion_export.json").read_text())
    assert provenance["record"]["method"] == flags[1] and provenance["export"]["linears"] == quantized
    assert not (out / "sparse_expansion.json").exists()  # a plain Hugging Face folder, not our artifact
    again, _ = load_model(str(out))  # our own loader reads it too
    assert torch.equal(logits(again), logits(ours))


def test_compressed_tensors_decompresses_identical_weights(tmp_path, tiny_model_dir, text_file, capsys):
    """compressed-tensors' own compressor, given the stored tensors and the scheme from config.json,
    gives back our weights bit for bit."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    from sparse_expansion.models import load_model

    pruned = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt",
                  "--sparsity", "0.5", "--bits", "4")
    out = tmp_path / "ct"
    assert run_cli(["export", pruned, "--format", "compressed-tensors", "--out", out], capsys)[0] == 0
    config = QuantizationConfig.model_validate(json.loads((out / "config.json").read_text())["quantization_config"])
    scheme = config.config_groups["group_0"]
    assert scheme.weights.num_bits == 8 and scheme.weights.strategy == "channel"  # 4-bit grids fit 8 signed bits
    compressor = BaseCompressor.get_value_from_registry(config.format)
    stored = load_file(str(out / "model.safetensors"))
    ours, _ = load_model(str(pruned), weights="dense")  # --bits 4 / 8 folders hold codes
    checked = 0
    for name, module in ours.named_modules():
        if not name.endswith(("gate_proj", "up_proj", "down_proj")):
            continue
        local = {key[len(name) + 1:]: value for key, value in stored.items() if key.startswith(name + ".")}
        assert "weight" not in local and "weight_packed" in local
        assert torch.equal(compressor.decompress(local, scheme)["weight"], module.weight)
        checked += 1
    assert checked == 6


def test_row_grid_recovery_is_exact():
    from sparse_expansion.export.compressed_tensors import recover_row_grid
    from sparse_expansion.prune.quantize import RowQuantizer

    torch.manual_seed(0)
    dense = torch.randn(16, 40)
    grid = RowQuantizer.fit(dense, 4)
    weight = grid(dense).masked_fill(torch.rand(16, 40) < 0.5, 0.0)
    weight[3] = 0.0  # an all-zero row
    step, levels = recover_row_grid(weight, 4)
    assert torch.equal(step * levels, weight)
    assert ((levels.amax(1) - levels.amin(1)) <= 15).all()
    with pytest.raises(Exception, match="not on a 4-bit grid"):
        recover_row_grid(torch.randn(4, 40), 4)


def test_expanded_folder_refused(tmp_path, tiny_model_dir, text_file, capsys):
    expanded = make("expand", tmp_path, tiny_model_dir, text_file, capsys, "--experts", "2", "--sparsity", "0.5")
    out = tmp_path / "ct"
    code, _, err = run_cli(["export", expanded, "--format", "compressed-tensors", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "export supports pruned models; expanded models" in err
    assert not out.exists()


def test_folder_with_quantized_dense_linears_refused_for_what_it_is(tmp_path, tiny_model_dir, text_file, capsys):
    folder = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt", "--sparsity", "0.5",
                  "--bits", "8", "--quantize-dense")
    out = tmp_path / "ct"
    code, _, err = run_cli(["export", folder, "--format", "compressed-tensors", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "also stores 9 dense linears as codes" in err and "expanded" not in err
    assert not out.exists()


BAD = [
    ("missing", ["--format", "compressed-tensors"], "not found"),
    ("pruned", ["--format", "onnx"], "invalid choice"),
    ("pruned", [], "--format"),
    ("full", ["--format", "compressed-tensors"], "not empty"),
    ("no-config", ["--format", "compressed-tensors"], "has no config.json"),
    ("8bit", ["--format", "compressed-tensors"], "beyond the signed 8-bit range"),
]


@pytest.mark.parametrize("source,flags,message", BAD, ids=[b[2][:20] for b in BAD])
def test_bad_export_input(tmp_path, tiny_model_dir, text_file, capsys, source, flags, message):
    out = tmp_path / "out"
    if source == "pruned":
        folder = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "magnitude",
                      "--sparsity", "0.5")
    elif source == "8bit":
        folder = make("prune", tmp_path, tiny_model_dir, text_file, capsys, "--method", "sparsegpt", "--sparsity",
                      "0.5", "--bits", "8")
    elif source == "full":
        folder = tiny_model_dir
        out.mkdir()
        (out / "keep.txt").write_text("x")
    elif source == "no-config":
        folder = tmp_path / "empty"
        folder.mkdir()
    else:
        folder = tmp_path / "nope"
    code, _, err = run_cli(["export", folder, *flags, "--out", out], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert message in lines[-1] and [line for line in lines if "error:" in line] == lines[-1:], err
    if message not in ("invalid choice", "--format"):  # argparse's own errors come after its usage lines
        assert len(lines) == 1, err
    assert source == "full" and (out / "keep.txt").read_text() == "x" or not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
