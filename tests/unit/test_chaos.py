"""Fault schedules and how each fault's recovery is timed (no Ray: the matching is pure)."""

import pytest

from raybench.backends.ray_train import time_recoveries
from raybench.chaos import ChaosMonkey, Injected, parse_chaos, parse_fault
from raybench.errors import UserError
from raybench.results import Restore, Timing


def test_timed_and_epoch_schedules_parse_and_bad_ones_are_refused():
    timed = parse_fault("kill-worker  every 2m")
    assert (timed.interval_s, timed.repeat, timed.epochs, str(timed)) == (
        120.0, True, None, "kill-worker every 2m")
    once = parse_fault("kill-worker once after epoch 2")
    assert once.epochs == 2 and not once.repeat
    assert [e for e in range(1, 6) if once.due_after(e)] == [2]
    every = parse_fault("kill-worker every 2 epochs")
    assert [e for e in range(1, 7) if every.due_after(e)] == [2, 4, 6]
    for bad in ("kill-worker once after epoch 0", "kill-worker every 0s", "kill-nodes every 3s",
                "kill-worker every epochs", "kill-worker once at 5s for 10s",
                "freeze-node once at 5s", "cut-link once after epoch 2", ";", ""):
        with pytest.raises(UserError, match="--chaos"):
            parse_chaos(bad)


def test_node_faults_and_several_schedules_parse():
    plan = parse_chaos("cut-link once after epoch 2 for 5s;freeze-node  every 1m for 30s; "
                       "slow-node once at 10s; kill-node once after epoch 3")
    cut, freeze, slow, kill = plan.specs
    assert (cut.fault, cut.epochs, cut.for_s) == ("cut-link", 2, 5.0)
    assert (freeze.fault, freeze.interval_s, freeze.repeat, freeze.for_s) == (
        "freeze-node", 60.0, True, 30.0)
    assert slow.for_s is None and kill.for_s is None and plan.on_nodes
    assert str(plan) == ("cut-link once after epoch 2 for 5s; freeze-node every 1m for 30s; "
                         "slow-node once at 10s; kill-node once after epoch 3")
    assert not parse_chaos("kill-worker every 3 epochs").on_nodes


def test_node_faults_are_refused_without_an_emulated_cluster():
    with pytest.raises(UserError, match="need an emulated cluster"):
        ChaosMonkey(parse_chaos("freeze-node once at 5s for 5s"), cluster=None)
    ChaosMonkey(parse_chaos("kill-worker once at 5s"), cluster=None)  # any cluster


def kill(at: float) -> Injected:
    return Injected("kill-worker", at, "rank 1", [1])


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
    time_recoveries(timing, failures=[104.0], injected=[kill(103.0)],
                    first_steps=[90.0, 111.5])
    (rec,) = timing.recoveries
    assert rec.recovery_s == pytest.approx(8.5) and rec.seen_by == "chaos"
    assert rec.cause == "--chaos kill-worker: killed worker (rank 1)"
    assert rec.fault == "killed worker" and rec.ranks == [1] and rec.restarted
    assert rec.resumed_from_epoch is None and rec.note == ""
    assert timing.failures == 1


def test_each_failure_is_matched_to_the_restore_that_followed_it():
    resumed = Restore(from_epoch=2, world_size=2, restore_s=0.01, first_step_epoch_s=120.0)
    resize = Restore(from_epoch=5, world_size=2, restore_s=0.01, first_step_epoch_s=200.0)
    timing = _timing([resumed, resize])
    time_recoveries(timing, failures=[112.0], injected=[], first_steps=[100.0, 120.0, 200.0],
                    causes={112.0: "rank 1: ActorDiedError: the actor died"})
    (rec,) = timing.recoveries
    assert rec.recovery_s == pytest.approx(8.0) and rec.resumed_from_epoch == 2
    assert rec.cause == "rank 1: ActorDiedError: the actor died"
    assert resumed.recovery_s == pytest.approx(8.0) and resumed.failure_epoch_s == 112.0
    assert resize.failure_epoch_s is None  # a resize follows no failure


def test_a_recovery_that_cannot_be_timed_says_why():
    timing = _timing([])
    time_recoveries(timing, failures=[10.0, 12.0, 30.0], injected=[],
                    first_steps=[5.0, 20.0])
    first, second, last = timing.recoveries
    assert first.recovery_s is None and "next failure" in first.note
    assert second.recovery_s == pytest.approx(8.0)
    assert last.recovery_s is None and "no training step followed" in last.note


def test_without_the_queue_the_restores_still_time_their_recoveries():
    resumed = Restore(from_epoch=1, world_size=2, restore_s=0.01, first_step_epoch_s=50.0)
    timing = _timing([resumed])
    time_recoveries(timing, failures=[41.0], injected=[], first_steps=[])
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
    time_recoveries(timing, failures=[10.0, 50.0], injected=[], first_steps=[20.0],
                    causes={10.0: failure_cause(errors)})
    assert recovery_lines(timing) == [
        "survived a failure (rank 1: RuntimeError: gloo: connection reset): training resumed "
        "10.0s later",
        "survived a failure (cause not reported): no training step followed: the run ended, or "
        "its progress queue was lost"]


