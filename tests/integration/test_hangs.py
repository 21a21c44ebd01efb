"""A rank that stops making progress without dying: a SIGSTOPped worker (shorter and longer
than the bound) and a rank wedged in its own code while the others wait in an all-reduce."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from raybench import data
from raybench.backends import LaunchContext
from raybench.backends.ray_train import RayTrainBackend
from raybench.config import Config, resolve
from raybench.loop import LoopOptions

pytestmark = pytest.mark.slow
EPOCHS = 100  # ~0.06 s each here: the stops below land while training goes on


def hang_cfg(npz, epochs: int, hang_timeout_s=None, max_failures=0) -> Config:
    cfg = resolve(Config(), npz_path=npz, task="regression")
    cfg.train.epochs, cfg.train.early_stop_patience, cfg.train.batch_size = epochs, 0, 32
    cfg.scaling.workers, cfg.scaling.max_failures = 2, max_failures
    cfg.scaling.hang_timeout_s = hang_timeout_s
    return cfg


def run_stopping_rank0(cfg, ds, tmp_path, name, at_epoch, stop_for_s=None):
    """Run, and SIGSTOP rank 0's process once it reports that epoch: for stop_for_s seconds,
    or for good (None)."""
    stopped: list[tuple[int, float]] = []

    def on_report(row):
        if isinstance(row, dict) and not stopped and row.get("epoch") == at_epoch:
            os.kill(row["pid"], signal.SIGSTOP)
            stopped.append((row["pid"], time.time()))
            if stop_for_s is not None:
                threading.Timer(stop_for_s, os.kill, (row["pid"], signal.SIGCONT)).start()

    context = LaunchContext(scratch_dir=tmp_path, storage_path=str(tmp_path), on_report=on_report)
    return RayTrainBackend(ds, context).run(cfg, LoopOptions(), name), stopped


def test_a_pause_shorter_than_the_bound_is_survived_and_named(ray_cluster, reg_npz, tmp_path):
    ds = data.build_dataset(data.load_npz(reg_npz), None, 0.1, "zscore")
    # Epochs of ~0.06 s: enough of them that the stop, sent when the driver hears of epoch 2,
    # lands in training and not after it (with 5 epochs it once landed in the final pass).
    result, stopped = run_stopping_rank0(hang_cfg(reg_npz, EPOCHS), ds, tmp_path, "pause", 2,
                                         4.0)
    timing = result.timing
    assert stopped and timing.failures == 0 and not timing.recoveries
    assert [row.epoch for row in result.history] == list(range(1, EPOCHS + 1))
    assert len(timing.pauses) == 1, timing.pauses
    pause = timing.pauses[0]
    assert pause.rank == 0 and pause.node == timing.ranks[0].node
    assert 3.0 <= pause.seconds <= 8.0
    assert abs(pause.started_epoch_s - stopped[0][1]) < 2.0
    # The defaults: 60 s for a silent worker, the measured bound (here its floor) for a collective.
    assert timing.hang_health_check_s == 60 and timing.hang_collective_s == 60
    # Which clock holds the pause depends on where the stop lands (the stopped rank's epoch,
    # or the waiting rank's sync); in 2 of 3 runs here rank 0's epoch, checkpoint and report
    # clocks all stayed under 0.25 s. The record names it either way: that is what is checked.


def test_a_rank_stopped_for_good_is_detected_within_the_bound_and_restarted(
        ray_cluster, reg_npz, tmp_path):
    ds = data.build_dataset(data.load_npz(reg_npz), None, 0.1, "zscore")
    cfg = hang_cfg(reg_npz, EPOCHS, hang_timeout_s=10, max_failures=1)
    result, stopped = run_stopping_rank0(cfg, ds, tmp_path, "stopped", 2)
    pid, stopped_at = stopped[0]
    timing = result.timing
    assert [row.epoch for row in result.history] == list(range(1, EPOCHS + 1))  # each once
    # Restarted from a checkpoint: epoch 2's, or an earlier or later one, depending on where
    # the stop landed and what the controller had polled by then.
    assert timing.failures == 1 and timing.resumed_from_epoch >= 1
    recovery = timing.recoveries[0]
    assert recovery.cause.startswith("hang timeout: rank 0 did not answer for 10 s"), recovery
    assert "[rank 0 on " in recovery.cause
    # Seen by Ray Train's controller within the bound and its poll, not after 600 s.
    assert 9.0 <= recovery.failure_epoch_s - stopped_at <= 25.0, recovery
    assert recovery.recovery_s is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


WEDGE = textwrap.dedent('''
    """Rank 1 sleeps inside forward once the flag file exists: a rank stuck in its own code
    (a hung read), alive and answering Ray's health checks, while rank 0 waits in DDP's
    all-reduce."""
    import os
    import time

    from torch import nn


    class Wedge(nn.Module):
        def __init__(self, n_features, window):
            super().__init__()
            self.lin = nn.Linear(n_features * window, 1)

        def forward(self, x):
            flag = os.environ["WEDGE_FLAG"]
            if self.training and os.path.exists(flag):
                import torch.distributed as dist
                if dist.get_rank() == 1:
                    os.remove(flag)
                    time.sleep(600)
            return self.lin(x.flatten(1)).squeeze(-1)


    def build(n_features, window, task):
        return Wedge(n_features, window)
''')


def test_a_wedged_rank_fails_the_run_in_one_line_within_the_bound(reg_npz, tmp_path):
    (tmp_path / "wedgemod.py").write_text(WEDGE)
    flag = tmp_path / "wedge.flag"
    env = {**os.environ, "WEDGE_FLAG": str(flag)}
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "raybench.run", "--workers", "2", "--epochs", "400",
         "--patience", "0", "--model", "wedgemod:build", "--npz_path", str(reg_npz),
         "--hang-timeout-s", "10", "--save_dir", str(tmp_path / "out"), "--run-name", "wedged",
         "--no-tensorboard"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Epoch 3/400" in line:
            flag.touch()
            wedged_at = time.time()
            break
    else:
        pytest.fail("the run ended before epoch 3:\n" + "".join(lines) + proc.stderr.read())
    out, err = proc.communicate(timeout=180)
    took = time.time() - wedged_at
    assert proc.returncode == 1, "".join(lines) + out + err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: hang timeout: rank 1 made no progress; rank 0 timed out "
                                "waiting for it in a collective [rank 1 on "), err
    assert "no restart was left (--max-failures 0)" in errors[0]
    assert took < 10 + 60, took  # the bound, then Ray Train's shutdown of the worker group
    status = json.loads((tmp_path / "out" / "wedged" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("hang timeout: rank 1")


def test_a_rank_held_to_a_quarter_core_is_named_the_straggler(ray_cluster, reg_npz, tmp_path):
    """One host, one worker capped at a quarter of a core (a cgroup CPU quota, as a noisy
    neighbour or a throttled VM would): the run goes on and names that rank as the one the
    others wait for. Root only (the cgroup)."""
    from raybench.cluster import kernel

    try:
        groups = kernel.Cgroups.detect()
    except kernel.KernelError as exc:
        pytest.skip(str(exc))
    if os.geteuid() != 0:
        pytest.skip("a cgroup CPU quota needs root")
    ds = data.build_dataset(data.load_npz(reg_npz), None, 0.1, "zscore")
    group = f"raybench-test-slow-{os.getpid()}"
    slowed: list[int] = []

    def on_report(row):
        if isinstance(row, dict) and not slowed and row.get("epoch") == 2:
            other = next(p.pid for p in psutil.process_iter(["name", "cmdline"])
                         if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
                         and p.pid != row["pid"])
            groups.create(group)
            groups.set_cpu(group, 0.25)
            for d in groups.dirs(group):
                (d / "cgroup.procs").write_text(str(other))
            slowed.append(other)

    context = LaunchContext(scratch_dir=tmp_path, storage_path=str(tmp_path), on_report=on_report)
    try:
        # an LSTM's step is compute (a few ms), so a quarter core binds; the seed MLP's is
        # mostly the all-reduce, which a quota barely touches
        cfg = hang_cfg(reg_npz, 30)
        cfg.model.kind, cfg.model.hidden = "lstm", 64
        result = RayTrainBackend(ds, context).run(cfg, LoopOptions(), "slow")
    finally:
        for pid in slowed:  # back to the root group, then the group can go
            for d in groups.dirs(group):
                with contextlib.suppress(OSError):
                    (d.parent / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            groups.remove(group)
    timing = result.timing
    assert slowed and timing.failures == 0
    assert [row.epoch for row in result.history] == list(range(1, 31))
    assert timing.straggler_rank == 1, [r.step_breakdown for r in timing.ranks]
