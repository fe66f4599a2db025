"""The index-layout design study (benchmarks/decode/prototypes/index_layout.cpp) builds with the command its
header gives and computes what it claims: its products agree with a float64 sum of the stored values. Its
timings are BENCHMARKS.md's business, not a test's (one copy, one round here)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "src" / "sparse_expansion" / "kernels" / "csrc"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_index_layout_builds_and_agrees_with_float64(tmp_path):
    binary = tmp_path / "index_layout"
    sources = [CSRC / name for name in ("quant_act8.cpp", "quant_scalar.cpp", "quant_avx512.cpp")]
    subprocess.run(["g++", "-O2", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
                    f"-I{CSRC}", "-o", str(binary), str(ROOT / "benchmarks/decode/prototypes/index_layout.cpp"),
                    *map(str, sources)], check=True, capture_output=True)
    out = subprocess.run([str(binary), "0.3", "1", "1"], check=True, capture_output=True, text=True).stdout
    if "needs AVX-512" in out:
        pytest.skip("CPU without AVX-512 VBMI / VNNI")
    err, scale = map(float, re.search(r"max \|y - float64 sum\| = (\S+) of max \|y\| (\S+)", out).groups())
    assert scale > 1.0  # the rows are not all zero
    assert err <= 1e-5 * scale
    assert re.search(r"^\| 1 \| \d+ \| \d+ \| \d+ \| \d+ \|$", out, re.M)  # one timed round, four figures
