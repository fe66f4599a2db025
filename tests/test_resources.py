"""resources.py: the one reading of memory that commands and benchmarks share."""

import sys

from sparse_expansion.resources import peak_gpu_mb, peak_rss_mb, rss_mb, run_measured


def test_a_child_is_measured_alone(tmp_path):
    log = tmp_path / "child.log"
    child = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('ok')"
    code, seconds, peak = run_measured([sys.executable, "-c", child], log)
    assert code == 0 and seconds > 0
    assert 300 <= peak < 300 + 200  # its 300 MB plus the interpreter: not this (much larger) test process
    assert log.read_text().splitlines()[-1] == "ok" and log.read_text().startswith("$ ")
    assert run_measured([sys.executable, "-c", "raise SystemExit(3)"], log)[0] == 3


def test_this_process_peak_is_at_least_what_it_holds():
    now = rss_mb()
    assert now > 0 and peak_rss_mb() >= 0.95 * now  # the kernel updates the peak lazily, by a few pages
    assert peak_gpu_mb("cpu") is None
