"""Kill schedules and how each failure's recovery is timed (no Ray: the matching is pure)."""

import pytest

from raybench.backends.ray_train import time_recoveries
from raybench.chaos import parse_chaos
from raybench.errors import UserError
from raybench.results import Restore, Timing


def test_timed_and_epoch_schedules_parse_and_bad_ones_are_refused():
    timed = parse_chaos("kill-worker  every 2m")
    assert (timed.interval_s, timed.repeat, timed.epochs, str(timed)) == (
        120.0, True, None, "kill-worker every 2m")
    once = parse_chaos("kill-worker once after epoch 2")
    assert once.epochs == 2 and not once.repeat
    assert [e for e in range(1, 6) if once.due_after(e)] == [2]
    every = parse_chaos("kill-worker every 2 epochs")
    assert [e for e in range(1, 7) if every.due_after(e)] == [2, 4, 6]
    for bad in ("kill-worker once after epoch 0", "kill-worker every 0s", "kill-node every 3s",
                "kill-worker every epochs"):
        with pytest.raises(UserError, match="--chaos"):
            parse_chaos(bad)


def _timing(restores):
    return Timing(total_epochs=4, best_epoch=0, total_time_sec=1.0, mean_time_per_epoch=0.25,
                  std_time_per_epoch=0.0, epoch_times=[], train_times=[], num_workers=2,
                  warmup_epochs=0, warmup_steps=0, samples_per_sec=None,
                  samples_per_sec_per_worker=None, measured_steps=0, time_to_first_step_s=None,
                  startup_s=None, threads_per_worker=1, dataset_mib=1.0,
                  batch_size_per_worker=1, global_batch_size=2, steps_per_epoch=1,
                  stopped_early=False, resumed_from_epoch=None, step_breakdown=None, ranks=[],
                  restores=restores)


def test_a_restart_without_a_checkpoint_is_still_a_timed_recovery():
    """The defect this replaces: a kill before the first checkpoint restarted the run from
    scratch, no restore was recorded, and the failure's recovery vanished."""
    timing = _timing([])
    time_recoveries(timing, failures=[104.0], kills=[103.0], first_steps=[90.0, 111.5])
    (rec,) = timing.recoveries
    assert rec.recovery_s == pytest.approx(8.5) and rec.seen_by == "chaos"
    assert rec.cause == "chaos kill"
    assert rec.resumed_from_epoch is None and rec.note == ""
    assert timing.failures == 1


def test_each_failure_is_matched_to_the_restore_that_followed_it():
    resumed = Restore(from_epoch=2, world_size=2, restore_s=0.01, first_step_epoch_s=120.0)
    resize = Restore(from_epoch=5, world_size=2, restore_s=0.01, first_step_epoch_s=200.0)
    timing = _timing([resumed, resize])
    time_recoveries(timing, failures=[112.0], kills=[], first_steps=[100.0, 120.0, 200.0],
                    causes={112.0: "rank 1: ActorDiedError: the actor died"})
    (rec,) = timing.recoveries
    assert rec.recovery_s == pytest.approx(8.0) and rec.resumed_from_epoch == 2
    assert rec.cause == "rank 1: ActorDiedError: the actor died"
    assert resumed.recovery_s == pytest.approx(8.0) and resumed.failure_epoch_s == 112.0
    assert resize.failure_epoch_s is None  # a resize follows no failure


def test_a_recovery_that_cannot_be_timed_says_why():
    timing = _timing([])
    time_recoveries(timing, failures=[10.0, 12.0, 30.0], kills=[],
                    first_steps=[5.0, 20.0])
    first, second, last = timing.recoveries
    assert first.recovery_s is None and "next failure" in first.note
    assert second.recovery_s == pytest.approx(8.0)
    assert last.recovery_s is None and "no training step followed" in last.note


def test_without_the_queue_the_restores_still_time_their_recoveries():
    resumed = Restore(from_epoch=1, world_size=2, restore_s=0.01, first_step_epoch_s=50.0)
    timing = _timing([resumed])
    time_recoveries(timing, failures=[41.0], kills=[], first_steps=[])
    assert timing.recoveries[0].recovery_s == pytest.approx(9.0)


def test_a_failure_says_what_failed_in_one_line():
    """The first failed rank's error, its type and first line: what a user (and a red CI log)
    needs to tell a lost node from a bug in the loop."""
    from raybench.backends.ray_train import failure_cause
    from raybench.run import recovery_lines

    errors = {3: ValueError("late"), 1: RuntimeError("\n  gloo: connection reset\nTraceback...")}
    assert failure_cause(errors) == "rank 1: RuntimeError: gloo: connection reset"
    assert failure_cause({}) == ""
    assert len(failure_cause({0: RuntimeError("x" * 1000)})) == 300
    timing = _timing([])
    time_recoveries(timing, failures=[10.0, 50.0], kills=[], first_steps=[20.0],
                    causes={10.0: failure_cause(errors)})
    assert recovery_lines(timing) == [
        "survived a failure (rank 1: RuntimeError: gloo: connection reset): training resumed "
        "10.0s later",
        "survived a failure (cause not reported): no training step followed: the run ended, or "
        "its progress queue was lost"]
