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

from raybench import calibrate, network_forecast, stats
from raybench.backends import LaunchContext
from raybench.backends.ddp import allreduce_sweep, loaded_step_sweep
from raybench.backends.raw import RawBackend
from raybench.console import Console
from raybench.interleave import MIN_WINDOW_STEPS, Contender, PointRun, Precision
from raybench.loop import LoopOptions, worker_threads
from raybench.models import count_parameters, flops_per_sample
from raybench.plan import Measure, Plan, ScaleSpec, global_batch, point_config
from raybench.results import (
    AllreduceMeasure,
    Forecast,
    MeasuredWindow,
    NetworkProbe,
    RunRecord,
    ScalingModelReport,
    WindowOrder,
)
from raybench.scaling_model import (
    CommModel,
    StepProfile,
    basis_warning,
    drifted_basis,
    expected_max,
    moved_point,
    normalised,
    point_warning,
    predict,
    quantiles_of,
    with_measurement,
    with_speed,
)

# The one-worker profile: short interleaved windows of a raw process per batch, a bounded time.
PROFILE = Precision(window_s=0.5, min_pairs=6, max_pairs=12, budget_s=90.0, warmup_steps=20,
                    max_outside_load=0.10)
ALLREDUCE_SIZES = (4 << 10, 256 << 10, 4 << 20)  # besides the gradient: for the ring fit
BESIDE_WINDOWS = 2  # raw windows just before and just after each probe


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
            measured[(n, row.bytes)] = row.seconds
    return CommModel.fit(measured, alpha_s=spec.alpha_us * 1e-6 if spec.alpha_us else None,
                         beta_s_per_byte=1 / (spec.beta_gbps * 1e9) if spec.beta_gbps else None)


