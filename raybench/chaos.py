"""Faults on a schedule, for measuring what they cost (`raybench.scale --chaos SPEC`).

    kill-worker every 30s      SIGKILL one Ray Train worker (a random rank) every 30 seconds
    kill-worker once at 20s    SIGKILL one worker 20 seconds after the workers started

The kill goes through a zero-CPU Ray task pinned to the worker's node, so it works on any
cluster, not only on this machine. Every kill is timed: with the first training step after the
restart that follows, it gives the recovery time.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass

from raybench.errors import UserError

_SPEC = re.compile(r"^\s*kill-worker\s+(every|once at)\s+(\d+(?:\.\d+)?)\s*(s|m)\s*$")


@dataclass(frozen=True)
class ChaosSpec:
    interval_s: float
    repeat: bool  # every interval (True) or once (False)
    text: str

    def __str__(self) -> str:
        return self.text


def parse_chaos(text: str) -> ChaosSpec:
    m = _SPEC.match(text)
    if not m:
        raise UserError(f"--chaos {text!r}: expected 'kill-worker every 30s' or 'kill-worker "
                        "once at 20s' (seconds s or minutes m)")
    seconds = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
    if seconds <= 0:
        raise UserError(f"--chaos {text!r}: the interval must be positive")
    return ChaosSpec(seconds, m.group(1) == "every", " ".join(text.split()))


def _kill(pid: int) -> None:
    import os
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it died on its own meanwhile


class ChaosMonkey:
    """Kills a live Ray Train worker on the spec's schedule while a run goes on. Workers
    announce themselves (rank, pid, node) through the run's progress queue; `workers` holds the
    newest incarnation of each rank."""

    def __init__(self, spec: ChaosSpec, seed: int = 0) -> None:
        self.spec = spec
        self.workers: dict[int, tuple[int, str]] = {}  # rank -> (pid, node id)
        self.kills: list[float] = []  # wall-clock times of the kills
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raybench-chaos", daemon=True)

    def saw_worker(self, rank: int, pid: int, node_id: str) -> None:
        self.workers[rank] = (pid, node_id)

    def _run(self) -> None:
        while not self.workers:  # the schedule starts when the workers do
            if self._stop.wait(0.1):
                return
        while not self._stop.wait(self.spec.interval_s):
            if self.workers:
                self._kill_one()
            if not self.spec.repeat:
                return

    def _kill_one(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        rank = self._rng.choice(sorted(self.workers))
        pid, node = self.workers.pop(rank)
        kill = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False))(_kill)
        self.kills.append(time.time())
        ray.get(kill.remote(pid), timeout=30)

    def __enter__(self) -> ChaosMonkey:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)
