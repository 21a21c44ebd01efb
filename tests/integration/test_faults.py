"""Faults: a SIGKILLed Ray Train worker, Ctrl-C of the driver, and --resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

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


@pytest.mark.slow
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


def _until_epoch(proc, epoch: int, total: int) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"Epoch {epoch}/{total}" in line:
            return lines
    pytest.fail(f"run ended before epoch {epoch}:\n" + "".join(lines))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_interrupt_and_stop_every_worker(reg_npz, tmp_path, sig, code,
                                                            cpu_burner):
    """Kubernetes evicts a pod with SIGTERM: the same as Ctrl-C, exit 128 + the signal; with
    every core busy (a Ctrl-C once went unnoticed there and all 300 epochs trained).
    (Resuming is tested after a SIGKILL below: the same path, with a lock to take over.)"""
    proc = _start(["--npz_path", str(reg_npz), "--epochs", "300", "--patience", "0",
                   "--save_dir", str(tmp_path)], tmp_path)
    _until_epoch(proc, 3, 300)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # the local Ray's processes, Ray Train workers among them
    start = time.monotonic()
    proc.send_signal(sig)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == code, rest
    assert time.monotonic() - start < 60
    assert "Traceback" not in rest and "stack" not in rest.lower(), rest
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    (run_dir,) = tmp_path.glob("run_*")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics_test.json").exists()
    assert not (run_dir / ".raybench.lock").exists()
    assert f"--resume {run_dir}" in rest


@pytest.mark.slow
def test_ctrl_c_in_the_final_evaluation_or_saving_is_an_interrupted_run(reg_npz, tmp_path,
                                                                        cpu_burner):
    """Ctrl-C once the last epoch is done (the workers' final evaluation, then the driver
    saving): status.json said `running` and no resume hint was printed. Now: interrupted,
    the hint, and --resume ends the run."""
    proc = _start(["--npz_path", str(reg_npz), "--epochs", "3", "--patience", "0",
                   "--save_dir", str(tmp_path), "--run_name", "last"], tmp_path)
    _until_epoch(proc, 3, 3)
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, rest
    run_dir = tmp_path / "last"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted", rest
    assert f"--resume {run_dir}" in rest and "Traceback" not in rest, rest
    resumed = subprocess.run([sys.executable, "-m", "raybench.run", "--resume", str(run_dir),
                              "--quiet"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def _ray_starting(proc) -> bool:
    """The local Ray is being started: its GCS server is a child of the driver by now."""
    try:
        return any("gcs_server" in " ".join(c.cmdline())
                   for c in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


@pytest.mark.parametrize("moment", ["before Ray", "while Ray starts"])
def test_sigterm_before_or_while_ray_starts_is_an_interruption_with_a_message(
        reg_npz, tmp_path, moment, cpu_burner):
    """SIGTERM once the command runs but before Ray, or inside ray.init (Ray installs a handler
    of its own there): exit 143, one line, no traceback, nothing left running. The moments are
    observed (the first log line; Ray's GCS process), not guessed from a delay, so the test
    holds on a slow or busy machine."""
    proc = _start(["--npz_path", str(reg_npz), "--epochs", "300", "--save_dir",
                   str(tmp_path)], tmp_path)
    first = proc.stdout.readline()  # "Set random seed": parsed, checked, before Ray
    assert first, "the command printed nothing"
    if moment == "while Ray starts":
        deadline = time.monotonic() + 120
        while not _ray_starting(proc):
            assert proc.poll() is None and time.monotonic() < deadline, "Ray never started"
            time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 143, first + rest
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest, rest
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"


@pytest.mark.slow
def test_a_live_run_cannot_be_resumed_and_an_abandoned_one_is_taken_over(reg_npz, tmp_path):
    proc = _start(["--npz_path", str(reg_npz), "--epochs", "300", "--patience", "0",
                   "--save_dir", str(tmp_path), "--run_name", "owned"], tmp_path)
    _until_epoch(proc, 2, 300)
    run_dir = tmp_path / "owned"
    second = _start(["--resume", str(run_dir)], tmp_path)
    out = second.communicate(timeout=120)[0]
    assert second.returncode == 2, out
    assert f"is in use by a live raybench (pid {proc.pid}" in out and "Traceback" not in out
    children = psutil.Process(proc.pid).children(recursive=True)
    # SIGKILL to the driver and its local Ray, as when the machine or pod dies: no handler
    # runs and status.json stays 'running'
    for victim in [psutil.Process(proc.pid), *children]:
        victim.kill()
    proc.wait(timeout=30)
    psutil.wait_procs(children, timeout=60)
    from raybench.resume import checkpoints

    latest = checkpoints(run_dir / "ray_train")[0]
    reached = torch.load(latest / "train_state.pt", weights_only=True)["epoch"]
    total = reached + 2  # two epochs more than the killed run checkpointed
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    resumed = _start(["--resume", str(run_dir), "--epochs", str(total)], tmp_path)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"its driver (pid {proc.pid}" in out and "is gone" in out
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, total + 1))  # each epoch once
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["resumed_from_epoch"] >= 1
    restore = timing["restores"][-1]
    assert restore["restore_s"] > 0 and restore["from_epoch"] == timing["resumed_from_epoch"]
    assert timing["checkpoint_save_s_total"] > 0 and timing["report_s_total"] > 0


@pytest.mark.slow
def test_a_diverging_run_stops_as_diverged_not_completed(ray_cluster, reg_npz, tmp_path, capsys):
    from raybench import run
    from raybench.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, ["--npz_path", str(reg_npz), "--lr", "1e30", "--epochs", "5",
                           "--save_dir", str(tmp_path), "--run_name", "boom", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert len(err) == 1 and "training diverged in epoch" in err[0], err
    status = json.loads((tmp_path / "boom" / "status.json").read_text())
    assert status["status"] == "diverged" and "train loss is nan" in status["error"]
    assert not (tmp_path / "boom" / "metrics_test.json").exists()
    assert not (tmp_path / "boom" / "timing.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB filesystem of its own (tmpfs): filling it fills nothing else."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_resume_continues(ray_cluster, reg_npz,
                                                                    small_disk, capsys):
    from raybench import run
    from raybench.errors import run_cli
    from raybench.resume import checkpoints, snapshot_ok

    # Checkpoints of ~3 MiB (an LSTM of 2 x 128 with its Adam state) on a 24 MiB disk that
    # fills up, all but 4 MiB, once the first checkpoint is written.
    args = ["--npz_path", str(reg_npz), "--model", "lstm", "--hidden", "128", "--layers", "2",
            "--task", "regression", "--epochs", "40", "--patience", "0", "--batch_size", "128",
            "--save_dir", str(small_disk), "--run_name", "full", "--quiet"]
    run_dir = small_disk / "full"
    filler = small_disk / "filler"

    def fill_after_first_checkpoint():
        while not (run_dir / "ray_train").is_dir() or not checkpoints(run_dir / "ray_train"):
            time.sleep(0.05)
        filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (4 << 20)))

    threading.Thread(target=fill_after_first_checkpoint, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 1, err
    assert len(errors) == 1 and "no space left on device" in errors[0], err
    assert str(small_disk) in errors[0] and "Traceback" not in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "no space left" in status["error"]
    assert checkpoints(run_dir / "ray_train"), "the previous checkpoint must survive"
    assert snapshot_ok(run_dir / "ray_train")
    filler.unlink()  # space is back: --resume continues where the last checkpoint left off
    assert run.main(["--resume", str(run_dir), "--epochs", "6", "--quiet"]) == 0
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, 7))


@pytest.mark.slow
def test_resume_checks_the_model_and_survives_a_truncated_ray_snapshot(ray_cluster, reg_npz,
                                                                       tmp_path):
    """What a full disk did to Ray's record of the checkpoints: 0 bytes. raybench sets it
    aside and starts from the newest complete checkpoint."""
    from raybench import run
    from raybench.errors import UserError

    run_dir = tmp_path / "snap"
    assert run.main(["--npz_path", str(reg_npz), "--epochs", "3", "--patience", "0",
                     "--save_dir", str(tmp_path), "--run_name", "snap", "--quiet"]) == 0
    (run_dir / "status.json").write_text('{"schema_version": 2, "status": "interrupted"}')
    # an edited model section no longer fits the checkpoint: one line naming the key
    config = run_dir / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("hidden: 64", "hidden: 32"))
    with pytest.raises(UserError, match="model.hidden: 64 in the checkpoint, 32 now"):
        run.main(["--resume", str(run_dir)])
    config.write_text(original)
    (run_dir / "ray_train" / "checkpoint_manager_snapshot.json").write_bytes(b"")
    assert run.main(["--resume", str(run_dir), "--epochs", "5", "--quiet"]) == 0
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, 6))
    assert (run_dir / "ray_train" / "checkpoint_manager_snapshot.json.unreadable").exists()


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(ray_cluster, reg_npz, tmp_path,
                                                               capsys):
    """The newest checkpoint is damaged (a node died while writing it): --resume says so and
    continues from the one before it instead of failing the run."""
    from raybench import run
    from raybench.resume import checkpoints

    run_dir = tmp_path / "fallback"
    assert run.main(["--npz_path", str(reg_npz), "--epochs", "2", "--patience", "0",
                     "--save_dir", str(tmp_path), "--run_name", "fallback", "--quiet"]) == 0
    (run_dir / "status.json").write_text('{"schema_version": 2, "status": "interrupted"}')
    (good,) = checkpoints(run_dir / "ray_train")[:1]
    newer = good.with_name(good.name + "9")  # sorts after it: the newest
    shutil.copytree(good, newer)
    state = newer / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert run.main(["--resume", str(run_dir), "--epochs", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newer.name} does not load; resuming from {good.name}" in err
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, 5))


def _command(module: str, args: list[str], cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _until_line(proc, text: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"ended before printing {text!r}:\n" + "".join(lines))


def _interrupt(proc, sig) -> tuple[str, list]:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    return rest, children


@pytest.mark.slow
def test_ctrl_c_during_a_scale_sweep_keeps_what_was_measured_as_interrupted(tmp_path, cpu_burner):
    """Ctrl-C while the second point's launchers start: exit 130, the first point kept in a
    scaling.json that says `interrupted`, every launcher and the local Ray stopped."""
    out = tmp_path / "s"
    proc = _command("raybench.scale", [
        "--workers", "1,2", "--backends", "raybench,ddp", "--synthetic-samples", "4000",
        "--batch_size", "32", "--window-s", "0.2", "--min-pairs", "3", "--max-pairs", "3",
        "--max-outside-load", "1", "--no-model", "--out", str(out)], tmp_path)
    _until_line(proc, "repeat 1 N=2: starting")
    rest, _ = _interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "interrupted" in rest, rest
    doc = json.loads((out / "scaling.json").read_text())
    assert doc["status"] == "interrupted"
    assert {r["workers"] for r in doc["runs"]} == {1}


@pytest.mark.slow
def test_ctrl_c_as_a_tune_sweep_starts_is_exit_130_not_a_failure(reg_npz, tmp_path, cpu_burner):
    """Ctrl-C on a busy machine before any trial had finished: the sweep ended as a failure
    ("every trial failed", exit 1) instead of an interruption."""
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "metric": "val_loss", "num_samples": 1,
        "overrides": {"data.npz_path": str(reg_npz), "train.batch_size": 64},
        "scheduler": {"max_t": 50, "grace_period": 50},
        "search_space": {"train.lr": {"grid": [0.01, 0.001]}}}))
    out = tmp_path / "t"
    proc = _command("raybench.tune", ["--config", str(sweep), "--max-concurrent", "1",
                                      "--out", str(out)], tmp_path)
    _until_line(proc, "Sweep: ")
    time.sleep(3)  # the first trial is starting
    rest, _ = _interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and f"--resume {out}" in rest, rest


@pytest.mark.slow
def test_sigterm_during_a_tune_sweep_is_an_interrupted_sweep_with_a_resume_hint(
        reg_npz, tmp_path, cpu_burner):
    """SIGTERM after the first trial: exit 143, trials.json `interrupted` with the trials that
    never started named so, and the line that resumes it."""
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "metric": "val_loss", "num_samples": 1,
        "overrides": {"data.npz_path": str(reg_npz), "train.batch_size": 64, "model.hidden": 8},
        "scheduler": {"max_t": 3, "grace_period": 3},
        "search_space": {"train.lr": {"grid": [0.01, 0.003, 0.001, 0.0003, 0.0001, 3e-5]}}}))
    out = tmp_path / "t"
    proc = _command("raybench.tune", ["--config", str(sweep), "--max-concurrent", "1",
                                      "--out", str(out)], tmp_path)
    _until_line(proc, "trial ")  # the first trial finished; the others queue behind it
    rest, _ = _interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, rest
    assert "Traceback" not in rest and f"--resume {out}" in rest, rest
    doc = json.loads((out / "trials.json").read_text())
    assert doc["status"] == "interrupted"
    statuses = [t["status"] for t in doc["trials"]]
    assert "stopped_early" not in statuses and statuses.count("completed") < 6, statuses
