"""The outside-load reading of a window, against real processes: a run's own process that exits
inside a window must not read as load from outside (it did, 637%, and excluded the round)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from raybench import interference

# A parent that ignores SIGCHLD, as Ray's raylet does: its children are reaped by the kernel and
# their CPU time is never added to the parent's. Its child burns CPU, then waits to be told to go.
PARENT = textwrap.dedent("""
    import signal, subprocess, sys
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass\\n"
        "print('burnt', flush=True)\\nsys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    sys.stdin.readline()
    child.stdin.write("go\\n"); child.stdin.flush()
    sys.stdin.readline()
""")


def test_per_process_deltas_count_new_processes_and_forget_exited_ones():
    a = {1: 5.0, 2: 3.0}
    b = {1: 5.5, 3: 0.25}  # 2 exited, 3 started
    assert interference.run_cpu_s(a, b) == pytest.approx(0.75)
    assert interference.run_cpu_s(b, b) == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_run_process_exiting_inside_a_window_is_not_outside_load():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "burnt"
        before = interference.sample(parent.pid)
        assert sum(before.own.values()) >= 0.5  # the child's burnt CPU is in the tree
        parent.stdin.write("go\n")
        parent.stdin.flush()
        time.sleep(0.5)  # the child exits and the kernel reaps it
        load = interference.between(before, interference.sample(parent.pid))
        assert load is not None
        assert 0.0 <= load.run_s < 0.3
        assert load.outside <= 1.0
    finally:
        parent.stdin.close()
        parent.wait(timeout=10)


def test_stolen_time_is_its_own_reading_not_outside_load():
    """2 s of machine: 2 busy, 0.5 of it stolen by the hypervisor, 1 used by the run: 0.5
    outside. Counting the steal as outside too made a 9% steal read as 13% outside."""
    a = interference.MachineSample(0.0, busy_s=10.0, steal_s=1.0, total_s=100.0, own={7: 5.0})
    b = interference.MachineSample(1.0, busy_s=12.0, steal_s=1.5, total_s=102.0, own={7: 6.0})
    load = interference.between(a, b)
    assert load.steal == pytest.approx(0.25) and load.run_s == pytest.approx(1.0)
    assert load.outside == pytest.approx(0.25)
