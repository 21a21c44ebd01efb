"""Faults on a schedule, for measuring what they cost (`raybench.scale --chaos SPEC`).

    kill-worker every 30s        SIGKILL one Ray Train worker (a random rank) every 30 seconds
    kill-worker once at 20s      SIGKILL one worker 20 seconds after training began
    kill-worker once after epoch 2   ... as soon as Ray Train has registered epoch 2's checkpoint
    kill-worker every 3 epochs   ... after every third registered epoch

The clock of a timed schedule starts at the run's first training step, not at its launch: how
long a machine takes to start Ray Train (12-21 s here on a busy day) must not decide whether a
kill lands in training or in start-up. An epoch schedule fires when Ray Train's controller has
registered that epoch's report (and its checkpoint), so the restart resumes from it on a fast
machine or a slow one alike.

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

_TIMED = re.compile(r"^\s*kill-worker\s+(every|once at)\s+(\d+(?:\.\d+)?)\s*(s|m)\s*$")
_EPOCHS = re.compile(r"^\s*kill-worker\s+(?:(once after epoch)\s+(\d+)|(every)\s+(\d+)\s+epochs?)"
                     r"\s*$")


@dataclass(frozen=True)
class ChaosSpec:
    interval_s: float | None  # a timed schedule: seconds after training began, or between kills
    repeat: bool  # every interval (True) or once (False)
    text: str
    epochs: int | None = None  # an epoch schedule: after this epoch (or every this many)

    def __str__(self) -> str:
        return self.text

    def due_after(self, epoch: int) -> bool:
        """Whether an epoch schedule kills once `epoch` is registered."""
        if self.epochs is None:
            return False
        return epoch % self.epochs == 0 if self.repeat else epoch == self.epochs


def parse_chaos(text: str) -> ChaosSpec:
    canonical = " ".join(text.split())
    m = _TIMED.match(text)
    if m:
        seconds = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
        if seconds <= 0:
            raise UserError(f"--chaos {text!r}: the interval must be positive")
        return ChaosSpec(seconds, m.group(1) == "every", canonical)
    m = _EPOCHS.match(text)
    if m:
        epochs = int(m.group(2) or m.group(4))
        if epochs < 1:
            raise UserError(f"--chaos {text!r}: the epoch must be at least 1")
        return ChaosSpec(None, m.group(3) == "every", canonical, epochs=epochs)
    raise UserError(f"--chaos {text!r}: expected 'kill-worker every 30s', 'kill-worker once at "
                    "20s' (seconds s or minutes m), 'kill-worker once after epoch 2' or "
                    "'kill-worker every 3 epochs'")


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
    newest incarnation of each rank. The run's events arrive through `training_began` (rank 0's
    first step) and `registered` (the controller took an epoch's report)."""

    def __init__(self, spec: ChaosSpec, seed: int = 0) -> None:
        self.spec = spec
        self.workers: dict[int, tuple[int, str]] = {}  # rank -> (pid, node id)
        self.kills: list[float] = []  # wall-clock times of the kills
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._began = threading.Event()
        self._due = threading.Semaphore(0)  # epoch schedule: kills owed
        self._fired: set[int] = set()  # epochs whose kill is done or owed
        self._thread = threading.Thread(target=self._run, name="raybench-chaos", daemon=True)

    def saw_worker(self, rank: int, pid: int, node_id: str) -> None:
        self.workers[rank] = (pid, node_id)

    def training_began(self) -> None:
        self._began.set()

    def registered(self, epoch: int) -> None:
        """The controller registered `epoch`'s report; each epoch is counted once, however
        often a restart trains it again."""
        if self.spec.due_after(epoch) and epoch not in self._fired:
            self._fired.add(epoch)
            self._due.release()

    def _run(self) -> None:
        if self.spec.epochs is not None:
            while not self._stop.is_set():
                if self._due.acquire(timeout=0.1):
                    self._kill_one()
            return
        while not self._began.wait(0.1):  # the clock starts with training
            if self._stop.is_set():
                return
        while not self._stop.wait(self.spec.interval_s):
            if self.workers:
                self._kill_one()
            if not self.spec.repeat:
                return

    def _kill_one(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not self.workers:
            return
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
