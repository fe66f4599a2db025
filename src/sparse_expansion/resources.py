"""What a process costs: resident memory now and at its peak, and the peak of a finished child.

One place for these readings, so every command and benchmark reports memory the same way (MB = 2**20
bytes; Linux counts; 0 where /proc is missing).
"""

from __future__ import annotations

import resource


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
