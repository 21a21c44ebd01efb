"""The go/report channel between the driver and a resident launcher's ranks.

Each side blocks without spinning while it waits: local processes on a pipe (`recv`), Ray
actors and Ray Train workers in a `ray.get` on an asyncio actor (`WindowBoard`) that hands every
rank the same order and gathers one report per rank. The driver's side (`LocalConductor`,
`RayConductor`) posts an order and waits for the reports, checking now and then that the
launcher is still alive so a dead rank fails the measurement, named, instead of hanging it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from raybench.errors import raise_if_stopped
from raybench.results import WindowOrder, WindowReport

# How often a waiting driver checks that the launcher it waits for is still alive.
ALIVE_POLL_S = 1.0


class LauncherDied(RuntimeError):
    """A resident launcher stopped answering: a rank exited or its run failed. The message
    names the rank, its pid and the cause where the launcher knows them."""


def exit_text(code: int) -> str:
    """A process's exit status in words: the signal that killed it, or its exit code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ------------------------------------------------------------------ local processes


class PipeChannel:
    """A local rank's end: orders and reports over its own pipe."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def wait(self) -> WindowOrder | None:
        return self.conn.recv()

    def report(self, report: WindowReport) -> None:
        self.conn.send(report)


class LocalConductor:
    """The driver's end of local ranks' pipes (rank order)."""

    def __init__(self, conns: list[Any], dead: Callable[[], str | None]) -> None:
        self.conns, self.dead = conns, dead  # dead(): why a rank is gone, None while all run

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        for conn in self.conns:
            try:
                conn.send(order)
            except OSError:  # the rank died between windows: its pipe is closed
                raise LauncherDied(f"{self._why_gone()} before a window") from None
        deadline = time.monotonic() + timeout_s
        return [self._receive(conn, deadline) for conn in self.conns]

    def _why_gone(self) -> str:
        """A closed pipe means its rank is gone or going: wait a moment to say how."""
        deadline = time.monotonic() + 5.0
        while (why := self.dead()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return why or "a rank closed its pipe"

    def _receive(self, conn: Any, deadline: float) -> WindowReport:
        while not conn.poll(ALIVE_POLL_S):
            raise_if_stopped()
            if (why := self.dead()) is not None:
                raise LauncherDied(f"{why} during a measured window")
            if time.monotonic() > deadline:
                raise LauncherDied("a window took longer than its time limit")
        try:
            return conn.recv()
        except (EOFError, OSError):  # the pipe closed: its rank is gone, or going
            raise LauncherDied(f"{self._why_gone()} during a measured window") from None

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass  # that rank is gone already


# ------------------------------------------------------------------ Ray


class WindowBoard:
    """An asyncio Ray actor: the current order (numbered) and this order's reports."""

    def __init__(self, world: int) -> None:
        self.world, self.seq = world, 0
        self.order: WindowOrder | None = None
        self.reports: dict[int, WindowReport] = {}
        self.changed = asyncio.Condition()

    async def post(self, order: WindowOrder | None) -> int:
        async with self.changed:
            self.seq += 1
            self.order, self.reports = order, {}
            self.changed.notify_all()
            return self.seq

    async def wait(self, seq: int) -> WindowOrder | None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.seq >= seq)
            return self.order

    async def report(self, seq: int, rank: int, report: WindowReport) -> None:
        async with self.changed:
            if seq == self.seq:
                self.reports[rank] = report
                self.changed.notify_all()

    async def collect(self, seq: int) -> list[WindowReport]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.seq != seq
                                        or len(self.reports) >= self.world)
            return [self.reports[r] for r in sorted(self.reports)]


class ActorChannel:
    """A Ray rank's end: the n-th order it waits for is the board's n-th."""

    def __init__(self, board: Any, rank: int) -> None:
        self.board, self.rank, self.seq = board, rank, 0

    def wait(self) -> WindowOrder | None:
        import ray

        self.seq += 1
        return ray.get(self.board.wait.remote(self.seq))

    def report(self, report: WindowReport) -> None:
        import ray

        ray.get(self.board.report.remote(self.seq, self.rank, report))


def window_board(world: int) -> Any:
    """A board on the head node, taking no CPU (it only waits)."""
    import ray
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return ray.remote(WindowBoard).options(
        num_cpus=0, resources={HEAD_NODE_RESOURCE_NAME: 0.001}).remote(world)


class RayConductor:
    """The driver's end of a board."""

    def __init__(self, board: Any, dead: Callable[[], str | None]) -> None:
        self.board, self.dead = board, dead  # dead(): why the launcher is gone, or None

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        import ray

        seq = ray.get(self.board.post.remote(order))
        pending = self.board.collect.remote(seq)
        deadline = time.monotonic() + timeout_s
        while not ray.wait([pending], timeout=ALIVE_POLL_S)[0]:
            raise_if_stopped()
            if (why := self.dead()) is not None:
                raise LauncherDied(f"{why} during a measured window")
            if time.monotonic() > deadline:
                raise LauncherDied("a window took longer than its time limit")
        return ray.get(pending)

    def stop(self) -> None:
        import ray

        try:
            ray.get(self.board.post.remote(None), timeout=30)
        except ray.exceptions.RayError:
            pass  # the board is gone: the ranks fail on their next wait and the run ends
