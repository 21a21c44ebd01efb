"""The scaling model of a sweep, fitted on what one worker measured and on all-reduce timings
only: the N >= 2 runs are compared with its predictions, never fed to it."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from raybench.backends import LaunchContext
from raybench.backends.ddp import allreduce_sweep
from raybench.backends.raw import RawBackend
from raybench.console import Console
from raybench.loop import LoopOptions, Window, worker_threads
from raybench.models import count_parameters
from raybench.results import RunRecord, ScalingModelReport
from raybench.scaling_model import CommModel, StepProfile, predict, with_measurement

if TYPE_CHECKING:
    from raybench.sweep import Measure, Plan, ScaleSpec


def one_worker_profile(p: Plan, batches: list[int]) -> StepProfile:
    """One worker's phase times at each per-worker batch, from short raw-loop windows."""
    from raybench.sweep import point_config

    backend = RawBackend(p.memory, LaunchContext(scratch_dir=Path(tempfile.gettempdir())))
    options = LoopOptions(checkpoint=False, evaluate=False,
                          window=Window(warmup_steps=20, min_steps=200, min_seconds=1.0))
    rows = []
    for b in batches:
        cfg = point_config(p.base, 1, None)
        cfg.train.batch_size = b
        rows.append(backend.run(cfg, options).timing.step_breakdown)
    return StepProfile(batch=batches, data_s=[r.data_s for r in rows],
                       compute_s=[r.compute_s for r in rows],
                       optimizer_s=[r.optimizer_s for r in rows])


def fit_model(spec: ScaleSpec, p: Plan, measures: list[Measure], runs: list[RunRecord],
              out: Console) -> ScalingModelReport | None:
    """The scaling model, fitted on one-worker steps and all-reduce timings only: the N >= 2
    runs are compared with its predictions, never fed to it."""
    from raybench.sweep import global_batch

    if spec.no_model or 1 not in spec.workers or p.memory is None or (
            len(spec.workers) < 2 and not spec.predict):
        return None
    grad_bytes = 4 * count_parameters(p.model)
    glob = global_batch(spec, p.base)
    forecast = [n for n in spec.predict if n not in spec.workers]
    batches = sorted({cfg.train.batch_size for _, cfg in p.points}
                     | {glob // n if glob else p.base.train.batch_size for n in forecast
                        if not glob or glob % n == 0})
    out.log(f"Scaling model: one-worker profile at batch {', '.join(map(str, batches))}, "
            f"all-reduce timings at N={', '.join(str(n) for n in spec.workers if n > 1)}")
    profile = one_worker_profile(p, batches)
    measured = {(r["workers"], r["bytes"]): r["seconds"] for n in spec.workers if n > 1
                for r in allreduce_sweep(n, sorted({grad_bytes, 4 << 10, 256 << 10, 4 << 20}))}
    comm = CommModel.fit(measured, alpha_s=spec.alpha_us * 1e-6 if spec.alpha_us else None,
                         beta_s_per_byte=1 / (spec.beta_gbps * 1e9) if spec.beta_gbps else None)
    threads, cores = worker_threads(p.base), os.cpu_count() or 1
    predictions = []
    for backend in dict.fromkeys(m.name for m in measures if m.name != "raw"
                                 and m.ingest == "memory" and not m.chaos):
        launcher = _launcher_profile(profile, runs, backend)
        if launcher is None:
            continue
        for n, cfg in p.points:
            pred = predict(backend, launcher, comm, n, cfg.train.batch_size, grad_bytes,
                           threads, cores)
            predictions.append(with_measurement(pred, _median_rate(runs, backend, n)))
        for n in forecast if backend == "raybench" else []:
            b = glob // n if glob else p.base.train.batch_size
            predictions.append(predict(backend, launcher, comm, n, b, grad_bytes, threads,
                                       n * threads, forecast=True))
    return ScalingModelReport(
        cores=cores, threads=threads, gradient_bytes=grad_bytes, alpha_s=comm.alpha_s,
        beta_s_per_byte=comm.beta_s_per_byte, fitted=comm.fitted,
        allreduce=[{"workers": n, "bytes": m, "seconds": t} for (n, m), t in measured.items()],
        profile=dataclasses.asdict(profile), predictions=predictions)


def _launcher_profile(profile: StepProfile, runs: list[RunRecord],
                      backend: str) -> StepProfile | None:
    """The raw one-worker profile scaled by what the launcher itself costs at one worker (its
    measured N=1 step over the raw loop's at the same batch)."""
    ones = [r for r in runs if r.backend == backend and r.workers == 1 and r.label == backend
            and r.compute_s is not None]
    if not ones:
        return None
    step = statistics.median(r.data_s + r.compute_s + r.sync_s + r.optimizer_s for r in ones)
    k = step / profile.at(ones[0].batch_size_per_worker)
    return StepProfile(profile.batch, [x * k for x in profile.data_s],
                       [x * k for x in profile.compute_s], [x * k for x in profile.optimizer_s])


def _median_rate(runs: list[RunRecord], label: str, workers: int) -> float | None:
    rates = [r.samples_per_sec for r in runs
             if r.label == label and r.workers == workers and r.samples_per_sec]
    return statistics.median(rates) if rates else None
