"""How a command ends when it does not succeed: the exception types and the wrapper that turns
them into one line on stderr and an exit code.

  UserError   a mistake in input (file, flag, config, cluster size)            exit 2
  RunFailed   the run itself stopped for a known reason (diverged, disk full)   exit 1
  Ctrl-C      interrupted; --resume continues                                  exit 130
  SIGTERM     interrupted like Ctrl-C (Kubernetes evicting a pod)              exit 143
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in input (file, flag, config, cluster size): reported in one line, exit code 2."""


class RunFailed(Exception):
    """A run that stopped for a reason it can name (its loss diverged, the disk filled): one
    line, exit code 1, and status.json says why."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled exactly like Ctrl-C (status interrupted, workers stopped)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def install_sigterm() -> None:
    """Turn SIGTERM into Terminated. Call it after ray.init, which installs its own handler
    (sys.exit(15): a 'failed' run with Ray's stack dump instead of an interruption)."""
    import threading

    if threading.current_thread() is threading.main_thread():  # signals reach only that one
        signal.signal(signal.SIGTERM, _on_sigterm)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's main and exit with the code its outcome deserves (see above)."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