def make(spec: ScaleSpec, p: Plan, measures: list[Measure], runs: list[RunRecord],
         context: LaunchContext, out: Console, recalibrate: bool = False,
         beside: RawBeside | None = None, network: NetworkProbe | None = None
         ) -> tuple[ScalingModelReport, list[Forecast]]:
    """The forecasts, from the N=1 runs in `runs` and what this function measures itself: at
    each N >= 2 of the sweep, N copies of the one-worker step running at once (the machine's
    contention), then in DDP lockstep, with `beside` (started: speed_reference) run just before
    and after; for a --predict N not run, a raw profile of its batch and the ring fitted to
    all-reduces (each worker with its own cores)."""

    link = network_forecast.link_of(network, spec.link_gbps, spec.link_latency_us)
    if link is not None:
        return make_on_network(spec, p, measures, runs, context, out, link, network)
    grad_bytes = 4 * count_parameters(p.model)
    glob = global_batch(spec, p.base)
    anchor = n1_batch(spec, p)
    extra = [n for n in spec.predict if n not in spec.workers and (not glob or glob % n == 0)]
    threads, cores = worker_threads(p.base), os.cpu_count() or 1
    peak = calibrate.calibrate(recalibrate=recalibrate)
    launchers = [b for b in dict.fromkeys(m.name for m in measures if m.ingest == "memory"
                                          and not m.chaos and not m.without
                                          and not m.ingest_only)]
    own = {b: launcher_work(runs, b) for b in launchers}
    loaded = loaded_steps(spec, p, anchor, glob, out, beside)
    forecasts = [measured_forecast(b, n, glob // n if glob else anchor, own[b], loaded)
                 for b in launchers if own[b] for n in spec.workers
                 if not (b == "raw" and n > 1) and (not glob or glob % n == 0)]
    profile, comm = StepProfile([anchor], [0.0], [1.0], [0.0]), CommModel()
    if extra and own.get("raybench"):
        mine_s = own["raybench"][0]
        profile, comm = extrapolation_inputs(spec, p, extra, anchor, glob, grad_bytes,
                                             context, measures, out, mine_s)
        mine = profile.scaled(mine_s)
        flops = flops_per_sample(p.model, p.features, p.base.data.window) or 0.0
        mine.floor_s_per_sample = flops / (peak["matmul_gflops_per_core"] * 1e9 * threads)
        forecasts += [predict("raybench", mine, comm, n, glob // n if glob else anchor,
                              grad_bytes, threads, n * threads, extrapolated=True)
                      for n in extra]
    report = ScalingModelReport(
        cores=cores, threads=threads, gradient_bytes=grad_bytes, alpha_s=comm.alpha_s,
        beta_s_per_byte=comm.beta_s_per_byte, fitted=comm.fitted,
        allreduce=[AllreduceMeasure(n, grad_bytes, r["allreduce_s"], "real steps")
                   for n, r in loaded.items() if r["allreduce_s"]]
        + [AllreduceMeasure(n, m, t, "busy loop") for (n, m), t in comm.measured.items()],
        profile=dataclasses.asdict(profile), calibration=peak,
        launcher_factor={b: w[0] for b, w in own.items() if w},
        probe={str(n): probe_summary(r) for n, r in loaded.items()},
        basis_ratios=basis_ratios(loaded), point_drift=point_drift(own.get("raw"), loaded))
    if drifted := drifted_basis(report.basis_ratios):
        out.warn(basis_warning(drifted))
    if moved := moved_point(report.point_drift):
        out.warn(point_warning(moved))
    return report, forecasts


def make_on_network(spec: ScaleSpec, p: Plan, measures: list[Measure], runs: list[RunRecord],
                    context: LaunchContext, out: Console, link: network_forecast.Link,
                    probe: NetworkProbe | None) -> tuple[ScalingModelReport, list[Forecast]]:
    """N nodes, one worker each, on the link measured by the probe or given: each launcher's
    own N=1 work (the raw profile for another per-worker batch), the slowest of N, plus what
    backward did not hide of DDP's bucketed all-reduce (network_forecast.py)."""
    glob, anchor = global_batch(spec, p.base), n1_batch(spec, p)
    counts = sorted({n for n in (*spec.workers, *spec.predict) if n > 1})
    batches = {n: glob // n if glob else anchor for n in counts}
    needed = sorted({anchor, *batches.values()})
    launchers = [b for b in dict.fromkeys(m.name for m in measures if m.ingest == "memory"
                                          and not m.chaos and not m.without
                                          and not m.ingest_only)]
    own = {b: launcher_work(runs, b) for b in launchers}
    profile = None
    if len(needed) > 1:  # strong scaling: each N trains another per-worker batch
        raw = next((m.backend for m in measures if m.name == "raw"), None) or RawBackend(
            p.memory, context)
        profile = one_worker_profile(p, needed, anchor, raw, out)
    shape = (p.features, p.base.data.window, p.base.data.task)
    share = {b: network_forecast.backward_share(p.base.model, shape, b) for b in needed}
    buckets = network_forecast.gradient_buckets(p.model)
    out.log(f"Scaling model on a network: {link.text()}; {len(buckets)} DDP bucket(s) of "
            f"{', '.join(f'{b / 2**20:.2f}' for b in buckets)} MiB; backward "
            + ", ".join(f"{v:.0%} of forward+backward at batch {b}" for b, v in share.items()))
    # measured on the probe's ranks; an N the probe did not place assumes nodes of their own
    slowdowns = network_forecast.node_slowdowns(probe)
    forecasts = [measured_forecast(b, 1, anchor, own[b], {}) for b in launchers if own[b]]
    for b in launchers:
        if not own[b] or b == "raw":
            continue
        for n in counts:
            work, compute = _work_at(runs, b, own[b], profile, anchor, batches[n])
            forecasts.append(network_forecast.network_forecast(
                b, n, batches[n], work, compute, share[batches[n]], buckets, link,
                extrapolated=n not in spec.workers or link.source == "assumed",
                slowdown=slowdowns.get(n, 1.0)))
    notes = [network_forecast.cpu_bound(probe), network_forecast.cores_bind(slowdowns)]
    report = ScalingModelReport(
        cores=os.cpu_count() or 1, threads=worker_threads(p.base),
        gradient_bytes=4 * count_parameters(p.model), alpha_s=link.alpha_s,
        beta_s_per_byte=link.beta_s_per_byte, fitted=link.source == "measured", allreduce=[],
        profile=dataclasses.asdict(profile) if profile else {},
        launcher_factor={b: w[0] for b, w in own.items() if w}, link=link.text(),
        buckets=buckets, backward_share={str(b): v for b, v in share.items()},
        link_note="; ".join(x for x in notes if x) or None)
    for note in notes:
        if note:
            out.warn(note[0].upper() + note[1:])
    return report, forecasts


def _work_at(runs: list[RunRecord], backend: str, own: tuple[float, list[float]],
             profile: StepProfile | None, anchor: int, batch: int) -> tuple[list[float], float]:
    """A launcher's work per step at a per-worker batch (quantiles, seconds) and the share of
    it forward+backward take: its own N=1 point, scaled by the raw profile for another batch."""
    mean1, shape1 = own
    if profile is None or batch == anchor:
        one = next(r for r in runs if r.label == backend and r.workers == 1)
        return [x * mean1 for x in shape1], (one.compute_share or 0.0)
    mine = profile.scaled(mean1 / profile.at(anchor))
    i = profile.batch.index(batch)
    return mine.distribution(batch), profile.compute_s[i] / profile.total()[i]


class RawBeside:
    """The raw launcher's N=1 loop, kept resident from the probes to the end of the sweep: the
    machine's speed as one fixed workload sees it. A few windows just before and just after
    each probe say when the probes ran at another speed than the N=1 point; one window in every
    round of each N >= 2 point (interleave.PointRun's reference) gives the speed the point ran
    at, so that each forecast is also checked at the speed it was made at (forecast.check).
    The forecast itself scales each launcher's step at the N=1 point: on five sweeps' stored
    probes (2026-11-28) the N >= 2 points ran nearer the N=1 point's speed than the probes'
    (mean |error| 12.9% with the point's step as the base, 17.0% with raw's beside the probes;
    docs/scaling.md)."""

    def __init__(self, backend: RawBackend, cfg, batch: int) -> None:
        cfg.train.batch_size = batch
        self.backend, self.cfg = backend, cfg
        self.resident, self.steps = None, MIN_WINDOW_STEPS

    def __enter__(self) -> RawBeside:
        options = LoopOptions(checkpoint=False, evaluate=False)
        self.resident = self.backend.start(self.cfg, options, "raw_beside")
        first = self._window(PROFILE.warmup_steps, warmup=True)
        self.steps = max(MIN_WINDOW_STEPS, math.ceil(PROFILE.window_s / first))
        self._window(self.steps, warmup=True)  # settled before the first counted window
        return self

    def __exit__(self, *exc: object) -> None:
        if self.resident is not None:
            self.resident.abort()

    def _window(self, steps: int, warmup: bool = False) -> float:
        report = self.resident.measure(WindowOrder(steps, warmup=warmup), timeout_s=600.0)[0]
        return report.seconds / max(report.steps, 1)

    def steps_s(self) -> list[float]:
        """Seconds a step in each of a few windows, now."""
        return [self.step_s() for _ in range(BESIDE_WINDOWS)]

    def step_s(self) -> float:
        """Seconds a step in one window, now."""
        return self._window(self.steps)


def speed_reference(spec: ScaleSpec, p: Plan, measures: list[Measure]) -> RawBeside | None:
    """Raw's N=1 loop at the N=1 point's batch, to be kept resident through the sweep; None
    when the sweep does not measure raw (nothing to compare its speed with)."""
    raw = next((m.backend for m in measures if m.name == "raw"), None)
    if raw is None:
        return None
    return RawBeside(raw, point_config(p.base, 1, None), n1_batch(spec, p))


def n1_batch(spec: ScaleSpec, p: Plan) -> int:
    """The N=1 point's batch: the global batch (strong scaling) or the per-worker one."""
    return global_batch(spec, p.base) or p.base.train.batch_size


def loaded_steps(spec: ScaleSpec, p: Plan, anchor: int, glob: int | None,
                 out: Console, beside: RawBeside | None = None) -> dict[int, dict]:
    """At each N >= 2 of the sweep: N processes running the one-worker step at the batch N
    trains with, one alone at the N=1 batch, all at once, then in DDP lockstep
    (backends.ddp.loaded_step_sweep); with `beside`, the raw loop's N=1 step just before and
    just after (`raw_s`)."""

    found = {}
    for n in spec.workers:
        b = glob // n if glob else anchor
        if n == 1 or (glob and glob % n):
            continue  # N=1 is forecast from its own point: nothing to probe
        out.log(f"Scaling model: {n} processes running the batch-{b} step, one alone, at once, "
                "then in DDP lockstep")
        before = beside.steps_s() if beside else []
        found[n] = loaded_step_sweep(n, point_config(p.base, 1, None), (
            p.features, p.base.data.window, p.base.data.task), b, solo_batch=anchor)
        found[n]["raw_s"] = before + (beside.steps_s() if beside else [])
    return found


def launcher_work(runs: list[RunRecord], backend: str) -> tuple[float, list[float]] | None:
    """A launcher's mean work per step at its N=1 point (the whole step: nothing synchronises;
    from its measured rate) and the shape of its distribution."""
    ones = [r for r in runs if r.label == backend and r.workers == 1 and r.samples_per_sec]
    if not ones:
        return None
    mean = statistics.median(r.batch_size_per_worker / r.samples_per_sec for r in ones)
    shape = next((normalised(r.work_ms_quantiles) for r in ones if r.work_ms_quantiles), [1.0])
    return mean, shape


def basis_ratios(loaded: dict[int, dict]) -> dict[str, float]:
    """Per probe (by N), the raw loop's N=1 step just before and after it over the probe's
    own step alone at the same batch (rank 0's, at its start): the two measure one speed of
    the machine unless a spell met one of them."""
    return {str(n): statistics.fmean(row["raw_s"]) / statistics.fmean(row["solo_s"])
            for n, row in loaded.items() if row.get("solo_s") and row.get("raw_s")}


def point_drift(raw: tuple[float, list[float]] | None,
                loaded: dict[int, dict]) -> dict[str, float]:
    """Per probe (by N), the raw loop's N=1 step at the N=1 point over the same step beside
    the probe: far from 1 the N=1 point ran at another speed of the machine than the rest."""
    if raw is None:
        return {}
    return {str(n): raw[0] / statistics.fmean(row["raw_s"])
            for n, row in loaded.items() if row.get("raw_s")}


def probe_summary(row: dict) -> dict:
    """What the loaded-step probe measured at one N, in ms (the forecast's inputs, kept)."""
    def mean_ms(key: str) -> float | None:
        return statistics.fmean(row[key]) * 1e3 if row.get(key) else None

    return {"solo_ms": mean_ms("solo_s"), "together_ms": mean_ms("work_s"),
            "lockstep_work_ms": mean_ms("synced_work_s"),
            "lockstep_sync_ms": mean_ms("synced_allreduce_s"),
            "allreduce_ms": row["allreduce_s"] * 1e3 if row.get("allreduce_s") else None,
            "lockstep_samples": len(row.get("synced_work_s") or []),
            "raw_ms": mean_ms("raw_s")}


def measured_forecast(backend: str, n: int, batch: int, own: tuple[float, list[float]],
                      loaded: dict[int, dict]) -> Forecast:
    """The launcher's N=1 work, times how much slower the one-worker step ran in N processes
    training in lockstep (at N's batch) than one of them alone at the start of the same probe
    (at N=1's), plus a rank's sync in those steps: the communication and the wait for the
    last rank, as measured. The wait is measured rather than drawn as the expected maximum of N
    work times: on shared cores a rank that blocks in an all-reduce waits for the scheduler
    to wake it too, which order statistics of compute times do not see (docs/scaling.md)."""
    mean1, shape1 = own
    if n == 1:
        work = expected_max([x * mean1 for x in shape1], 1)
        return Forecast(backend=backend, workers=1, batch_size_per_worker=batch,
                        predicted_samples_per_sec=batch / work, step_ms=work * 1e3,
                        work_ms=work * 1e3, wait_ms=0.0, allreduce_ms=0.0, slowdown=1.0,
                        sync_share=0.0)
    solo = statistics.fmean(loaded[n]["solo_s"])
    at_n = loaded[n]["synced_work_s"]
    work = mean1 / solo * statistics.fmean(at_n)
    sync = statistics.fmean(loaded[n]["synced_allreduce_s"])
    comm = min(loaded[n]["allreduce_s"] or 0.0, sync)
    step = work + sync
    return Forecast(backend=backend, workers=n, batch_size_per_worker=batch,
                    predicted_samples_per_sec=n * batch / step, step_ms=step * 1e3,
                    work_ms=work * 1e3, wait_ms=(sync - comm) * 1e3, allreduce_ms=comm * 1e3,
                    slowdown=statistics.fmean(at_n) / solo, sync_share=sync / step)


def extrapolation_inputs(spec: ScaleSpec, p: Plan, extra: list[int], anchor: int,
                         glob: int | None, grad_bytes: int, context: LaunchContext,
                         measures: list[Measure], out: Console,
                         anchor_s: float) -> tuple[StepProfile, CommModel]:
    """For N not run: the raw profile of every batch involved (relative to the anchor batch,
    whose mean work is anchor_s) and all-reduces at the sweep's N, at several sizes, for the
    ring fit."""
    batches = sorted({anchor} | {glob // n if glob else anchor for n in extra})
    out.log(f"Scaling model: one-worker profile at batch {', '.join(map(str, batches))}, "
            "interleaved, for the N not run")
    raw = next((m.backend for m in measures if m.name == "raw"), None) or RawBackend(
        p.memory, context)
    profile = one_worker_profile(p, batches, anchor, raw, out)
    return profile, comm_under_load(spec, p, profile.scaled(anchor_s), grad_bytes, out)


def check(forecasts: list[Forecast], runs: list[RunRecord],
          reference_s: dict[int, list[float]] | None = None,
          windows: list[MeasuredWindow] = ()) -> None:
    """Set each measured point beside its kept forecast (the median over repeats), and where
    raw's N=1 step was measured in the point's rounds (`reference_s`, by N), the speed the
    point ran at against the N=1 point's (raw's step there over raw's step then); from the
    windows, what the point measured for the forecast's parts and the ranks' CPU a step
    against the N=1 point's."""
    raw = launcher_work(runs, "raw")
    for f in forecasts:
        rates = [r.samples_per_sec for r in runs if r.label == f.backend
                 and r.workers == f.workers and r.samples_per_sec]
        with_measurement(f, statistics.median(rates) if rates else None)
        then = (reference_s or {}).get(f.workers)
        if raw and then and f.workers > 1:
            with_speed(f, raw[0] / statistics.median(then))
        if not f.extrapolated:
            own = kept_windows(windows, f.backend, f.workers)
            f.measured_work_ms, f.measured_sync_ms = measured_parts(own)
            if f.workers > 1:
                f.cpu_per_step = cpu_per_step_ratio(
                    own, kept_windows(windows, f.backend, 1), f.workers)


def kept_windows(windows: list[MeasuredWindow], launcher: str,
                 n: int) -> list[MeasuredWindow]:
    """A launcher's windows at N that the comparisons kept."""
    return [w for w in windows if w.launcher == launcher and w.workers == n and not w.excluded]


def measured_parts(own: list[MeasuredWindow]) -> tuple[float | None, float | None]:
    """A point's step outside sync and in sync, ms: medians of its windows."""
    phases = [w.phase_ms for w in own if w.phase_ms]
    if not phases:
        return None, None
    work = statistics.median(sum(v for k, v in ms.items() if k != "sync") for ms in phases)
    return work, statistics.median(ms.get("sync", 0.0) for ms in phases)


def cpu_per_step_ratio(at_n: list[MeasuredWindow], at_1: list[MeasuredWindow],
                       n: int) -> float | None:
    """CPU a step per rank at N over at N=1, each the median of its windows (None where
    either point has no CPU figure)."""
    def per_rank(own: list[MeasuredWindow], workers: int) -> float | None:
        each = [w.cpu_s / w.steps / workers for w in own if w.steps and w.cpu_s]
        return statistics.median(each) if each else None

    mine, one = per_rank(at_n, n), per_rank(at_1, 1)
    return mine / one if mine and one else None


def add_costs(forecasts: list[Forecast], per_worker_second: float) -> None:
    for f in forecasts:
        if f.predicted_samples_per_sec:
            f.cost_per_million_samples = (per_worker_second * f.workers * 1e6
                                          / f.predicted_samples_per_sec)


__all__ = ["add_costs", "check", "make", "quantiles_of", "speed_reference", "wanted"]
