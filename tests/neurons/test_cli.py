"""`sparse-expansion neurons` end to end on tiny models: files, JSON schema, errors, expanded input."""

from __future__ import annotations

import json

import pytest

from sparse_expansion.cli import main

FAST = ["--windows", "4", "--seqlen", "32", "--tokens", "100", "--pairs", "30", "--batch-size", "2"]


def test_neurons_measures_every_layer_and_writes_report(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "n"
    assert main(["neurons", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *FAST]) == 0
    result = json.loads((out / "neurons.json").read_text())
    assert set(result["layers"]) == {"0", "1"}
    layer = result["layers"]["0"]
    assert layer["module"] == "mlp.gate_proj" and len(layer["wd"]) == 64 and len(layer["md"]) == 64
    assert set(layer["projections"]) == {"mlp.gate_proj", "mlp.up_proj"}
    wd = layer["wd"]
    assert layer["top"][0] == max(range(64), key=lambda j: wd[j])
    assert result["tokens"] == 100 and result["noise_floor"] > 0
    for name in ("wd_by_layer.png", "wd_histograms.png", "top_neurons.png", "report.md"):
        assert (out / name).stat().st_size > 0
    assert "ablation" not in result and "untangling" not in result
    # deterministic given the seed
    again = tmp_path / "n2"
    assert main(["neurons", str(tiny_model_dir), "--data", str(text_file), "--out", str(again), *FAST]) == 0
    assert json.loads((again / "neurons.json").read_text())["layers"] == result["layers"]


def test_neurons_values_follow_from_the_weights(tmp_path, tokenizer, text_file, capsys):
    """Values, not only a schema: WD compares a neuron's standardised outputs with a Gaussian, so a
    neuron whose weights are 3x (or -1x) another's has the same WD (the Gaussian is symmetric), 9x
    its output variance and 3x its weight norm; the ablation's dense row is `eval`'s perplexity."""
    import torch
    from helpers import tiny_model

    model = tiny_model("llama")
    gate = model.model.layers[0].mlp.gate_proj.weight
    with torch.no_grad():
        gate[5] = 3 * gate[2]
        gate[7] = -gate[2]
    folder = tmp_path / "planted"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "n"
    assert main(["neurons", str(folder), "--data", str(text_file), "--out", str(out), *FAST, "--layers", "0",
                 "--ablate", "--fractions", "0.05", "--random-seeds", "1", "--calib", str(text_file),
                 "--calib-windows", "2", "--eval-data", str(text_file), "--eval-windows", "2"]) == 0
    result = json.loads((out / "neurons.json").read_text())
    stats = result["layers"]["0"]["projections"]["mlp.gate_proj"]
    assert stats["wd"][5] == pytest.approx(stats["wd"][2], rel=1e-4)
    assert stats["wd"][7] == pytest.approx(stats["wd"][2], rel=1e-4)
    assert len(set(round(w, 4) for w in stats["wd"])) > 32  # the other neurons differ
    assert stats["variance"][5] == pytest.approx(9 * stats["variance"][2], rel=1e-4)
    assert stats["norm"][5] == pytest.approx(3 * stats["norm"][2], rel=1e-5)
    dense = next(r for r in result["ablation"] if r["rule"] == "dense")
    capsys.readouterr()
    assert main(["eval", str(folder), "--data", str(text_file), "--windows", "2", "--seqlen", "32", "--json"]) == 0
    assert dense["perplexity"] == pytest.approx(json.loads(capsys.readouterr().out)["perplexity"], rel=1e-6)
    pruned = [r["perplexity"] for r in result["ablation"] if r["rule"] != "dense"]
    assert all(p != pytest.approx(dense["perplexity"], rel=1e-9) for p in pruned)  # pruning rows changed the model


def test_neurons_ablate_adds_every_rule(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "a"
    assert main(["neurons", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *FAST,
                 "--layers", "1", "--ablate", "--fractions", "0.05,0.2", "--random-seeds", "2",
                 "--calib", str(text_file), "--calib-windows", "2", "--eval-data", str(text_file),
                 "--eval-windows", "2"]) == 0
    result = json.loads((out / "neurons.json").read_text())
    assert set(result["layers"]) == {"1"}
    rules = [(r["rule"], r["fraction"], r["seed"]) for r in result["ablation"]]
    assert ("dense", 0.0, None) in rules and ("random", 0.2, 1) in rules and ("wd", 0.05, None) in rules
    assert len(rules) == 1 + 2 * 6
    assert all(r["perplexity"] > 1 for r in result["ablation"])
    assert (out / "ablation.png").stat().st_size > 0
    assert "Which neurons matter" in (out / "report.md").read_text()


def test_neurons_on_an_expanded_model_compares_with_its_source(tmp_path, tiny_model_dir, text_file):
    se = tmp_path / "se"
    assert main(["expand", str(tiny_model_dir), "--experts", "2", "--sparsity", "0.5", "--out", str(se),
                 "--calib", str(text_file), "--calib-windows", "4", "--seqlen", "32"]) == 0
    out = tmp_path / "u"
    assert main(["neurons", str(se), "--data", str(text_file), "--out", str(out), *FAST]) == 0
    result = json.loads((out / "neurons.json").read_text())
    u = result["untangling"]
    assert u["experts"] == 2 and u["source_model"] == str(tiny_model_dir)
    entry = u["layers"]["0"]["mlp.gate_proj"]
    assert len(entry["wd_dense"]) == len(entry["wd_expert"]) == 64
    assert 0 <= u["overall"]["high_wd"]["fraction_lower"] <= 1
    for name in ("untangle_scatter.png", "untangle_histograms.png"):
        assert (out / name).stat().st_size > 0
    assert "Does expansion untangle" in (out / "report.md").read_text()


@pytest.mark.parametrize("flags,needle", [
    (["--layers", "5"], "--layers"),
    (["--ablate", "--fractions", "2"], "--fractions"),
    (["--tokens", "0"], "--tokens"),
    (["--top-fraction", "0"], "--top-fraction"),
])
def test_neurons_usage_errors(tmp_path, tiny_model_dir, text_file, capsys, flags, needle):
    out = tmp_path / "bad"
    code = main(["neurons", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *FAST, *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_windows_zero_means_every_window_as_in_eval(tmp_path, tiny_model_dir, text_file):
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.models import load_model

    out = tmp_path / "all"
    fast = ["--windows", "0", *FAST[2:]]  # FAST starts with --windows 4
    assert main(["neurons", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *fast]) == 0
    _, tokenizer = load_model(str(tiny_model_dir))
    assert json.loads((out / "neurons.json").read_text())["windows"] == corpus_tokens(str(text_file),
                                                                                      tokenizer).numel() // 32
