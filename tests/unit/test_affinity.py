"""Core pinning: ranks get cores of their own, and a thread started under every_core() is not
held to the pinned thread's core (Linux threads inherit their starter's affinity)."""

import os
import threading

import pytest

from raybench import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity")


def in_thread(fn):
    """Run fn in a fresh thread (affinity is per thread: the test's own stays as it was)."""
    out = {}
    t = threading.Thread(target=lambda: out.update(value=fn()))
    t.start()
    t.join()
    return out["value"]


@pytest.fixture(autouse=True)
def forget_pinning():
    yield
    affinity._unpinned = None


def test_ranks_pin_to_cores_of_their_own_by_local_rank():
    allowed = sorted(os.sched_getaffinity(0))

    def pinned(rank):
        return affinity.pin_cores(rank, 1), sorted(os.sched_getaffinity(0))

    for rank in range(3):
        cores, now = in_thread(lambda rank=rank: pinned(rank))
        assert cores == now == [allowed[rank % len(allowed)]]


def started_thread_cores(widen: bool):
    """Pin this thread, start a thread (inside every_core() or not), report both sets."""
    affinity.pin_cores(0, 1)
    seen = {}

    def child():
        seen["child"] = os.sched_getaffinity(0)

    if widen:
        with affinity.every_core():
            t = threading.Thread(target=child)
            t.start()
    else:
        t = threading.Thread(target=child)
        t.start()
    t.join()
    return seen["child"], os.sched_getaffinity(0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: nothing to widen")
def test_every_core_starts_threads_on_every_core_and_keeps_the_pin():
    allowed = os.sched_getaffinity(0)
    child, own = in_thread(lambda: started_thread_cores(widen=True))
    assert child == allowed  # the prefetcher may run beside the training thread
    assert own == {sorted(allowed)[0]}  # and the training thread is pinned again
    child, _ = in_thread(lambda: started_thread_cores(widen=False))
    assert child == {sorted(allowed)[0]}  # what every_core() is there to avoid


def test_every_core_is_a_no_op_when_nothing_was_pinned():
    before = os.sched_getaffinity(0)
    with affinity.every_core():
        assert os.sched_getaffinity(0) == before
