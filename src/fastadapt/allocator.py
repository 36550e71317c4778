"""Keep freed CPU memory for reuse: the cheapest speed-up of CPU meta-training.

glibc's malloc serves every block over its mmap threshold (at most 32 MB) with a
fresh mmap and unmaps it on free. A Conv-4 activation on an Omniglot batch is
tens of MB, so every training step faults in and zero-fills the same memory
again, which can take a large share of a run's CPU time in the kernel. With mmap
off and a high trim threshold, freed blocks stay in the heap and the next step
reuses them (measurements: docs/benchmarks.md, "Speed of a meta-training step").
The cost: the process keeps its peak memory until it exits instead of returning it.
"""
from __future__ import annotations

import ctypes
import sys

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 1 << 30  # return memory to the system only when over 1 GiB is free at the top of the heap

_applied = False


def reuse_freed_memory() -> bool:
    """Tell glibc (Linux) to keep freed memory; True when it took effect. Safe to call more than once."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    return _applied
