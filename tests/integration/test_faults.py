"""Faults: a SIGKILLed Ray Train worker, Ctrl-C of the driver, and --resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from raybench import data
from raybench.backends import LaunchContext
from raybench.backends.ray_train import RayTrainBackend
from raybench.config import Config, resolve
from raybench.loop import LoopOptions


def fault_cfg(npz, workers: int) -> Config:
    cfg = resolve(Config(), npz_path=npz, task="regression")
    cfg.train.epochs, cfg.train.early_stop_patience, cfg.train.batch_size = 6, 0, 32
    cfg.scaling.workers, cfg.scaling.max_failures = workers, 1
    return cfg


def run_killing_rank0_after(cfg, ds, tmp_path, name, kill_after_epoch):
    """Run, and SIGKILL rank 0's process (by the pid it reports) once that epoch is reported."""
    killed = []

    def on_report(row):
        if kill_after_epoch and not killed and row.get("epoch") == kill_after_epoch:
            os.kill(row["pid"], signal.SIGKILL)
            killed.append(row["pid"])

    context = LaunchContext(scratch_dir=tmp_path, storage_path=str(tmp_path), on_report=on_report)
    result = RayTrainBackend(ds, context).run(cfg, LoopOptions(), name)
    return result, killed


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_worker_restarts_from_checkpoint(ray_cluster, reg_npz, tmp_path, workers):
    cfg = fault_cfg(reg_npz, workers)
    ds = data.build_dataset(data.load_npz(reg_npz), None, 0.1, "zscore")
    clean, _ = run_killing_rank0_after(cfg, ds, tmp_path, "clean", None)
    faulty, killed = run_killing_rank0_after(cfg, ds, tmp_path, "faulty", 2)
    assert killed and not psutil.pid_exists(killed[0])
    epochs = [row.epoch for row in faulty.history]
    assert epochs == list(range(1, 7))  # every epoch exactly once
    assert faulty.timing.resumed_from_epoch >= 1  # restarted from a checkpoint
    if workers == 1:
        # Same seed, restored weights, optimizer and RNG: bit-identical to the clean run.
        assert (faulty.timing.ranks[0].final_weights_sha256
                == clean.timing.ranks[0].final_weights_sha256)
        assert faulty.metrics_test == clean.metrics_test
    else:
        assert faulty.metrics_test["mse"] == pytest.approx(clean.metrics_test["mse"], rel=1e-3)


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-u", "-m", "raybench.run", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ctrl_c_marks_interrupted_stops_workers_and_resume_finishes(reg_npz, tmp_path):
    proc = _start(["--npz_path", str(reg_npz), "--epochs", "300", "--patience", "0",
                   "--save_dir", str(tmp_path)], tmp_path)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Epoch 3/300" in line:
            break
    else:
        pytest.fail("run ended before epoch 3:\n" + "".join(lines))
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # the local Ray's processes, Ray Train workers among them
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130, rest
    assert time.monotonic() - start < 30
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    (run_dir,) = tmp_path.glob("run_*")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics_test.json").exists()
    assert f"--resume {run_dir}" in rest

    resumed = _start(["--resume", str(run_dir), "--epochs", "8"], tmp_path)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, 9))
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["resumed_from_epoch"] >= 1
