"""A rank that stops making progress (loop.hang): the bounds, the blame, the pauses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from raybench.backends.ray_train import (
    HEALTH_CHECK_ENV,
    _Events,
    failure_cause,
    set_health_check_bound,
    stalled_ranks,
)
from raybench.config import Config, from_dict
from raybench.errors import UserError
from raybench.loop import hang
from raybench.results import WorkersFailed, WorkerUp


def cfg_with(hang_timeout_s=None) -> Config:
    cfg = Config()
    cfg.scaling.hang_timeout_s = hang_timeout_s
    return cfg


def test_the_default_bound_follows_the_measured_steps_with_a_floor():
    bound = hang.CollectiveBound(cfg_with(), world_size=2)
    assert bound.bound_s == hang.START_ALLOWANCE_S  # nothing measured yet
    bound.after_epoch(np.zeros(0), 0.5)  # a warm-up epoch measures no step
    assert bound.bound_s == hang.START_ALLOWANCE_S
    bound.after_epoch(np.full(100, 0.01), 0.2)  # 10 ms steps: the floor
    assert bound.bound_s == hang.FLOOR_S
    steps = np.full(100, 5.0)
    steps[-3:] = 40.0  # a pause the run survived is not a healthy step
    bound.after_epoch(steps, 1.0)
    assert bound.bound_s == pytest.approx(hang.STEP_FACTOR * 5.0)
    bound.after_epoch(np.full(100, 0.01), 0.2)  # a faster epoch keeps the longest stretch seen
    assert bound.bound_s == pytest.approx(hang.STEP_FACTOR * 5.0)
    slow_validation = hang.CollectiveBound(cfg_with(), world_size=2)
    slow_validation.after_epoch(np.full(10, 0.01), 9.0)
    assert slow_validation.bound_s == pytest.approx(hang.STEP_FACTOR * 9.0)


def test_the_users_bound_applies_once_training_is_under_way():
    bound = hang.CollectiveBound(cfg_with(20), world_size=2)
    assert bound.bound_s == hang.START_ALLOWANCE_S  # first batches, compilation
    bound.after_epoch(np.full(10, 30.0), 0.0)  # the user's word, whatever the steps
    assert bound.bound_s == 20
    assert hang.start_bound_s(cfg_with(900)) == 900
    assert hang.health_check_bound_s(cfg_with()) == hang.FLOOR_S
    assert hang.health_check_bound_s(cfg_with(12.5)) == 12.5


def test_the_health_check_bound_is_set_for_ray_train_and_not_leaked(monkeypatch):
    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    assert set_health_check_bound(cfg_with(15)) == 15
    # The next run without a bound gets the default, not the previous run's 15 s.
    assert set_health_check_bound(cfg_with()) == hang.FLOOR_S


def test_a_bound_under_five_seconds_is_refused():
    with pytest.raises(UserError, match="hang_timeout_s"):
        from_dict({"scaling": {"hang_timeout_s": 1}})


class WorkerHealthCheckTimeoutError(Exception):
    """Named as Ray Train's (ray.train.v2._internal.exceptions): blame goes by the name."""


def test_a_hang_names_the_rank_that_stopped():
    silent = {1: WorkerHealthCheckTimeoutError("health check hung")}
    assert stalled_ranks(silent, 2) == [1]
    assert failure_cause(silent, 2).startswith("hang timeout: rank 1 did not answer for")
    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms "
                        "for recv operation to complete")
    waited = {0: gloo, 2: gloo}
    assert stalled_ranks(waited, 3) == [1]  # alive, not progressing: the one that did not fail
    assert failure_cause(waited, 3) == ("hang timeout: rank 1 made no progress; ranks 0, 2 "
                                        "timed out waiting for it in a collective")
    assert failure_cause(waited, None).startswith("hang timeout: a rank made no progress")
    crash = {0: ValueError("bad batch")}
    assert stalled_ranks(crash, 2) == []
    assert failure_cause(crash, 2) == "rank 0: ValueError: bad batch"


def test_the_driver_says_a_hang_at_once_with_the_node(capsys):
    seen = []
    events = _Events(seen.append, None)
    events(WorkerUp(1, 4242, "abc", "198.18.7.2"))
    events(WorkersFailed(100.0, [1], "hang timeout: rank 1 did not answer for 20 s", [1]))
    assert events.causes[100.0].endswith("[rank 1 on 198.18.7.2]")
    assert isinstance(seen[-1], WorkersFailed)  # the console prints it as it happens


PAUSED = """
import json, sys, time
from raybench.loop.hang import PauseClock
with PauseClock(rank=3) as clock:
    print("ready", flush=True)
    sys.stdin.readline()
print(json.dumps([[p.rank, p.seconds] for p in clock.pauses]), flush=True)
"""


def test_a_stopped_process_records_its_own_pause():
    proc = subprocess.Popen([sys.executable, "-c", PAUSED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.6)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.6)
        out, _ = proc.communicate("go\n", timeout=10)
    finally:
        proc.kill()
    pauses = json.loads(out)
    assert len(pauses) == 1 and pauses[0][0] == 3
    assert 2.5 <= pauses[0][1] <= 4.0


def rank_facts(rank: int, work_ms: float, sync_share: float):
    from raybench.results import RankFacts, StepBreakdown

    b = StepBreakdown(data_s=work_ms * 1e-4, compute_s=work_ms * 8e-4, optimizer_s=work_ms * 1e-4,
                      sync_share=sync_share)
    return RankFacts(rank=rank, node=f"198.18.0.{rank + 1}", node_id="n", hostname="h", pid=1,
                     threads=1, device="cpu", device_name=None, samples_per_sec=1.0,
                     peak_rss_mib=1.0, pss_mib=None, pss_start_mib=None, peak_gpu_mem_mib=None,
                     startup_epoch_s={}, final_weights_sha256="x", step_breakdown=b)


def test_the_rank_the_others_wait_for_is_named():
    from raybench.loop.steps import straggler
    from raybench.results import Timing
    from raybench.run import straggler_line

    equal = [rank_facts(0, 4.0, 0.1), rank_facts(1, 4.3, 0.08), rank_facts(2, 3.9, 0.1)]
    assert straggler(equal) is None  # within 10% of each other
    assert straggler(equal[:1]) is None
    slow = [rank_facts(0, 4.0, 0.6), rank_facts(1, 12.0, 0.02), rank_facts(2, 4.2, 0.62)]
    assert straggler(slow) == 1
    timing = Timing.__new__(Timing)
    timing.ranks, timing.straggler_rank = slow, 1
    assert straggler_line(timing) == (
        "straggler: rank 1 on 198.18.0.2 worked 12.00 ms a step against 4.20 ms for the others, "
        "who spent 62% of their step waiting in sync (timing.json ranks[].step_breakdown)")
