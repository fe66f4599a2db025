"""benchmarks/calibration/table.py: each expansion run is compared with the SparseGPT run of its own version."""

from helpers import load_benchmark


def load_table():
    return load_benchmark("benchmarks/calibration/table.py", "calibration_table")


def test_ratio_is_taken_within_one_version():
    rows = [{"name": "sparsegpt70-before", "cpu_seconds": 100.0, "cpu_phases": {"hessian_stat": 20.0}},
            {"name": "sparsegpt70-after", "cpu_seconds": 200.0, "cpu_phases": {}},
            {"name": "se16-70-before", "cpu_seconds": 150.0, "cpu_phases": {"pca": 4.0}},
            {"name": "se16-70-after", "cpu_seconds": 220.0, "cpu_phases": {}}]
    lines = load_table().table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[4].startswith("| se16-70-before | 150.0 | 1.500x |") and "| 4.0 |" in lines[4]
    assert lines[5].startswith("| se16-70-after | 220.0 | 1.100x |")
    assert lines[2].startswith("| sparsegpt70-before | 100.0 | - |") and "| 20.0 |" in lines[2]
