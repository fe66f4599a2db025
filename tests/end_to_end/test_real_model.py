"""End to end on the shipped SmolLM2-135M (de-quantized Q4_1): converts once into the cache."""

import json
import math

import pytest

from sparse_expansion.cli import main

pytestmark = pytest.mark.real_model


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_shipped_model_prune_and_eval(tmp_path, capsys):
    assert main(["eval", "smollm2-135m", "--windows", "2", "--seqlen", "64", "--json"]) == 0
    dense = last_json(capsys)
    assert 1 < dense["perplexity"] < 500 and dense["params"] > 1.3e8
    out = tmp_path / "sg"
    assert main(["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--calib-windows", "2",
                 "--seqlen", "64", "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads((out / "sparse_expansion.json").read_text())["record"]
    assert len(record["linears"]) == 90 and record["mean_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert main(["eval", str(out), "--windows", "2", "--seqlen", "64", "--json"]) == 0
    pruned = last_json(capsys)
    assert math.isfinite(pruned["perplexity"]) and pruned["perplexity"] > dense["perplexity"] * 0.9
    assert pruned["mlp_nonzeros"] == pytest.approx(dense["mlp_nonzeros"] / 2, rel=1e-3)
