"""Forecasts a sweep makes of itself: right after its N=1 point, from that point's steps, a raw
one-worker profile at every per-worker batch the sweep needs and all-reduces timed under load,
the scaling model (scaling_model.py) predicts every N of the sweep and every --predict N. The
forecasts are kept as made; once the N >= 2 points have run, each measurement is set beside
its forecast (`forecasts` in scaling.json, error = predicted / measured - 1). Nothing measured
at N >= 2 ever reaches the model.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import TYPE_CHECKING

from raybench import calibrate, stats
from raybench.backends import LaunchContext
from raybench.backends.ddp import allreduce_sweep
from raybench.backends.raw import RawBackend
from raybench.console import Console
from raybench.interleave import Contender, PointRun, Precision
from raybench.loop import LoopOptions, worker_threads
from raybench.models import count_parameters, flops_per_sample
from raybench.results import Forecast, RunRecord, ScalingModelReport
from raybench.scaling_model import (
    CommModel,
    StepProfile,
    normalised,
    predict,
    quantiles_of,
    with_measurement,
)

if TYPE_CHECKING:
    from raybench.sweep import Measure, Plan, ScaleSpec

# The one-worker profile: short interleaved windows of a raw process per batch, a bounded time.
PROFILE = Precision(window_s=0.5, min_pairs=6, max_pairs=12, budget_s=90.0, warmup_steps=20,
                    max_outside_load=0.10)
ALLREDUCE_SIZES = (4 << 10, 256 << 10, 4 << 20)  # besides the gradient: for the ring fit


def wanted(spec: ScaleSpec, p: Plan) -> bool:
    """A sweep forecasts itself when it has an N=1 point, the data in memory (the raw profile
    and the all-reduce processes need it) and something to forecast."""
    return (not spec.no_model and 1 in spec.workers and p.memory is not None
            and (len(spec.workers) > 1 or bool(spec.predict)))


def one_worker_profile(p: Plan, batches: list[int], anchor: int, backend: RawBackend,
                       out: Console) -> StepProfile:
    """One raw worker at each per-worker batch, measured in interleaved windows (a resident
    process per batch, rounds in alternating order) so that the machine's drift cancels from
    their ratios: mean work per step at each batch relative to the anchor batch (the N=1
    point's), and the shape of its distribution. Absolute times come from the N=1 point."""
    from raybench.sweep import point_config

    contenders = []
    for b in batches:
        cfg = point_config(p.base, 1, None)
        cfg.train.batch_size = b
        contenders.append(Contender(f"raw b={b}", backend, cfg))
    run = PointRun(contenders, PROFILE, 1, 1, out.log)
    measured = run.measure(LoopOptions(checkpoint=False, evaluate=False), "profile")
    ratio = {b: _paired_step_ratio(measured.windows, f"raw b={b}", f"raw b={anchor}")
             for b in batches}
    rows = [measured.results[f"raw b={b}"].timing for b in batches]
    means = [sum((t.step_breakdown.data_s, t.step_breakdown.compute_s,
                  t.step_breakdown.optimizer_s)) for t in rows]
    # the phase split of each batch's mean, at the anchor-relative mean (seconds per unit)
    return StepProfile(
        batch=batches,
        data_s=[t.step_breakdown.data_s / m * ratio[b] for t, m, b in zip(rows, means, batches,
                                                                          strict=True)],
        compute_s=[t.step_breakdown.compute_s / m * ratio[b]
                   for t, m, b in zip(rows, means, batches, strict=True)],
        optimizer_s=[t.step_breakdown.optimizer_s / m * ratio[b]
                     for t, m, b in zip(rows, means, batches, strict=True)],
        work_quantiles=[normalised([q / 1e3 for q in t.work_ms_quantiles]) for t in rows])


def _paired_step_ratio(windows: list, label: str, anchor: str) -> float:
    """Step time at `label` over step time at `anchor`, from windows of the same rounds."""
    if label == anchor:
        return 1.0
    by_round: dict[int, dict[str, float]] = {}
    for w in windows:
        if not w.excluded:
            by_round.setdefault(w.round, {})[w.launcher] = w.seconds / max(w.steps, 1)
    ratios = [r[label] / r[anchor] for r in by_round.values() if label in r and anchor in r]
    return stats.log_mean_interval(ratios)[0] if ratios else 1.0


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
    anchor = glob if glob else p.base.train.batch_size  # the N=1 point's batch
    batches = sorted({glob // n if glob else anchor for n in ns if not glob or glob % n == 0})
    threads, cores = worker_threads(p.base), os.cpu_count() or 1
    flops = flops_per_sample(p.model, p.features, p.base.data.window) or 0.0
    peak = calibrate.calibrate(recalibrate=recalibrate)
    out.log(f"Scaling model: one-worker profile at batch {', '.join(map(str, batches))}, "
            "interleaved")
    raw = next((m.backend for m in measures if m.name == "raw"), None) or RawBackend(
        p.memory, context)
    profile = one_worker_profile(p, batches, anchor, raw, out)
    forecasts, factors = [], {}
    comm = None
    for backend in dict.fromkeys(m.name for m in measures if m.ingest == "memory"
                                 and not m.chaos and not m.without and not m.ingest_only):
        mine = launcher_profile(profile, runs, backend, anchor)
        if mine is None:
            continue
        mine.floor_s_per_sample = flops / (peak["matmul_gflops_per_core"] * 1e9 * threads)
        factors[backend] = mine.at(anchor)
        if comm is None:
            comm = comm_under_load(spec, p, mine, grad_bytes, out)
        for n in ns if backend == "raybench" else spec.workers:  # extrapolate raybench only
            if (backend == "raw" and n > 1) or (glob and glob % n):
                continue
            b = glob // n if glob else anchor
            # a worker count not run is assumed to have its own cores (a cluster sized for it)
            forecasts.append(predict(backend, mine, comm, n, b, grad_bytes, threads,
                                     cores if n in spec.workers else n * threads,
                                     extrapolated=n not in spec.workers))
    comm = comm or CommModel()
    report = ScalingModelReport(
        cores=cores, threads=threads, gradient_bytes=grad_bytes, alpha_s=comm.alpha_s,
        beta_s_per_byte=comm.beta_s_per_byte, fitted=comm.fitted,
        allreduce=[{"workers": n, "bytes": m, "seconds": t} for (n, m), t in comm.measured.items()],
        profile=dataclasses.asdict(profile), launcher_factor=factors, calibration=peak)
    return report, forecasts


def launcher_profile(profile: StepProfile, runs: list[RunRecord], backend: str,
                     anchor: int) -> StepProfile | None:
    """A launcher's work per step at every profiled batch: its own N=1 mean work (the N=1
    point, measured precisely) times the raw profile's ratio at each batch, with its own N=1
    distribution's shape at the anchor batch and the profile's shapes elsewhere."""
    ones = [r for r in runs if r.label == backend and r.workers == 1 and r.samples_per_sec]
    if not ones:
        return None
    # at N=1 nothing synchronises: the work per step is the whole step, from the rate
    mean = statistics.median(r.batch_size_per_worker / r.samples_per_sec for r in ones)
    k = mean / profile.at(anchor)
    mine = profile.scaled(k)
    own = [r.work_ms_quantiles for r in ones if r.work_ms_quantiles]
    if own and anchor in mine.batch:
        mine.work_quantiles[mine.batch.index(anchor)] = normalised(own[0])
    return mine


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
