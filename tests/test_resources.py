"""resources.py: the one reading of memory that commands and benchmarks share."""

import sys

from sparse_expansion.resources import children_cpu_seconds, peak_gpu_mb, peak_rss_mb, rss_mb, run_measured


def test_a_child_is_measured_alone(tmp_path):
    """Even from a large parent: Linux carries a parent's resident size into its child's ru_maxrss."""
    log = tmp_path / "child.log"
    parent = bytearray(600 * 2**20)
    parent[::4096] = b"1" * len(parent[::4096])
    # The child holds its peak for 0.3 s: the reading polls every 20 ms.
    child = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(0.3); print('ok')"
    code, seconds, peak = run_measured([sys.executable, "-c", child], log)
    assert code == 0 and seconds > 0
    assert 300 <= peak < 300 + 200  # its 300 MB plus the interpreter: not this (much larger) test process
    assert log.read_text().splitlines()[-1] == "ok" and log.read_text().startswith("$ ")
    assert run_measured([sys.executable, "-c", "raise SystemExit(3)"], log)[0] == 3
    del parent


def test_this_process_peak_is_at_least_what_it_holds():
    now = rss_mb()
    assert now > 0 and peak_rss_mb() >= 0.95 * now  # the kernel updates the peak lazily, by a few pages
    assert peak_gpu_mb("cpu") is None


def test_a_childs_cpu_time_counts_its_work_not_its_waiting(tmp_path):
    """The benchmark rows' *_cpu_seconds: a child that sleeps costs ~no CPU, one that computes does."""
    log = tmp_path / "child.log"
    before = children_cpu_seconds()
    _, wall, _ = run_measured([sys.executable, "-c", "import time; time.sleep(0.6)"], log)
    sleeping = children_cpu_seconds() - before
    assert wall >= 0.6 and sleeping < 0.4  # the interpreter's start-up only
    before = children_cpu_seconds()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass"
    run_measured([sys.executable, "-c", busy], log)
    assert children_cpu_seconds() - before >= 0.8
