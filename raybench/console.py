"""Timestamped console lines in the seed notes' style; --quiet keeps only the summary."""

from __future__ import annotations

import sys
import time


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
