"""What else the machine did while a window was measured, from /proc (Linux): the CPU time stolen
by the hypervisor, and the CPU time used by processes outside the run (every process that is
not this driver or one of its descendants: a local Ray's raylet, GCS and workers, the spawned
baseline ranks are all descendants; a CPU burner or another tenant is not).

A window whose outside load crosses a threshold did not measure the launcher alone, and its
pair is excluded. On an emulated cluster (raybench.cluster local) the run is every node's
processes: the cluster's own CPU counter replaces this process tree. On a cluster this driver
did not start, the workers' machines are not this one and the figures describe only the
driver's machine; elsewhere than Linux there is nothing to read and the checks are skipped
(None).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from raybench.ray_env import emulated_cluster

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class MachineSample:
    at: float  # time.monotonic()
    busy_s: float  # every CPU: user + nice + system + irq + softirq + steal
    steal_s: float
    total_s: float  # busy + idle + iowait
    own: dict[int, float]  # this process tree: pid -> its own user + system CPU seconds


def _machine_ticks() -> tuple[float, float, float]:
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, steal, busy + idle + iowait


def _stat(pid_dir: Path) -> tuple[int, int, float] | None:
    """(pid, ppid, user + system ticks of the process itself) of one process."""
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None  # it exited between the listing and the read
    rest = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    # rest[0] is field 3 (state): ppid is field 4, utime and stime fields 14-15. Reaped
    # children's time (16-17) is left out: it lands on the parent in one lump when a child is
    # reaped (counting its whole life inside one window), or never when the parent ignores
    # SIGCHLD (Ray's raylet: then a tree's total drops when a worker exits).
    return int(pid_dir.name), int(rest[1]), float(rest[11]) + float(rest[12])


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of `root` and each of its descendants, by pid."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry)
            if stat is not None:
                pid, ppid, used = stat
                ticks[pid] = used
                children.setdefault(ppid, []).append(pid)
    own, todo = {}, [root]
    while todo:
        pid = todo.pop()
        own[pid] = ticks.get(pid, 0.0) * TICK_S
        todo.extend(children.get(pid, ()))
    return own


def sample(root: int | None = None) -> MachineSample | None:
    """The machine's counters now (None where /proc cannot be read). On an emulated cluster
    every node's processes are the run, and most are outside this PID namespace: the run is
    then the cluster's own CPU counter (its cgroup's), this process's tree included."""
    try:
        busy, steal, total = _machine_ticks()
        cluster = _cluster_cpu_s()
        own = {-1: cluster} if cluster is not None else tree_cpu(root or os.getpid())
    except (OSError, ValueError):
        return None
    return MachineSample(time.monotonic(), busy * TICK_S, steal * TICK_S, total * TICK_S, own)


def _cluster_cpu_s() -> float | None:
    """CPU seconds the emulated cluster this driver runs on has used (None elsewhere)."""
    path = (emulated_cluster() or {}).get("cpu_usage_file")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if path.endswith("cpu.stat"):  # cgroup v2, microseconds
        usage = next(line.split()[1] for line in text.splitlines()
                     if line.startswith("usage_usec"))
        return int(usage) / 1e6
    return int(text) / 1e9  # v1 cpuacct.usage, nanoseconds


def run_cpu_s(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU seconds the tree used between two samples: per process, so that one exiting in
    between takes only its last moments out of the count, never its whole life; one started in
    between counts from its start."""
    return sum(max(0.0, used - a.get(pid, 0.0)) for pid, used in b.items())


@dataclass(frozen=True)
class Load:
    """Shares of the machine's CPU time between two samples."""

    steal: float
    outside: float  # processes outside the run
    run_s: float  # CPU seconds of the run itself (this process tree)
    total_s: float  # CPU seconds the machine had (every core)


def between(a: MachineSample | None, b: MachineSample | None) -> Load | None:
    if a is None or b is None or b.total_s <= a.total_s:
        return None
    total = b.total_s - a.total_s
    run = run_cpu_s(a.own, b.own)
    steal = b.steal_s - a.steal_s
    # busy counts stolen time too; it is its own reading (and its own threshold), not a
    # process outside the run
    outside = (b.busy_s - a.busy_s) - steal - run
    return Load(steal / total, max(0.0, outside) / total, run, total)
