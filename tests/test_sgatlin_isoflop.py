"""sgatlin isoflop: planning skips starved runs; a two-run study writes its table and plot;
the train command's usage errors are one line."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from sparse_expansion.errors import UsageError
from sparse_expansion.io import read_json
from sparse_expansion.sgatlin.data import (
    TokenData,
    encode_documents,
    save_token_data,
    train_tokenizer,
)
from sparse_expansion.sgatlin.isoflop import MIN_STEPS, plan_runs, run_study

TEXT = "And God said, Let there be light: and there was light. And God saw the light. " * 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tok = train_tokenizer([TEXT], vocab_size=280)
    stream = encode_documents(tok, {"a": TEXT})
    folder = tmp_path_factory.mktemp("tokens")
    save_token_data(TokenData(tok, stream, stream.copy()), folder)
    return folder


def test_plan_skips_runs_with_too_few_steps():
    runs, skipped = plan_runs([3e9], ["mlp", "sgatlin"], [0.5, 1.5], 3e9, 4, 32, 300)
    names = [r.name for r in runs]
    assert "mlp_s0.5_b3e09" in names and "sgatlin-gelu_s0.5_b3e09" in names
    assert any(s.startswith("sgatlin_s1.5") and f"< {MIN_STEPS}" in s for s in skipped)
    assert {r.group for r in runs} == {"isoflop", "ablation"}


def test_small_study_end_to_end(data_dir, tmp_path):
    out = tmp_path / "study"
    results = run_study(out, [3e9], ["mlp", "sgatlin"], [0.5], jobs=2, batch_size=4,
                        seq_len=32, data_dir=data_dir)
    assert {r["ffn"] for r in results} == {"mlp", "sgatlin"}
    saved = read_json(out / "results.json")["runs"]
    for r in saved:
        assert r["steps"] >= MIN_STEPS and np.isfinite(r["val_loss"])
        assert r["train_flops"] <= 3e9  # never more than the budget
        assert (out / "runs" / r["name"] / "metrics.json").is_file()
    assert (out / "isoflop.png").stat().st_size > 1000
    assert "winner" in (out / "table.md").read_text()
    with pytest.raises(UsageError, match="not empty"):
        run_study(out, [3e9], ["mlp"], [0.5], data_dir=data_dir)


def test_train_command_usage_errors(tmp_path):
    from sparse_expansion.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--ffn", "mlp", "--scale", "0.5", "--budget", "1e11",
                              "--out", str(tmp_path / "x"), "--activation", "gelu"])
    with pytest.raises(UsageError, match="sgatlin only"):
        args.func(args)
    args = parser.parse_args(["train", "--ffn", "mlp", "--scale", "0.7", "--budget", "1e11",
                              "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)])
    with pytest.raises(UsageError, match="no tokenizer.json"):
        args.func(args)
