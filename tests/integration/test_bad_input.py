"""Every user mistake: one line on stderr, exit code 2, no traceback, nothing written that
could pass for a result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from raybench import run
from raybench.errors import run_cli
from tests.conftest import write_npz

rng = np.random.default_rng(0)
F32 = np.float32

NPZ_CASES = {
    "missing key": ({"y_test": None}, "missing key 'y_test'"),
    "wrong ndim": ({"X_train": rng.normal(size=(100, 10)).astype(F32)}, "must be 3-D"),
    "X/y length mismatch": ({"y_train": rng.integers(0, 2, 99)},
                            "X_train has 100 samples but y_train has 99"),
    "T differs": ({"X_test": rng.normal(size=(30, 12, 1)).astype(F32)}, "T and F must match"),
    "F differs": ({"X_test": rng.normal(size=(30, 10, 2)).astype(F32)}, "T and F must match"),
    "NaN in X": ({"X_train": np.full((100, 10, 1), np.nan, F32)}, "contains NaN or inf"),
    "inf in X": ({"X_test": np.full((30, 10, 1), np.inf, F32)}, "contains NaN or inf"),
    "labels outside {0,1}": ({"y_train": rng.integers(0, 3, 100)}, "outside {0, 1}"),
}


def fails_with(argv, message, capsys, save_dir):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, [*argv, "--save_dir", str(save_dir)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not any(save_dir.glob("run_*"))  # nothing that could pass for a result
    return err


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz(case, tmp_path, capsys):
    overrides, message = NPZ_CASES[case]
    npz = write_npz(tmp_path / "bad.npz", **overrides)
    fails_with(["--npz_path", str(npz), "--batch_size", "8"], message, capsys, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--npz_path", "/nonexistent/data.npz"], "NPZ file not found"),
    (["--task", "regression"], "task is regression but y holds integer class labels"),
    (["--valid_ratio", "0.001"], "empty validation split"),
    (["--batch_size", "64", "--workers", "2"], "fewer than batch_size 64"),
    (["--set", "train.epochz=3"], "unknown config key 'train.epochz'"),
    (["--epochs", "many"], "train.epochs: expected an integer"),
    (["--lr", "-0.01"], "train.lr: must be > 0"),
    (["--lr", "0"], "train.lr: must be > 0"),
    (["--epochs", "0"], "train.epochs: must be > 0"),
    (["--batch_size", "-1"], "train.batch_size: must be > 0"),
    (["--workers", "0"], "scaling.workers: must be > 0"),
    (["--model", "cnn"], "model.kind: 'cnn' is not one of"),
    (["--early_stop_metric", "r2"], "does not apply to classification"),
])
def test_bad_flags(argv, message, tmp_path, capsys):
    npz = write_npz(tmp_path / "ok.npz")
    fails_with(["--npz_path", str(npz), "--batch_size", "8", *argv], message, capsys, tmp_path)


def test_not_an_npz_and_malformed_yaml(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    fails_with(["--npz_path", str(junk)], "not an NPZ file", capsys, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    fails_with(["--config", str(bad)], "malformed YAML", capsys, tmp_path)
    bad.write_text("train:\n  lr: fast\n")
    fails_with(["--config", str(bad)], "train.lr: expected a number", capsys, tmp_path)


def test_unwritable_save_dir(tmp_path, capsys):
    npz = write_npz(tmp_path / "ok.npz")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, ["--npz_path", str(npz), "--save_dir", str(blocker / "runs")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "is not writable" in err and len(err.splitlines()) == 1


def test_cluster_cannot_hold_the_workers(ray_cluster, tmp_path, capsys):
    npz = write_npz(tmp_path / "ok.npz")
    fails_with(["--npz_path", str(npz), "--batch_size", "8", "--workers", "9"],
               "cluster too small: 9 workers x (1 CPU) do not fit in 4 CPU, 0 GPU on 1 node(s)",
               capsys, tmp_path)
    fails_with(["--npz_path", str(npz), "--batch_size", "8", "--use-gpu"],
               "the Ray cluster has no GPUs", capsys, tmp_path)


TOO_MANY = 4 * (os.cpu_count() or 1) + 1  # past raybench's local oversubscription limit


@pytest.mark.parametrize("argv, message", [
    (["--address", "127.0.0.1:1"], "cannot connect to a Ray cluster at '127.0.0.1:1'"),
    (["--workers", str(TOO_MANY), "--batch_size", "8"],
     f"a local Ray runs at most {TOO_MANY - 1} worker processes"),
    (["--npz_path", "/nonexistent.npz"], "NPZ file not found"),
])
def test_fresh_process(argv, message, tmp_path):
    n = TOO_MANY * 10
    npz = write_npz(tmp_path / "ok.npz", X_train=rng.normal(size=(n, 10, 1)).astype(F32),
                    y_train=rng.integers(0, 2, n))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "raybench.run", "--npz_path", str(npz), *argv,
                           "--save_dir", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"X_train": np.zeros((100, 0, 1), F32), "X_test": np.zeros((30, 0, 1), F32)},
     "a window needs at least one time step and one feature"),
    ({"X_train": np.zeros((100, 10, 0), F32), "X_test": np.zeros((30, 10, 0), F32)},
     "a window needs at least one time step and one feature"),
    ({"y_train": rng.normal(size=100).astype(F32), "y_test": rng.normal(size=30).astype(F32)},
     None),  # a valid regression NPZ: the control
])
def test_empty_windows_are_refused(overrides, message, tmp_path, capsys):
    npz = write_npz(tmp_path / "w.npz", **overrides)
    if message is None:
        return
    fails_with(["--npz_path", str(npz), "--batch_size", "8"], message, capsys, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "train.lr: must be a finite number, got 'nan'"),
    (["--lr", "inf"], "train.lr: must be a finite number"),
    # finite, but Adam's first step overflowed float32 inside the workers (a traceback)
    (["--lr", "1e308"], "train.lr: must be <= 3.4e+37, got 1e+308"),
    (["--set", "train.lr=[1"], "--set train.lr=[1: cannot read the value"),
    (["--run_name", "a/b"], "io.run_name: 'a/b' must be a plain directory name"),
    (["--workers", "3-2"], "scaling.workers: the minimum 3 exceeds the maximum 2"),
    (["--task", "regression"], "regression needs float targets"),
])
def test_more_bad_flags(argv, message, tmp_path, capsys):
    npz = write_npz(tmp_path / "ok.npz")
    fails_with(["--npz_path", str(npz), "--batch_size", "8", *argv], message, capsys, tmp_path)


def test_bad_config_files(tmp_path, capsys):
    npz = write_npz(tmp_path / "ok.npz")
    fails_with(["--npz_path", str(npz), "--config", str(tmp_path)],
               "is a directory, not a YAML file", capsys, tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  lr: 0.01  # caf\xe9\n".encode("latin-1"))
    fails_with(["--npz_path", str(npz), "--config", str(latin)], "not a UTF-8 text file",
               capsys, tmp_path)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train: {lr: 0.01}\nmodel: {hidden: 8}\ntrain: {epochs: 2}\n")
    fails_with(["--npz_path", str(npz), "--config", str(twice)], "key 'train' given twice",
               capsys, tmp_path)


def test_prepare_refuses_impossible_outputs(tmp_path, capsys):
    from raybench.data.__main__ import main as data_main

    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in [(blocker / "x.npz", "is a file, not a directory"),
                         (tmp_path, "is a directory; give a file path")]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(data_main, ["prepare", "--source", "synthetic", "--samples", "100",
                                "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_scale_refuses_an_empty_worker_count(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raybench.scale", "--workers", "1,,2",
                           "--synthetic-samples", "1000", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "a sweep's list of counts (1,2,4), got '1,,2'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "s").exists()


def test_sweep_files_name_themselves_in_errors(tmp_path, capsys):
    from raybench import tune

    npz = write_npz(tmp_path / "ok.npz")
    for body, message in [
            ({"metric": "foo", "search_space": {"train.lr": {"choice": [0.1]}}},
             "metric 'foo' is unknown"),
            ({"overrides": {"train.epochz": 3}, "search_space": {"train.lr": {"choice": [0.1]}}},
             "overrides: unknown config key 'train.epochz'")]:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(__import__("yaml").safe_dump(
            {**body, "overrides": {**body.get("overrides", {}), "data.npz_path": str(npz)}}))
        with pytest.raises(SystemExit) as exit_info:
            run_cli(tune.main, ["--config", str(sweep), "--out", str(tmp_path / "t")])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and str(sweep) in err, err
