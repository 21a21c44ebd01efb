"""The per-worker training loop, top to bottom. It knows no CLI, no Tune and no launcher: a
`Session` gives it its rank, device, model wrapper, reporting and a checkpoint to resume from,
and an `Ingest` gives it batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from raybench.config import Config
from raybench.data.ingest import Ingest
from raybench.loop import steps
from raybench.loop.collector import MetricsCollector, Window
from raybench.loop.session import Session
from raybench.results import RunResult


@dataclass
class LoopOptions:
    """How the launcher wants the loop run (not model or data settings: those are the Config)."""

    launch_time: float | None = None  # epoch seconds the user's command started
    checkpoint: bool = True  # checkpoint every epoch (resume, fault tolerance, best weights)
    evaluate: bool = True  # validation every epoch, test at the end
    max_steps_per_epoch: int | None = None  # cap for benchmarks on huge data
    warmup_steps: int = 0  # steps excluded from throughput, on top of train.warmup_epochs
    window: Window | None = None  # a benchmark's measured window instead of epochs
    progress_interval_s: float | None = None  # rank 0 tells the session its step this often
    worker_entry_time: float | None = None  # when the launcher's worker function began


def warmup_plan(cfg: Config, options: LoopOptions, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps) excluded from throughput. When every epoch would be warm-up (a one-epoch
    run), the first tenth of the first epoch's steps is the warm-up instead."""
    if options.window:
        return 0, options.window.warmup_steps
    if cfg.train.warmup_epochs < cfg.train.epochs:
        return cfg.train.warmup_epochs, options.warmup_steps
    return 0, options.warmup_steps + max(1, steps_per_epoch // 10)


def train_worker(cfg: Config, ingest: Ingest, session: Session,
                 options: LoopOptions | None = None) -> RunResult | None:
    """Train on this rank's shard; returns the run's result on rank 0, None elsewhere."""
    options = options or LoopOptions()
    warmup_epochs, warmup_steps = warmup_plan(cfg, options, ingest.steps_per_epoch)
    collector = MetricsCollector(session.device, warmup_epochs=warmup_epochs,
                                 warmup_steps=warmup_steps, window=options.window,
                                 worker_entry_time=options.worker_entry_time)
    state = steps.setup(cfg, ingest, session, collector, options.max_steps_per_epoch)
    state.progress_every_s = options.progress_interval_s
    checkpoint_dir = session.get_checkpoint_dir()
    if checkpoint_dir:
        steps.resume(state, checkpoint_dir)

    epoch = state.first_epoch
    while options.window or epoch <= cfg.train.epochs:
        started = time.perf_counter()
        row = steps.train_epoch(state, epoch, collector)
        if options.evaluate:
            steps.validate_and_decide(state, row)
        steps.close_epoch(state, row, started)
        if options.window:  # a benchmark cycles the data until its window is measured
            if collector.window_complete:
                break
        else:
            steps.report_epoch(state, row, options.checkpoint)
            if options.evaluate and state.stopper.should_stop:
                break
        epoch += 1
    return steps.finish(state, collector, options.evaluate, options.launch_time)
