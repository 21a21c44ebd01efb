"""glibc malloc held steady in a rank's process: freed memory kept for the next step instead of
given back to the kernel and faulted in again.

On CPU, torch allocates a step's activations and gradients with malloc and frees them when the
step ends. With glibc's defaults the allocator hands much of that back (chunks above its mmap
threshold are unmapped; a heap's free top is trimmed once it passes the trim threshold, both
thresholds moving as it goes) and the next step faults it in again, page by page, each page
zeroed by the kernel. Measured here on the LSTM 2x64 at batch 256: 17,800 minor faults a step
(73 MB), 29 of its 71 ms in the kernel. In a Ray Train worker, whose step runs on a thread of
its own (an arena of its own), the count moved between 17k and 26k a step from one process to
the next, and the busiest rank of a lockstep set the pace: raybench ran 8.4% behind ddp-ray at
N=2 on 0.4-core nodes, all of it kernel time. Fixed thresholds and a top pad remove the faults
(0-11 a step; the step took 39-42 ms), for every launcher alike.

Off unless asked (`--steady-malloc`): a user's own job runs with glibc's defaults, and what the
figures measure by default is that job. On: what the same job gives with the thresholds set
(for itself: MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ in its runtime_env,
or jemalloc/tcmalloc, which keep freed memory too). The price is resident memory: a process
keeps its peak step's memory (and up to the trim threshold more) instead of returning it.
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
