"""benchmarks/gpu/expert_eval.py: both expert paths of one expanded folder evaluate to the same perplexity,
and the table is taken against SparseGPT's median (run here on the CPU with a dense copy of the experts)."""

import json

from helpers import load_benchmark


def load_script():
    return load_benchmark("benchmarks/gpu/expert_eval.py", "expert_eval")


def test_builds_both_folders_and_times_both_expert_paths(tmp_path, tiny_model_dir, text_file, capsys):
    script = load_script()
    out = tmp_path / "rows.jsonl"
    assert script.main(["--device", "cpu", "--model", str(tiny_model_dir), "--work", str(tmp_path / "folders"),
                        "--experts", "3", "--calib", str(text_file), "--calib-windows", "4", "--seqlen", "32",
                        "--data", str(text_file), "--windows", "2", "--batch-size", "1", "--rounds", "2",
                        "--weights", "dense", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["SparseGPT", "experts, grouped GEMM", "experts, one matmul per expert"] * 2
    assert all(r["expert_linears_dense"] == 6 and r["tokens_per_s"] > 0 for r in rows)  # 2 layers x 3 MLP linears
    grouped, looped = rows[1]["perplexity"], rows[2]["perplexity"]
    assert grouped == looped and grouped != rows[0]["perplexity"]
    assert (tmp_path / "folders" / "se3" / "sparse_expansion.json").exists()
    assert "| SparseGPT |" in capsys.readouterr().out


def test_random_model_needs_no_files(tmp_path):
    # The default: SmolLM2's shapes with random weights, built and evaluated on random tokens.
    out = tmp_path / "rows.jsonl"
    assert load_script().main(["--device", "cpu", "--layers", "1", "--experts", "2", "--calib-windows", "2",
                               "--seqlen", "32", "--windows", "1", "--batch-size", "1", "--rounds", "1",
                               "--weights", "dense", "--work", str(tmp_path / "folders"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[1]["perplexity"] == rows[2]["perplexity"]
    assert all(r["expert_linears_dense"] == 3 and "grouped_mm_in_torch" in r for r in rows)  # gate, up, down


def test_table_is_relative_to_sparsegpt_median():
    rows = [{"variant": "SparseGPT", "tokens_per_s": t, "perplexity": 10.0} for t in (100.0, 300.0, 200.0)]
    rows += [{"variant": "experts, grouped GEMM", "tokens_per_s": t, "perplexity": 9.0} for t in (150.0, 170.0)]
    lines = load_script().table(rows).splitlines()
    assert lines[2] == "| SparseGPT | 200 | 3 | 1.00x | 10.00 |"
    assert lines[3] == "| experts, grouped GEMM | 160 | 2 | 0.80x | 9.00 |"
