"""A resident rank: after set-up it waits at a window boundary for an order from the driver,
trains exactly the steps ordered, reports what it measured and waits again, until told to stop.
Between windows it is blocked in a receive (a pipe or a Ray call): no CPU, no spinning, so the
launcher measuring meanwhile has the machine to itself.

The data is one endless stream over epochs: a window may end mid-epoch and the next one goes on
from there, so no window pays for restarting an ingest.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from itertools import count, islice

import numpy as np
import torch
import torch.distributed as dist

from raybench.data.ingest import Batch
from raybench.loop import steps
from raybench.loop.collector import MetricsCollector
from raybench.loop.session import Session
from raybench.results import PHASES, WindowOrder, WindowReport


def endless_batches(state: steps.TrainState) -> Iterator[Batch]:
    """This rank's training batches, epoch after epoch."""
    for epoch in count(state.first_epoch):
        yield from islice(state.ingest.train_batches(epoch), state.steps_per_epoch)


def drain_step(state: steps.TrainState, collector: MetricsCollector):
    """The ingest alone: a fetched batch counted as a step with no model work."""
    def step(xb: torch.Tensor, yb: torch.Tensor, t0) -> tuple[object, bool]:
        t1 = collector.clock()
        return t1, collector.record(len(yb), t0, t1, None, t1, t1)
    return step


def serve_windows(state: steps.TrainState, collector: MetricsCollector, session: Session,
                  ingest_only: bool = False) -> None:
    """Windows on order until the driver says stop (None)."""
    batches = endless_batches(state)
    while (order := session.wait_window()) is not None:
        session.report_window(train_window(state, collector, batches, order, ingest_only))
        if state.bound is not None:  # the measured steps bound a stuck rank's wait (loop.hang)
            state.bound.after_epoch(collector.last_epoch_steps(), 0.0)


def _synchronise(session: Session) -> None:
    """Every rank starts the window's clock together: the driver's orders reach the ranks
    microseconds to milliseconds apart, and a rank that started early would wait in its first
    all-reduce on the clock."""
    if session.world_size > 1:
        dist.barrier()
    if session.device.type == "cuda":
        torch.cuda.synchronize(session.device)


def train_window(state: steps.TrainState, collector: MetricsCollector, batches: Iterator[Batch],
                 order: WindowOrder, ingest_only: bool = False) -> WindowReport:
    session = state.session
    state.model.train()
    collector.counting = not order.warmup
    step = drain_step(state, collector) if ingest_only else steps.Stepper(state, collector)
    _synchronise(session)
    before, used = collector.measured_steps, resource.getrusage(resource.RUSAGE_SELF)
    started_at, start = time.time(), time.perf_counter()
    t0 = collector.clock()
    samples = 0
    for xb, yb in islice(batches, order.steps):
        t0, _ = step(xb, yb, t0)
        samples += len(yb)
    if session.device.type == "cuda":
        torch.cuda.synchronize(session.device)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    collector.end_epoch()
    if not ingest_only:
        _check_finite(step, session, state)
    rows = collector.rows_since(before)
    return WindowReport(
        rank=session.rank, steps=order.steps, samples=samples, seconds=seconds,
        phase_s={p: float(rows[:, i].sum()) for i, p in enumerate(PHASES)},
        step_ms_p50=float(np.median(rows.sum(axis=1)) * 1e3) if len(rows) else None,
        cpu_s=(after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime),
        nivcsw=after.ru_nivcsw - used.ru_nivcsw, started_at=started_at,
        sys_s=after.ru_stime - used.ru_stime, minflt=after.ru_minflt - used.ru_minflt)


def _check_finite(step: steps.Stepper, session: Session, state: steps.TrainState) -> None:
    """A window's mean loss over all ranks (one all-reduce, off the clock): a NaN stops every
    rank together, as in an epoch."""
    state.samples_seen += sum(step.sizes)
    loss = steps.global_mean_loss(step.losses, step.sizes, session)
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise steps.Diverged(f"training diverged in a measured window: the train loss is {loss}")
