"""The per-worker training loop, top to bottom. It knows no CLI, no Tune and no launcher: a
`Session` gives it its rank, device, model wrapper, reporting and a checkpoint to resume from,
and an `Ingest` gives it batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from raybench.config import Config
from raybench.data.ingest import Ingest
from raybench.loop import checkpoint, hang, steps, windows
from raybench.loop.collector import MetricsCollector, Window
from raybench.loop.session import Session
from raybench.results import RunResult
from raybench.targets import Target
from raybench.tracking import Tracker, TrackingOptions


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
    ingest_only: bool = False  # fetch batches without training: the ingest's ceiling
    target: Target | None = None  # stop when validation meets it (time to target)
    storage_dir: str | None = None  # where checkpoints are persisted: free space checked first
    tracking: TrackingOptions | None = None  # TensorBoard / MLflow, written by rank 0
    # A checkpoint directory to start from when the session has none of its own (Ray's record
    # of the run's checkpoints was unusable: resume.prepare_resume).
    resume_from: str | None = None
    # Resident: train windows on the session's orders (session.wait_window) until told to stop,
    # instead of epochs; the driver interleaves them with another launcher's (raybench.scale).
    resident: bool = False


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
    state.launch_time = options.launch_time
    # A rank that stops making progress must not hold the others forever (loop.hang).
    state.bound = hang.CollectiveBound(cfg, session.world_size)
    state.pause_clock = hang.PauseClock(session.rank).start()
    checkpoint_dir = session.get_checkpoint_dir() or options.resume_from
    if checkpoint_dir:
        checkpoint.resume(state, checkpoint_dir)
    if options.resident:
        windows.serve_windows(state, collector, session, options.ingest_only)
        return steps.finish(state, collector, False, options.launch_time)
    tracker = open_tracker(options.tracking) if session.rank == 0 else None

    epoch = state.first_epoch
    while options.window or epoch <= cfg.train.epochs:
        started = time.perf_counter()
        run_epoch = steps.drain_epoch if options.ingest_only else steps.train_epoch
        row = run_epoch(state, epoch, collector)
        if state.restores and state.restores[-1].first_step_epoch_s is None:
            state.restores[-1].first_step_epoch_s = collector.marks["first_step"]
        if options.evaluate:
            steps.validate_and_decide(state, row)
        steps.close_epoch(state, row, started)
        steps.note_first_marks(state, collector)
        state.bound.after_epoch(collector.last_epoch_steps(), row.eval_time_s)
        if tracker:
            tracker.epoch(row, *collector.last_epoch())
        if options.target and steps.check_target(state, row, options.target, collector,
                                                 options.launch_time):
            break
        if options.window:  # a benchmark cycles the data until its window is measured
            if collector.window_complete:
                break
        else:
            checkpoint.report_epoch(state, row, options.checkpoint, options.storage_dir)
            if options.evaluate and state.stopper.should_stop:
                break
        epoch += 1
    result = steps.finish(state, collector, options.evaluate, options.launch_time)
    if result is not None and options.target:
        result.timing.target = state.target or steps.missed(state, options.target)
    if tracker and result is not None:
        tracker.finish({"valid": result.metrics_valid, "test": result.metrics_test},
                       state.best_state, len(state.history))
        tracker.close()
    return result


class _SafeTracker:
    """Tracking must never fail a run: the first error is printed once, then tracking stops."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            if self.tracker is None:
                return
            try:
                getattr(self.tracker, name)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                print(f"raybench: tracking stopped: {type(exc).__name__}: {exc}", flush=True)
                self.tracker = None
        return call


def open_tracker(options: TrackingOptions | None) -> _SafeTracker | None:
    if options is None or not (options.tensorboard_dir or options.mlflow_uri):
        return None
    try:
        return _SafeTracker(Tracker(options))
    except Exception as exc:  # noqa: BLE001
        print(f"raybench: tracking disabled: {type(exc).__name__}: {exc}", flush=True)
        return None
