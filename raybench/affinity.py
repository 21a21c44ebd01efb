"""Which cores a worker's threads may run on. Linux sets affinity per thread: pinning the
training thread pins the threads it starts afterwards too (they inherit it), so a thread that
should overlap the step on another core must be started with the wider set."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# The cores the pinned thread had before pin_cores (one training thread per worker process).
_unpinned: set[int] | None = None


def pin_cores(local_rank: int, threads: int) -> list[int] | None:
    """Pin the calling thread (and the intra-op threads it starts later, which inherit it) to
    `threads` cores chosen by local rank; None where the OS offers no affinity."""
    global _unpinned
    if not hasattr(os, "sched_setaffinity"):
        return None
    _unpinned = os.sched_getaffinity(0)
    allowed = sorted(_unpinned)
    cores = [allowed[(local_rank * threads + i) % len(allowed)] for i in range(threads)]
    os.sched_setaffinity(0, cores)  # 0: this thread (Linux sets affinity per thread)
    return cores


@contextlib.contextmanager
def every_core() -> Iterator[None]:
    """Run the block with the calling thread on the cores it had before pin_cores, then pin it
    again: threads started inside (a prefetcher's, say) are not held to the training thread's
    core, where their work would add to the step instead of overlapping it. A no-op where
    nothing was pinned."""
    own = os.sched_getaffinity(0) if _unpinned is not None else _unpinned
    if own == _unpinned:  # nothing pinned, or not this thread
        yield
        return
    os.sched_setaffinity(0, _unpinned)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)
