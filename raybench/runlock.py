"""One owner per run directory: a lock file with the driver's pid, host and a heartbeat.

A driver holds `<run_dir>/.raybench.lock` while it trains and refreshes its heartbeat every few
seconds. `--resume` refuses a run whose owner is alive (same host: its pid still runs raybench;
another host: its heartbeat is fresh) and takes over one whose owner is gone (a driver killed
with SIGKILL leaves `status: running` and a stale lock behind).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from raybench import artifacts
from raybench.errors import UserError

LOCK = ".raybench.lock"
HEARTBEAT_S = 5.0
# A lock whose heartbeat is older than this is abandoned (an owner on another host cannot be
# asked whether its pid still runs).
STALE_AFTER_S = 6 * HEARTBEAT_S


def read_lock(run_dir: Path) -> dict | None:
    try:
        info = json.loads((run_dir / LOCK).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_runs_raybench(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: assume it is the owner
    try:  # a reused pid belongs to some other program
        return b"raybench" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def owner_alive(info: dict) -> bool:
    if info.get("host") == socket.gethostname():
        return _pid_runs_raybench(int(info.get("pid", -1)))
    return time.time() - float(info.get("heartbeat", 0)) < STALE_AFTER_S


def check_not_live(run_dir: Path) -> None:
    """Refuse a run directory whose owner is still alive, before anything is loaded."""
    info = read_lock(Path(run_dir))
    if info and owner_alive(info):
        age = time.time() - float(info.get("heartbeat", 0))
        raise UserError(f"{run_dir} is in use by a live raybench (pid {info.get('pid')} on "
                        f"{info.get('host')}, heartbeat {age:.0f}s ago); wait for it, or stop it "
                        "first")


class RunLock:
    """Held by the driver for the life of a run; `release()` removes it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
                     "started": time.time(), "heartbeat": time.time()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="raybench-lock", daemon=True)

    @classmethod
    def acquire(cls, run_dir: Path) -> tuple[RunLock, dict | None]:
        """Take the run directory; the abandoned owner's lock (if any) is returned."""
        check_not_live(run_dir)
        previous = read_lock(Path(run_dir))
        lock = cls(Path(run_dir))
        lock._write()
        if read_lock(Path(run_dir)).get("token") != lock.info["token"]:
            raise UserError(f"{run_dir}: another raybench took the run directory at the same time")
        lock._thread.start()
        return lock, previous

    def _write(self) -> None:
        self.info["heartbeat"] = time.time()
        artifacts.write_json(self.path, self.info)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a full disk must not kill the run over its heartbeat
                pass

    def release(self) -> None:
        self._stop.set()
        if (read_lock(self.path.parent) or {}).get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
