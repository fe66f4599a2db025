"""What a process costs: resident memory now and at its peak, the peak of a finished child (and a
helper that runs one and measures it), and the GPU's peak.

One place for these readings, so every command and benchmark reports memory the same way (MB = 2**20
bytes; Linux counts; 0 where /proc is missing).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """The most resident memory this process has held so far, in MB (ru_maxrss is kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss_mb(usage: resource.struct_rusage) -> float:
    """The peak resident memory of a finished child process, from its rusage (os.wait4), in MB."""
    return usage.ru_maxrss / 1024


def peak_gpu_mb(device: str | None = None) -> float | None:
    """The most GPU memory torch has allocated on `device` so far, in MB; None off CUDA."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def run_measured(cmd: list[str], log: str | os.PathLike, env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """Run `cmd` as its own process, its output appended to `log` after the command line; returns
    (exit code, wall seconds, its peak resident memory in MB), so each configuration a benchmark
    measures pays only for itself."""
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, child_peak_rss_mb(usage)
