"""The allocation plot reads rows by name: the 16-expert rows must land on their own lines (prior =
the uniform line, variance rows = the variance line) without being mistaken for a pruning method."""

import json

import pytest
from helpers import load_benchmark

pytest.importorskip("matplotlib")


def load_script():
    return load_benchmark("benchmarks/quality/plot_allocation.py", "plot_allocation")


def test_series_groups_methods_allocations_and_experts():
    plot = load_script()
    ppl = {"shakespeare:test": 1.0}
    rows = [{"name": n, "perplexity_by_data": ppl} for n in
            ("sparsegpt70", "sparsegpt60-variance", "wanda70-uniform", "se16-70-prior", "se16-80-variance",
             "se16-70", "se4-70-16x256-pv")]
    lines = plot.series(rows)
    assert set(lines) == {("sparsegpt", "uniform"), ("sparsegpt", "variance"), ("wanda", "uniform"),
                          ("16 experts", "uniform"), ("16 experts", "variance")}
    assert set(lines[("16 experts", "uniform")]) == {70}
    assert set(lines[("16 experts", "variance")]) == {80}


def test_plot_reads_several_result_folders(tmp_path, monkeypatch):
    plot = load_script()
    for folder, names in (("a", ["sparsegpt60", "sparsegpt70"]), ("b", ["se16-60-prior", "se16-70-prior"])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.jsonl").write_text("".join(
            json.dumps({"name": n, "perplexity_by_data": {"shakespeare:test": 50.0, "pydoc": 80.0}}) + "\n"
            for n in names))
    png = tmp_path / "plot.png"
    monkeypatch.setattr("sys.argv", ["plot", "--out", str(tmp_path / "a"), str(tmp_path / "b"), "--png", str(png)])
    plot.main()
    assert png.stat().st_size > 0
