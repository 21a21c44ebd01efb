"""Shared fixtures: small NPZ files written with the real data code."""

from __future__ import annotations

import numpy as np
import pytest

from raybench import data


@pytest.fixture(scope="session")
def npz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("npz")


@pytest.fixture(scope="session")
def reg_npz(npz_dir):
    """Synthetic GBM windows, regression targets."""
    return data.prepare("synthetic", "regression", 20, 0.2, npz_dir / "reg.npz", samples=1500,
                        seed=1)


@pytest.fixture(scope="session")
def cls_npz(npz_dir):
    return data.prepare("synthetic", "classification", 20, 0.2, npz_dir / "cls.npz",
                        samples=1500, seed=2)


def write_npz(path, **overrides):
    """A valid classification NPZ with some arrays replaced (for bad-input tests)."""
    rng = np.random.default_rng(0)
    arrays = {
        "X_train": rng.normal(size=(100, 10, 1)).astype(np.float32),
        "y_train": rng.integers(0, 2, 100),
        "X_test": rng.normal(size=(30, 10, 1)).astype(np.float32),
        "y_test": rng.integers(0, 2, 30),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def run_raw(cfg, ds, options=None):
    """The loop once in this process, as the raw launcher runs it (tests and notebooks)."""
    from pathlib import Path

    from raybench.backends import LaunchContext
    from raybench.backends.raw import RawBackend
    from raybench.loop import LoopOptions

    return RawBackend(ds, LaunchContext(scratch_dir=Path("."))).run(cfg, options or LoopOptions())


@pytest.fixture
def cpu_burner():
    """A busy loop on every core for the test's duration, at the niceness Ray gives its workers
    (15): timing-dependent paths (signals, chaos recoveries, status writes) must hold on a
    machine that is busy, not only on an idle one."""
    import os
    import subprocess
    import sys

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                preexec_fn=lambda: os.nice(15))
               for _ in range(os.cpu_count() or 1)]
    yield len(burners)
    for proc in burners:
        proc.kill()
        proc.wait()
