"""glibc malloc held steady in a rank's process: freed memory kept for the next step instead of
given back to the kernel and faulted in again.

On CPU, torch allocates a step's activations and gradients with malloc and frees them when the
step ends. With glibc's defaults the allocator hands much of that back (a chunk at or above its
mmap threshold, at most 32 MiB, is unmapped when freed; a heap's free top is trimmed past the
trim threshold) and the next step faults it in again, page by page, each page zeroed by the
kernel: the LSTM 2x64 at batch 256 took 17,800 minor faults a step (tests/unit/test_malloc.py).
A Ray Train rank runs its loop on a thread, whose arena's heaps hold 64 MiB at most, and it
mapped and unmapped a 58 MiB buffer every step; from one process to the next its faults moved
between 17k and 26k a step, and the busiest rank of a lockstep set the pace (raybench/ddp-ray
0.916 at N=2 on 0.4-core nodes, all of the gap kernel time). With these settings the faults
go, for every launcher alike: on one host the LSTM's kernel CPU a step fell from 26-30 ms to
0.1-1.4 ms and both launchers ran about 1.7x faster (docs/performance.md, Kernel time).

Off unless asked (`--steady-malloc`): a user's own job runs with glibc's defaults, and what the
figures measure by default is that job. On: what the same job gives with the thresholds set
(for itself: MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_ and MALLOC_TOP_PAD_ in its workers'
runtime_env, or jemalloc/tcmalloc, which keep freed memory too). The price is resident
memory: a process keeps its peak step's memory (and up to the trim threshold more) instead of
returning it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
# No allocation gets a mapping of its own, to be unmapped when freed. A threshold cannot do it:
# glibc caps it at 32 MiB, and a Ray Train step's thread arena (heaps of 64 MiB at most) mapped
# and unmapped a 58 MiB buffer every step (strace). Without mmap the buffer stays in a heap;
# one too large for a thread's heap is served by the main arena's.
MMAP_MAX = 0
TRIM_THRESHOLD = 1 << 30  # give memory back only past 1 GiB free at a heap's top
TOP_PAD = 256 << 20  # grow a heap by this much more than asked, and never delete a thread's heap

SETTINGS = ((M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))


def hold_steady() -> dict[str, int] | None:
    """Set the thresholds for this process (every thread, every arena, from now on); the
    settings applied, or None where the C library has no glibc mallopt (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in SETTINGS):
        return None
    return {"mmap_max": MMAP_MAX, "trim_threshold": TRIM_THRESHOLD, "top_pad": TOP_PAD}
