"""Forecasts a sweep makes of itself: right after its N=1 point, from that point's steps, a raw
one-worker profile at every per-worker batch the sweep needs and all-reduces timed under load,
the scaling model (scaling_model.py) predicts every N of the sweep and every --predict N. The
forecasts are kept as made; once the N >= 2 points have run, each measurement is set beside
its forecast (`forecasts` in scaling.json, error = predicted / measured - 1). Nothing measured
at N >= 2 ever reaches the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from typing import TYPE_CHECKING

from raybench import calibrate
from raybench.backends import LaunchContext
from raybench.backends.ddp import allreduce_sweep
from raybench.backends.raw import RawBackend
from raybench.config import Config
from raybench.console import Console
from raybench.loop import LoopOptions, worker_threads
from raybench.models import count_parameters, flops_per_sample
from raybench.results import Forecast, RunRecord, ScalingModelReport, WindowOrder
from raybench.scaling_model import (
    CommModel,
    StepProfile,
    expected_max,
    predict,
    quantiles_of,
    with_measurement,
)

if TYPE_CHECKING:
    from raybench.sweep import Measure, Plan, ScaleSpec

PROFILE_S = 2.0  # measured seconds per profiled batch
ALLREDUCE_SIZES = (4 << 10, 256 << 10, 4 << 20)  # besides the gradient: for the ring fit


def wanted(spec: ScaleSpec, p: Plan) -> bool:
    """A sweep forecasts itself when it has an N=1 point, the data in memory (the raw profile
    and the all-reduce processes need it) and something to forecast."""
    return (not spec.no_model and 1 in spec.workers and p.memory is not None
            and (len(spec.workers) > 1 or bool(spec.predict)))


def profile_batch(backend: RawBackend, cfg: Config) -> tuple[float, float, float, list[float]]:
    """One worker (a resident raw process) at cfg's batch: mean data, compute and optimizer
    seconds per step and the quantiles of its work per step (seconds)."""
    resident = backend.start(cfg, LoopOptions(checkpoint=False, evaluate=False), "profile")
    try:
        warm = resident.measure(WindowOrder(50, warmup=True), timeout_s=600)[0]
        steps = max(20, math.ceil(PROFILE_S / max(warm.seconds / 50, 1e-6)))
        resident.measure(WindowOrder(steps), timeout_s=600)
        result = resident.stop()
    except BaseException:
        resident.abort()
        raise
    b = result.timing.step_breakdown
    return (b.data_s, b.compute_s, b.optimizer_s,
            [q / 1e3 for q in result.timing.work_ms_quantiles])


def one_worker_profile(p: Plan, batches: list[int], floor_s_per_sample: float,
                       backend: RawBackend) -> StepProfile:
    from raybench.sweep import point_config

    rows = []
    for b in batches:
        cfg = point_config(p.base, 1, None)
        cfg.train.batch_size = b
        rows.append(profile_batch(backend, cfg))
    return StepProfile(batch=batches, data_s=[r[0] for r in rows],
                       compute_s=[r[1] for r in rows], optimizer_s=[r[2] for r in rows],
                       work_quantiles=[r[3] for r in rows],
                       floor_s_per_sample=floor_s_per_sample)


def comm_under_load(spec: ScaleSpec, p: Plan, profile: StepProfile, grad_bytes: int,
                    out: Console) -> CommModel:
    """All-reduces among N processes, each computing for a step's work between them: the
    latency a rank sees when it is the last to arrive, with the cores busy as in training."""
    from raybench.sweep import global_batch

    glob = global_batch(spec, p.base)
    measured = {}
    for n in (n for n in spec.workers if n > 1):
        batch = glob // n if glob else p.base.train.batch_size
        busy = profile.at(batch)
        out.log(f"Scaling model: all-reduce among {n} processes, each busy {busy * 1e3:.2f} ms "
                "between them")
        sizes = sorted({grad_bytes, *ALLREDUCE_SIZES})
        iters = max(20, min(200, int(2.0 / max(busy, 1e-4))))
        for row in allreduce_sweep(n, sizes, iters=iters, busy_s=busy):
            measured[(n, row["bytes"])] = row["seconds"]
    return CommModel.fit(measured, alpha_s=spec.alpha_us * 1e-6 if spec.alpha_us else None,
                         beta_s_per_byte=1 / (spec.beta_gbps * 1e9) if spec.beta_gbps else None)


def make(spec: ScaleSpec, p: Plan, measures: list[Measure], runs: list[RunRecord],
         context: LaunchContext, out: Console,
         recalibrate: bool = False) -> tuple[ScalingModelReport, list[Forecast]]:
    """The forecasts, from the N=1 runs in `runs` and what this function measures itself."""
    from raybench.sweep import global_batch

    grad_bytes = 4 * count_parameters(p.model)
    glob = global_batch(spec, p.base)
    extra = [n for n in spec.predict if n not in spec.workers]
    ns = sorted(set(spec.workers) | set(extra))
    batches = sorted({glob // n if glob else p.base.train.batch_size for n in ns
                      if not glob or glob % n == 0})
    threads, cores = worker_threads(p.base), os.cpu_count() or 1
    flops = flops_per_sample(p.model, p.features, p.base.data.window) or 0.0
    peak = calibrate.calibrate(recalibrate=recalibrate)
    floor = flops / (peak["matmul_gflops_per_core"] * 1e9 * threads) if flops else 0.0
    out.log(f"Scaling model: one-worker profile at batch {', '.join(map(str, batches))}")
    raw = next((m.backend for m in measures if m.name == "raw"), None) or RawBackend(
        p.memory, context)
    profile = one_worker_profile(p, batches, floor, raw)
    comm = comm_under_load(spec, p, profile, grad_bytes, out)
    forecasts, factors = [], {}
    for backend in dict.fromkeys(m.name for m in measures if m.ingest == "memory"
                                 and not m.chaos and not m.without and not m.ingest_only):
        mine = launcher_profile(profile, runs, backend)
        if mine is None:
            continue
        factors[backend] = mine[1]
        for n in ns if backend == "raybench" else spec.workers:  # extrapolate raybench only
            if (backend == "raw" and n > 1) or (glob and glob % n):
                continue
            b = glob // n if glob else p.base.train.batch_size
            # a worker count not run is assumed to have its own cores (a cluster sized for it)
            forecasts.append(predict(backend, mine[0], comm, n, b, grad_bytes, threads,
                                     cores if n in spec.workers else n * threads,
                                     extrapolated=n not in spec.workers))
    report = ScalingModelReport(
        cores=cores, threads=threads, gradient_bytes=grad_bytes, alpha_s=comm.alpha_s,
        beta_s_per_byte=comm.beta_s_per_byte, fitted=comm.fitted,
        allreduce=[{"workers": n, "bytes": m, "seconds": t} for (n, m), t in comm.measured.items()],
        profile=dataclasses.asdict(profile), launcher_factor=factors, calibration=peak)
    return report, forecasts


def launcher_profile(profile: StepProfile, runs: list[RunRecord],
                     backend: str) -> tuple[StepProfile, float] | None:
    """The raw profile scaled by what the launcher costs at one worker (its N=1 mean work over
    raw's at the same batch), with the launcher's own N=1 distribution at that batch."""
    ones = [r for r in runs if r.label == backend and r.workers == 1 and r.work_ms_quantiles]
    if not ones:
        return None
    batch = ones[0].batch_size_per_worker
    own = [statistics.median(q[i] for q in (r.work_ms_quantiles for r in ones)) / 1e3
           for i in range(len(ones[0].work_ms_quantiles))]
    k = expected_max(own, 1) / profile.at(batch) if profile.at(batch) > 0 else 1.0
    scaled = profile.scaled(k)
    if batch in scaled.batch:
        scaled.work_quantiles[scaled.batch.index(batch)] = own
    return scaled, k


def check(forecasts: list[Forecast], runs: list[RunRecord]) -> None:
    """Set each measured point beside its kept forecast (the median over repeats)."""
    for f in forecasts:
        rates = [r.samples_per_sec for r in runs if r.label == f.backend
                 and r.workers == f.workers and r.samples_per_sec]
        with_measurement(f, statistics.median(rates) if rates else None)


def add_costs(forecasts: list[Forecast], per_worker_second: float) -> None:
    for f in forecasts:
        if f.predicted_samples_per_sec:
            f.cost_per_million_samples = (per_worker_second * f.workers * 1e6
                                          / f.predicted_samples_per_sec)


__all__ = ["add_costs", "check", "make", "quantiles_of", "wanted"]
