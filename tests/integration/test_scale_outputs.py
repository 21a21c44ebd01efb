"""`raybench.scale`'s output and its launchers failing (issue 37), with the local launchers
only (ddp, raw: no Ray): a second sweep into a held --out and a read-only --out refused before
anything starts; a --out that fills up leaves no half report; a launcher killed mid-sweep is
a failed point, named, with what was measured kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SWEEP = ["--workers", "1", "--backends", "ddp,raw", "--synthetic-samples", "4000",
         "--batch_size", "32", "--window-s", "0.3", "--max-outside-load", "1", "--no-model"]


def scale(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-m", "raybench.scale", *SWEEP, *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def until_line(proc: subprocess.Popen, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    pytest.fail(f"ended before printing {text!r}:\n" + "".join(seen))


def one_line(proc: subprocess.Popen, code: int) -> str:
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == code, rest
    errors = [line for line in rest.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in rest, rest
    return errors[0]


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_second_sweep_into_a_held_out_and_a_read_only_out_are_refused(tmp_path, tmpfs):
    out = tmp_path / "s"
    first = scale("--budget-s", "600", "--min-pairs", "500", "--out", str(out), cwd=tmp_path)
    try:
        until_line(first, "started and warm")
        second = scale("--out", str(out), cwd=tmp_path)
        assert "is in use by a live raybench" in one_line(second, 2)
    finally:
        first.kill()
        first.wait()
    read_only = tmpfs("ro", "ro,size=1m")
    t0 = time.monotonic()
    line = one_line(scale("--out", str(read_only / "s"), cwd=tmp_path), 2)
    assert line.startswith(f"error: --out {read_only / 's'} is not writable"), line
    assert time.monotonic() - t0 < 60  # refused before any launcher started


@pytest.mark.slow
def test_an_out_that_fills_up_leaves_no_half_report(tmp_path, tmpfs):
    disk = tmpfs("full", "size=1m")
    proc = scale("--max-pairs", "3", "--out", str(disk / "s"), cwd=tmp_path)
    until_line(proc, "raw")  # both launchers start; the rounds follow
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # unbuffered: nothing to flush
    try:  # every block taken before the report is written
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    line = one_line(proc, 1)
    assert "cannot write the scaling report" in line and "No space left" in line, line
    left = sorted(p.name for p in (disk / "s").iterdir())
    assert not {"scaling.json", "scaling.csv", "scaling.png"} & set(left), left


@pytest.mark.slow
def test_a_launcher_killed_mid_sweep_is_a_failed_point_with_its_windows_kept(tmp_path):
    out = tmp_path / "s"
    proc = scale("--budget-s", "600", "--min-pairs", "500", "--out", str(out), cwd=tmp_path)
    until_line(proc, "raw                  N=1: started and warm")
    time.sleep(2)  # a few rounds measured
    spawned = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "multiprocessing" in " ".join(p.cmdline())]
    victim = max(spawned, key=lambda p: p.create_time())  # the raw process, started last
    victim.send_signal(signal.SIGKILL)
    line = one_line(proc, 1)
    assert f"raw at N=1 failed: rank 0 (pid {victim.pid}) was killed by SIGKILL" in line, line
    doc = json.loads((out / "scaling.json").read_text())
    assert doc["status"] == "failed" and doc["windows"], doc["status"]
    assert {w["launcher"] for w in doc["windows"]} == {"ddp", "raw"}
    assert [c["numerator"] for c in doc["comparisons"]] == ["ddp"]


def test_a_budget_shorter_than_start_up_measures_nothing_and_says_so(tmp_path):
    """--budget-s 2 with start-up alone taking longer: exit 0 and 'completed' with no ratio
    before; now the point says why and the sweep fails, kept as failed."""
    out = tmp_path / "s"
    line = one_line(scale("--budget-s", "2", "--out", str(out), cwd=tmp_path), 1)
    assert "no comparison was measured: ddp/raw at N=1" in line, line
    assert "start-up alone took" in line and "of the 2s budget" in line, line
    assert json.loads((out / "scaling.json").read_text())["status"] == "failed"