def test_each_node_fault_is_a_record_matched_to_the_failure_it_caused():
    """A short cut link and a slow node the run went through, then a long freeze the
    controller saw (a hang) and restarted from epoch 2's checkpoint: three records, each with
    its fault, node, ranks and, for the restart, the detection time from the run's last
    progress and the steps trained again."""
    cut = Injected("cut-link", 100.0, "198.18.7.3", [1], ended_at=105.0)
    slow = Injected("slow-node", 110.0, "198.18.7.2", [0], ended_at=116.0)
    freeze = Injected("freeze-node", 130.0, "198.18.7.3", [1], ended_at=175.0)
    resumed = Restore(from_epoch=2, world_size=2, restore_s=0.01, first_step_epoch_s=160.0)
    timing = _timing([resumed])
    timing.steps_per_epoch, timing.hang_health_check_s = 50, 15.0
    # rank 0's progress reports, global steps: it was at step 130 a second after the freeze
    progress = [(98.0, 100), (120.0, 120), (131.0, 130), (161.0, 101)]
    time_recoveries(timing, failures=[148.0], injected=[cut, slow, freeze],
                    first_steps=[90.0, 160.0], progress=progress,
                    causes={148.0: "hang timeout: rank 1 did not answer for 15 s"},
                    blamed={148.0: ([1], "198.18.7.3")})
    went_on, slowed, frozen = timing.recoveries
    assert (went_on.fault, went_on.restarted, went_on.steps_lost, went_on.fault_s) == (
        "cut link", False, 0, 5.0)
    assert went_on.node == "198.18.7.3" and went_on.ranks == [1]
    assert went_on.detected_epoch_s is None and went_on.recovery_s is None
    assert slowed.fault == "slow node" and not slowed.restarted and "slow" in slowed.note
    assert frozen.fault == "frozen node" and frozen.restarted and frozen.seen_by == "chaos"
    assert frozen.failure_epoch_s == 130.0 and frozen.detected_epoch_s == 148.0
    assert frozen.detect_s == pytest.approx(17.0)  # from its last progress (131), not 130
    assert frozen.recovery_s == pytest.approx(30.0) and frozen.resumed_from_epoch == 2
    assert frozen.steps_lost == 130 - 2 * 50
    assert frozen.cause.startswith("--chaos freeze-node: frozen node (198.18.7.3, rank(s) 1)")
    assert frozen.cause.endswith("Ray Train saw: hang timeout: rank 1 did not answer for 15 s")
    assert timing.failures == 1


def test_a_failure_long_after_a_fault_ended_is_not_blamed_on_it():
    cut = Injected("cut-link", 100.0, "198.18.7.3", [1], ended_at=105.0)
    timing = _timing([])
    timing.hang_health_check_s = 15.0
    time_recoveries(timing, failures=[400.0], injected=[cut], first_steps=[410.0],
                    causes={400.0: "rank 1: ActorDiedError: the actor died"},
                    blamed={400.0: ([1], "198.18.7.3")})
    went_on, failed = timing.recoveries
    assert not went_on.restarted and failed.seen_by == "controller"
    assert failed.fault == "worker failure" and failed.node == "198.18.7.3"
    assert failed.detect_s is None  # no progress reported: the start is not known


def test_an_unscheduled_hang_is_a_stall_detected_from_the_last_progress():
    timing = _timing([])
    time_recoveries(timing, failures=[80.0], injected=[], first_steps=[10.0, 95.0],
                    progress=[(58.0, 7), (59.5, 9)],
                    causes={80.0: "hang timeout: rank 1 made no progress"},
                    blamed={80.0: ([1], "10.0.0.2")})
    (rec,) = timing.recoveries
    assert rec.fault == "stall" and rec.detect_s == pytest.approx(20.5)
    assert rec.steps_lost == 9 and rec.recovery_s == pytest.approx(15.0)


def test_a_node_is_watched_after_a_fault_for_longer_the_longer_the_fault():
    from raybench.chaos import settle_s

    assert settle_s(5) == 0  # at most two of the five health checks Ray needs fail
    assert settle_s(30) == 75 and settle_s(20) == 55 and settle_s(600) == 75


def test_each_fault_reads_as_one_line():
    from raybench.console import recovery_line
    from raybench.results import Recovery

    went_on = Recovery(failure_epoch_s=1.0, seen_by="chaos", fault="cut link", fault_s=5.0,
                       restarted=False, cause="--chaos cut-link: cut link (10.0.0.2)",
                       note="the run went on through it without a restart")
    assert recovery_line(went_on) == (
        "went on through a cut link for 5.0s (--chaos cut-link: cut link (10.0.0.2)): the run "
        "went on through it without a restart")
    restarted = Recovery(failure_epoch_s=1.0, seen_by="chaos", fault="frozen node",
                         cause="--chaos freeze-node: frozen node (10.0.0.2)", detect_s=20.1,
                         recovery_s=52.4, steps_lost=72)
    assert recovery_line(restarted) == (
        "survived a failure (--chaos freeze-node: frozen node (10.0.0.2)): detected 20.1s after "
        "the last progress; training resumed 52.4s later; 72 step(s) trained again")
