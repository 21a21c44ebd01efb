"""How a command ends when it does not succeed: the exception types and the wrapper that turns
them into one line on stderr and an exit code.

  UserError   a mistake in input (file, flag, config, cluster size)            exit 2
  RunFailed   the run itself stopped for a known reason (diverged, disk full)   exit 1
  Ctrl-C      interrupted; --resume continues                                  exit 130
  SIGTERM     interrupted like Ctrl-C (Kubernetes evicting a pod)              exit 143
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

import raybench


class UserError(Exception):
    """A mistake in input (file, flag, config, cluster size): reported in one line, exit code 2."""


class RunFailed(Exception):
    """A run that stopped for a reason it can name (its loss diverged, the disk filled): one
    line, exit code 1, and status.json says why."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


def printable(text: str, limit: int = 160) -> str:
    """One line of a library's message that is safe to print: its first line, control and
    undecodable bytes (a binary file read as text) replaced, cut to `limit` characters."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def cause_line(exc: BaseException, limit: int = 300) -> str:
    """What failed, in one line: the exception's type and the first line of its message that
    is not a traceback's own (Ray wraps a worker's whole traceback into its errors)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "^", "~"))]
    text = keep[0] if keep else ""
    return printable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit)


def missing_file(path: object, what: str) -> UserError:
    """Why a path the user gave is not a readable file, in their terms: not found, a broken
    symlink, a symlink loop, a directory, unreadable."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return UserError(f"{what} {path}: a symlink loop (too many levels of symbolic links)")
        if os.path.islink(path):
            return UserError(f"{what} {path}: a broken symlink (to {os.readlink(path)})")
        if exc.errno == errno.EACCES:
            return UserError(f"{what} {path}: permission denied")
        return UserError(f"{what} not found: {path}")
    if os.path.isdir(path):
        return UserError(f"{what} {path} is a directory, not a file")
    return UserError(f"{what} {path}: not a regular file")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled exactly like Ctrl-C (status interrupted, workers stopped)."""


# The first stop signal this process received (signal.SIGINT or signal.SIGTERM), or None. Code
# that waits inside Ray, where a KeyboardInterrupt can come back wrapped in a Ray error or be
# swallowed, asks `stopped()` after every wait instead of trusting the exception to arrive.
_first_signal: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    if not _first_signal:
        _first_signal.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM both stop the command the same way. Installed before anything starts
    and again after ray.init (which sets its own SIGTERM handler: sys.exit(15))."""
    import threading

    if threading.current_thread() is threading.main_thread():  # signals reach only that one
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


install_sigterm = install_signal_handlers  # the name the commands used


def stopped() -> int | None:
    """The stop signal received so far (SIGINT or SIGTERM), or None."""
    return _first_signal[0] if _first_signal else None


def raise_if_stopped() -> None:
    """Re-raise a stop signal that a library swallowed (see `stopped`)."""
    if stopped() == signal.SIGTERM:
        raise Terminated()
    if stopped() == signal.SIGINT:
        raise KeyboardInterrupt()


def note_signal(signum: int) -> None:
    """Record a stop signal another handler (Ray Tune's) took instead of ours."""
    if not _first_signal:
        _first_signal.append(signum)


@contextlib.contextmanager
def graceful_tune_signals() -> Iterator[None]:
    """Ray Tune stops a sweep gracefully on SIGINT with a handler of its own (it saves the
    experiment for a resume, then restores the handler it found): make SIGTERM do the same, and
    record either, so a stopped sweep is never taken for a finished one."""
    import os

    def on_sigterm(signum: int, frame: object) -> None:
        note_signal(signum)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if signal.getsignal(signal.SIGINT) is _on_signal:  # Tune's handler ran, ours is back
            note_signal(signal.SIGINT)
        install_signal_handlers()


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's main and exit with the code its outcome deserves (see above)."""
    install_signal_handlers()
    raybench.from_cli()
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _exit_interrupted(stopped() or signal.SIGINT)
    except SystemExit as exc:
        # Ray's own SIGTERM handler (installed inside ray.init) exits with the signal number.
        if exc.code == signal.SIGTERM or stopped() == signal.SIGTERM:
            _exit_interrupted(signal.SIGTERM)
        raise
    sys.exit(code or 0)


def _exit_interrupted(signum: int) -> None:
    name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    print(name, file=sys.stderr)
    sys.exit(128 + signum)
