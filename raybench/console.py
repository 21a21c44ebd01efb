"""Timestamped progress lines (`[YYYY-MM-DD HH:MM:SS] message`), one per event, the run's
summary always; --quiet keeps only the summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from raybench.results import Recovery, StepProgress, WorkersFailed


def recovery_line(r: Recovery) -> str:
    """One fault the run survived, in words: what, how long it took to see, to resume, and
    what was trained again (run's summary, scale's for each --chaos run)."""
    what = r.cause or "cause not reported"
    if not r.restarted:  # shorter than the hang bound, or a slow node
        lasted = f" for {r.fault_s:.1f}s" if r.fault_s is not None else ""
        return f"went on through a {r.fault}{lasted} ({what}): {r.note}"
    detect = (f"detected {r.detect_s:.1f}s after the last progress; "
              if r.detect_s is not None else "")
    after = (f"training resumed {r.recovery_s:.1f}s later" if r.recovery_s is not None
             else r.note)
    lost = f"; {r.steps_lost} step(s) trained again" if r.steps_lost else ""
    return f"survived a failure ({what}): {detect}{after}{lost}"


class Console:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def log(self, message: str) -> None:
        """A timestamped progress line (hidden with --quiet)."""
        if not self.quiet:
            print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)

    def section(self, title: str) -> None:
        if not self.quiet:
            print(f"\n{'=' * 60}\n{title}\n{'=' * 60}", flush=True)

    def summary(self, message: str) -> None:
        """Always printed: the result a user came for."""
        print(message, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


class EpochProgress:
    """A run's live view. On a terminal: a progress bar over the current epoch's steps with the
    epoch lines printed above it. Elsewhere (CI, `ray job logs`): the epoch lines, plus a plain
    step line at most every 30 s for long epochs."""

    def __init__(self, console: Console, format_epoch, stream=None) -> None:
        self.console = console
        self.format_epoch = format_epoch
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() and not console.quiet
        self.bar = None
        self._last_plain = 0.0

    def __call__(self, row: dict[str, Any] | StepProgress | WorkersFailed) -> None:
        if self.console.quiet:
            return
        if isinstance(row, StepProgress):
            self._step(row)
            return
        if isinstance(row, WorkersFailed):
            self.close()
            self.console.log(f"workers failed ({row.cause}); Ray Train restarts them from the "
                             "last checkpoint if a restart is left (--max-failures)")
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.console.log(self.format_epoch(row))

    def _step(self, row: StepProgress) -> None:
        if self.tty:
            from tqdm import tqdm

            if self.bar is None or self.bar.desc != f"epoch {row.epoch}":
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=row.steps, desc=f"epoch {row.epoch}", unit="step",
                                leave=False, file=self.stream, mininterval=0)
            self.bar.update(row.step - self.bar.n)
        elif time.monotonic() - self._last_plain >= 30:
            self._last_plain = time.monotonic()
            self.console.log(f"  epoch {row.epoch}: step {row.step}/{row.steps}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
