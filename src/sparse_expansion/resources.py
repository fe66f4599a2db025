"""What a process costs: resident memory now and at its peak, a child's peak (a helper that
runs one and measures it), and the GPU's peak.

One place for these readings, so every command and benchmark reports memory the same way (MB = 2**20
bytes; Linux counts; 0 where /proc is missing).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb(pid: int | str = "self") -> float:
    """The most resident memory a process has held so far, in MB: its VmHWM, the high-water mark of
    its own address space. Not ru_maxrss: Linux carries the parent's resident size into a child's
    ru_maxrss at exec, so a small command started by a large process would report the large one's
    memory. ru_maxrss only where /proc is missing (then 0 for another process)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else 0.0


def peak_gpu_mb(device: str | None = None) -> float | None:
    """The most GPU memory torch has allocated on `device` so far, in MB; None off CUDA."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def run_measured(cmd: list[str], log: str | os.PathLike, env: dict[str, str] | None = None,
                 poll_seconds: float = 0.02) -> tuple[int, float, float]:
    """Run `cmd` as its own process, its output appended to `log` after the command line; returns
    (exit code, wall seconds, its peak resident memory in MB), so each configuration a benchmark
    measures pays only for itself. The peak is the child's VmHWM read every `poll_seconds` while it
    runs (growth in its last poll interval is missed; see peak_rss_mb for why not its rusage)."""
    start = time.perf_counter()
    peak = 0.0
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, peak_rss_mb(proc.pid))
            time.sleep(poll_seconds)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return proc.returncode, time.perf_counter() - start, peak


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children so far: a
    difference around run_measured is what the child computed, however long a shared machine
    left it waiting or paused."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    """Median CPU milliseconds of fn over `repeats` calls after one warm-up (process CPU time, so a
    descheduled process on a shared machine does not count the time it waited)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return statistics.median(samples) * 1e3
