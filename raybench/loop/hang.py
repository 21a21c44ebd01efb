"""A rank that stops making progress: how long the others wait for it, and what each rank saw.

Two bounds stop a run from waiting forever on a rank that neither dies nor moves (a stopped
process, a frozen VM or node, a wedged read, a cut link), and both hand the failure to Ray
Train's restart path (`scaling.max_failures`, elastic runs included):

- Ray Train's worker health check: the controller polls every worker; a worker whose poll has
  not come back within `health_check_bound_s` fails the worker group. A stopped or frozen
  process, or a node gone quiet, cannot answer, whatever its step time (the poll runs beside
  the training thread), so this bound does not depend on the step: the user's
  `--hang-timeout-s`, else `FLOOR_S`.
- The process group's timeout: a rank alive but stuck (it answers polls) leaves the others in
  an all-reduce; gloo (and nccl) raise once a collective has waited this long. Until every rank
  has finished an epoch it is `START_ALLOWANCE_S` (first batches, compilation, imports vary by
  rank); then the user's bound, or `STEP_FACTOR` times the longest stretch a healthy rank spends
  between two collectives as measured here (the p90 step, the epoch's validation), at least
  `FLOOR_S`.

A pause shorter than the bounds costs time, not the run: every rank keeps a clock thread that
notices when its own process did not run (stopped, frozen, starved) and records the pause, so
a run that went on names the rank that paused and for how long.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np

from raybench.config import Config
from raybench.results import Pause

FLOOR_S = 60.0  # no default bound is shorter: a busy 2-core machine stalls steps for seconds
START_ALLOWANCE_S = 300.0  # until every rank has trained an epoch
STEP_FACTOR = 20.0  # times the longest healthy stretch between collectives
PAUSE_MIN_S = 2.0  # a gap in a rank's own clock at least this long is a pause
_TICK_S = 0.25


def health_check_bound_s(cfg: Config) -> float:
    """Seconds Ray Train's controller waits on a worker's health check before failing it."""
    return float(cfg.scaling.hang_timeout_s or FLOOR_S)


def start_bound_s(cfg: Config) -> float:
    """The process group's timeout from its creation until the first epoch is measured."""
    return max(START_ALLOWANCE_S, cfg.scaling.hang_timeout_s or 0.0)


class CollectiveBound:
    """This rank's process-group timeout: the start allowance, then the user's bound or the
    measured one, re-derived at every epoch end (steps that slow down raise it). The p90 step,
    not the longest: a pause the run survived must not raise the bound twenty-fold."""

    def __init__(self, cfg: Config, world_size: int) -> None:
        self.user_s = cfg.scaling.hang_timeout_s
        self.active = world_size > 1
        self.bound_s = start_bound_s(cfg)
        self.longest_s = 0.0  # the longest healthy stretch measured so far

    def after_epoch(self, step_seconds: np.ndarray, eval_s: float) -> None:
        if self.user_s is not None:
            bound = float(self.user_s)
        elif not len(step_seconds):  # a warm-up epoch measures nothing: keep the allowance
            return
        else:
            p90 = float(np.percentile(step_seconds, 90)) if len(step_seconds) else 0.0
            self.longest_s = max(self.longest_s, p90, eval_s)
            bound = max(FLOOR_S, STEP_FACTOR * self.longest_s)
        if bound != self.bound_s:
            self.bound_s = bound
            self._apply()

    def _apply(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_available() and dist.is_initialized():
            dist.distributed_c10d._set_pg_timeout(timedelta(seconds=self.bound_s))


class PauseClock:
    """A thread that ticks every quarter second and records each gap of PAUSE_MIN_S or more:
    the stretches this process did not run at all. A rank waiting in an all-reduce keeps
    ticking (the collective releases the GIL); the stopped rank does not, so the pause is
    named on the rank that paused, not on the ranks that waited for it."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.pauses: list[Pause] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raybench-pause-clock",
                                        daemon=True)

    def start(self) -> PauseClock:
        self._thread.start()
        return self

    def stop(self) -> list[Pause]:
        """Stop ticking; the pauses seen."""
        self._stop.set()
        self._thread.join(timeout=1)
        return self.pauses

    def __enter__(self) -> PauseClock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        last_mono, last_wall = time.monotonic(), time.time()
        while not self._stop.wait(_TICK_S):
            now_mono, now_wall = time.monotonic(), time.time()
            gap = now_mono - last_mono - _TICK_S
            if gap >= PAUSE_MIN_S:
                self.pauses.append(Pause(rank=self.rank, node="",
                                         started_epoch_s=last_wall + _TICK_S, seconds=gap))
            last_mono, last_wall = now_mono, now_wall
