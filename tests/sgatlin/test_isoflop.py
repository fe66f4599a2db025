"""sgatlin isoflop: planning skips starved runs; a two-run study writes its table and plot and
its numbers are those of the runs it made."""

from __future__ import annotations

import pytest

from sparse_expansion.artifact import load_artifact
from sparse_expansion.errors import UsageError
from sparse_expansion.io import read_json
from sparse_expansion.sgatlin.data import (
    TokenData,
    encode_documents,
    load_token_data,
    save_token_data,
    train_tokenizer,
    val_windows,
)
from sparse_expansion.sgatlin.isoflop import MIN_STEPS, plan_runs, run_study
from sparse_expansion.sgatlin.training import evaluate

# The runs use one thread each; evaluating their models on one thread too makes the losses equal.
pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = "And God said, Let there be light: and there was light. And God saw the light. " * 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tok = train_tokenizer([TEXT], vocab_size=280)
    stream = encode_documents(tok, {"a": TEXT})
    folder = tmp_path_factory.mktemp("tokens")
    save_token_data(TokenData(tok, stream, stream.copy()), folder)
    return folder


def test_plan_skips_runs_with_too_few_steps():
    runs, skipped = plan_runs([3e9], ["mlp", "sgatlin"], [0.5, 1.5], 3e9, 4, 32)
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
    windows = val_windows(load_token_data(data_dir).val, 64, 32)
    for r in saved:
        per_step = 3 * r["flops_per_token"] * 4 * 32
        assert r["steps"] == int(3e9 // per_step) >= MIN_STEPS
        assert r["train_flops"] == r["steps"] * per_step <= 3e9  # never more than the budget
        model, _ = load_artifact(out / "runs" / r["name"])  # each run is a saved model
        assert evaluate(model, windows) == r["val_loss"]
    best = min(saved, key=lambda r: r["val_loss"])
    table = (out / "table.md").read_text()
    assert table.strip().splitlines()[-1].endswith(f"| {best['ffn']} |")  # the winner column
    assert (out / "isoflop.png").stat().st_size > 1000
    with pytest.raises(UsageError, match="not empty"):
        run_study(out, [3e9], ["mlp"], [0.5], data_dir=data_dir)
