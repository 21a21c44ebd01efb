"""A scaling sweep from one typed request (`ScaleSpec`): plan it (plan.py: data, model, points,
checked before Ray starts), measure every point, forecast from N=1, write the report.

Two ways to measure a throughput point:
  resident  (default) every launcher of the point started once, kept warm, measured in
            interleaved windows until each ratio is as precise as asked (interleave.py)
  restart   every repeat starts every launcher again and measures one window per start; the
            only way for runs in whole epochs (--target, --chaos)
`--repeats` repeats either protocol with fresh processes: what start-up costs, and how far
two independent starts of one point disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from raybench import calibrate, environment, forecast, network_forecast, probes, scaling_report
from raybench.artifacts import Output, check_writable
from raybench.backends import SINGLE_WORKER, LaunchContext, ray_network
from raybench.backends.ray_cluster import REPORT_POLL_S, place_workers, release, start_ray
from raybench.backends.ray_train import RAY_TRAIN_SWITCHES, startup_floor
from raybench.config import Config
from raybench.console import Console, recovery_line
from raybench.errors import RunFailed, UserError, cause_line
from raybench.interleave import Contender, PointFailed, PointRun, planned_pairs
from raybench.loop import LoopOptions
from raybench.models import flops_per_sample
from raybench.plan import (
    Measure,
    Plan,
    ScaleSpec,
    measurements,
    plan,
    point_config,
    with_ingest,
)
from raybench.report.sections import network_table, printed
from raybench.results import (
    Comparison,
    Forecast,
    MeasuredWindow,
    NetworkProbe,
    RunRecord,
    RunResult,
    ScalingDoc,
    ScalingModelReport,
    StartupPoint,
)
from raybench.runlock import RunLock
from raybench.targets import Target

# ------------------------------------------------------------------ run

RAY_LAUNCHERS = ("raybench", "ddp-ray")  # launchers whose workers Ray places and holds


def run_sweep(spec: ScaleSpec, base: Config) -> ScalingDoc:
    out = Console(quiet=spec.quiet)
    output = Output(spec.out or time.strftime("results/scale_%Y%m%d_%H%M%S"))
    if output.has("scaling.json"):
        raise UserError(f"{output.where} already holds a scaling report; pick another --out")
    p = plan(spec, base, out)  # the user's mistakes, before anything is written
    lock = claim(output)  # before Ray starts: a second sweep into it is refused
    try:
        return measure(spec, p, output, out)
    finally:
        if lock is not None:
            lock.release()


def claim(output: Output) -> RunLock | None:
    """A local --out must be writable before Ray starts (a read-only or full one used to fail
    after the whole sweep), and one sweep owns it at a time (as a run owns its directory)."""
    if output.uri:
        return None
    check_writable(output.local, "--out")
    lock, _ = RunLock.acquire(output.local)
    return lock


def measure(spec: ScaleSpec, p: Plan, output: Output, out: Console) -> ScalingDoc:
    """Start Ray where a launcher needs it, run every point, write the report; a sweep stopped
    by a signal or a failed launcher keeps what it had measured, marked so."""
    handle = None
    if set(RAY_LAUNCHERS) & set(spec.backends) or spec.probe_network:
        # A throughput window reports once, at its end: keep Ray's own 2 s controller poll
        # (faster polling cost steps 4-6% with all cores busy). Runs in whole epochs (--target,
        # --chaos) report every epoch and each report() waits for the next poll: up to 2 s an
        # epoch that would count as time to target and as lost goodput, so they poll fast.
        largest = p.points[-1][1]
        handle = start_ray(largest, out.log, verbose=spec.verbose,
                           report_poll_s=REPORT_POLL_S if spec.whole_epochs else None,
                           extra_cpus=ray_cpus(spec, p, largest))
    env = environment.collect()
    scratch = Path(tempfile.mkdtemp(prefix="raybench-scale-"))
    context = LaunchContext(scratch_dir=scratch, storage_path=output.storage("ray_train"),
                            ray=handle, allreduce_iters=spec.allreduce_iters)
    measures = measurements(spec, p, context)
    sweep = Sweep(spec, p, measures, context, out)
    try:
        if handle is not None and sweep.resident:
            check_resident_capacity(p, measures)
        if spec.probe_network:
            sweep.network = network_probe(p, out)
        sweep.run()
    except KeyboardInterrupt:
        if sweep.runs:  # what was measured stays, marked as a part of the sweep
            write(spec, output.local, env, p, sweep, out, status="interrupted")
            out.summary(f"Interrupted: {len(sweep.runs)} run(s) measured, saved as a partial "
                        f"sweep (status interrupted) in {output.publish()}")
        raise
    except PointFailed as failed:
        write(spec, output.local, env, p, sweep, out, status="failed")
        raise RunFailed(f"{failed}; the {len(sweep.windows)} window(s) and {len(sweep.runs)} "
                        f"run(s) measured until then are in {output.publish()} (status "
                        "failed)") from None
    finally:
        for m in measures:
            m.backend.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if (why := nothing_measured(sweep)) is not None:
        write(spec, output.local, env, p, sweep, out, status="failed")
        raise RunFailed(f"{why}; the sweep is kept as failed in {output.publish()}")
    doc = write(spec, output.local, env, p, sweep, out)
    out.summary(f"Saved → {output.publish()}")
    return doc


def nothing_measured(sweep: Sweep) -> str | None:
    """Why the sweep measured nothing it could report (no comparison with an interval, or no
    throughput at all), or None. Such a sweep must not pass for a measurement."""
    if sweep.resident and sweep.comparisons:
        if any(c.ci95 for c in sweep.comparisons):
            return None
        c = sweep.comparisons[0]
        return (f"no comparison was measured: {c.numerator}/{c.denominator} at N={c.workers} "
                f"had {c.note or f'{c.pairs} pair(s)'}")
    if any(r.samples_per_sec or r.target for r in sweep.runs):
        return None
    return "no throughput was measured: every window was excluded or none ran"


def network_probe(p: Plan, out: Console) -> NetworkProbe:
    """The network between the largest point's ranks (at least 2), placed as its workers,
    before any point holds resources; then among each smaller N >= 2 of the sweep, up to the
    model's largest DDP bucket (what a forecast at that N all-reduces): a ring scaled from
    the largest N's probe over-stated a 2-rank all-reduce on the emulated cluster."""
    largest = max(2, p.points[-1][0])
    shape = (p.features, p.base.data.window, p.base.data.task)
    buckets = network_forecast.gradient_buckets(p.model)
    probe = _probe_among(point_config(p.points[-1][1], largest, None), ray_network.SIZES,
                         shape, buckets, out)
    cap = max(buckets, default=0)
    sizes = [s for s in ray_network.SIZES if s < cap] + [
        next((s for s in ray_network.SIZES if s >= cap), ray_network.SIZES[-1])]
    probe.at_other_n = [_probe_among(cfg, sizes, shape, buckets, out) for n, cfg in p.points
                        if 2 <= n < largest]
    return probe


def _probe_among(cfg: Config, sizes: tuple[int, ...] | list[int], shape: tuple[int, int, str],
                 buckets: list[int], out: Console) -> NetworkProbe:
    """The probe among cfg's ranks; on them, the model's step alone and all at once (the
    forecast's work term where nodes share what they compute on: an emulated cluster's
    share this machine's cores), and each DDP bucket all-reduced right after a step (its
    ring where a node's CPU share is spent by the step)."""
    out.log(f"Network probe: gloo all-reduces among {cfg.scaling.workers} ranks placed "
            f"{cfg.scaling.placement_strategy}, {sizes[0] // 1024} KiB to "
            f"{sizes[-1] / 2**20:g} MiB; the step alone and on every rank at once")
    work = ray_network.WorkOrder(cfg.to_dict(), shape, cfg.train.batch_size, tuple(buckets))
    probe = ray_network.probe(cfg, sizes, work=work)
    for line in network_table(probe).text().splitlines()[3:]:
        out.log("  " + line)
    return probe


def ray_cpus(spec: ScaleSpec, p: Plan, largest: Config) -> int:
    """Logical CPUs a local Ray needs beyond the largest point's workers: resident launchers
    of one point hold their workers at once (the idle ones use no CPU, but Ray counts their
    reservations), and Ray Data's read tasks need room besides the training workers."""
    extra = 1 if p.stream is not None else 0
    if spec.protocol != "resident" or spec.whole_epochs:
        return extra
    # measured together: the Ray launchers of a ratio (an ingest's ceiling runs alone later)
    held = len([b for b in spec.backends if b in ("raybench", "ddp-ray")])
    if "raybench" in spec.backends:
        held += len(spec.ingest) - 1 + (len(RAY_TRAIN_SWITCHES) if spec.ray_train_switches
                                        else 0)
    return extra + (held - 1) * int(largest.scaling.workers * largest.scaling.cpus_per_worker
                                    + 0.999)


class Sweep:
    """Every (repeat, point) of a sweep, in one of the two protocols."""

    def __init__(self, spec: ScaleSpec, p: Plan, measures: list[Measure],
                 context: LaunchContext, out: Console) -> None:
        self.spec, self.p, self.measures, self.context, self.out = spec, p, measures, context, out
        self.flops = flops_per_sample(p.model, p.features, p.base.data.window)
        self.peak = calibrate.calibrate(recalibrate=spec.recalibrate) if self.flops else None
        self.runs: list[RunRecord] = []
        self.startup: list[dict] = []
        self.comparisons: list[Comparison] = []
        self.windows: list[MeasuredWindow] = []
        self.model: ScalingModelReport | None = None
        self.forecasts: list[Forecast] = []
        self.network: NetworkProbe | None = None  # --probe-network
        # raw's N=1 loop, resident from the forecast on: the machine's speed at every N >= 2
        self.beside: forecast.RawBeside | None = None
        self.reference_s: dict[int, list[float]] = {}

    @property
    def resident(self) -> bool:
        return self.spec.protocol == "resident" and not self.spec.whole_epochs

    def run(self) -> None:
        """Repeats outermost, then points, so a drifting machine spreads over every point."""
        with contextlib.ExitStack() as held:
            held.callback(self.conclude)  # also for a sweep cut short: what ran is checked
            for repeat in range(1, self.spec.repeats + 1):
                for n, cfg in self.p.points:
                    self._point(n, cfg, repeat)
                    if n == 1 and repeat == 1 and forecast.wanted(self.spec, self.p):
                        self._forecast(held)

    def conclude(self) -> None:
        """Each kept forecast beside what was measured, the speed references, the costs."""
        forecast.check(self.forecasts, self.runs, self.reference_s, self.windows)
        if self.model is not None:
            self.model.reference_ms = {str(n): [x * 1e3 for x in steps]
                                       for n, steps in self.reference_s.items()}
        forecast.add_costs(self.forecasts, self.spec.cost_per_worker_second)

    def _point(self, n: int, cfg: Config, repeat: int) -> None:
        floor = self.spec.startup_floor and any(m.name == "raybench" for m in self.measures)
        # The second start of a point finds Ray's worker processes' files and imports warm:
        # the floor goes first in odd repeats and last in even ones, so neither is favoured.
        if floor and repeat % 2 == 1:
            self._floor(n, cfg, repeat)
        at_n = [m for m in self.measures if m.name not in SINGLE_WORKER or n == 1]
        if self.resident:
            self._resident_point(n, cfg, at_n, repeat)
        else:
            for m in at_n:
                self._restart_run(m, n, cfg, repeat)
        if floor and repeat % 2 == 0:
            self._floor(n, cfg, repeat)

    def _forecast(self, held: contextlib.ExitStack) -> None:
        """Before any N >= 2 point runs: the forecasts are made blind and kept, and raw's N=1
        loop stays resident to measure the machine's speed at every later point."""
        self.beside = forecast.speed_reference(self.spec, self.p, self.measures)
        if self.beside is not None:
            held.enter_context(self.beside)
        self.model, self.forecasts = forecast.make(
            self.spec, self.p, self.measures, self.runs, self.context, self.out,
            self.spec.recalibrate, self.beside, self.network)

    def _reference(self, n: int, labels: list[str]) -> forecast.RawBeside | None:
        """The speed reference, where a launcher measured at N has a forecast to check."""
        forecast_at_n = {f.backend for f in self.forecasts if f.workers == n}
        return self.beside if n > 1 and forecast_at_n & set(labels) else None

    def _floor(self, n: int, cfg: Config, repeat: int) -> None:
        floor = startup_floor(cfg, storage_path=self.context.storage_path,
                              name=f"floor_n{n}_r{repeat}")
        self.startup.append({"workers": n, "repeat": repeat, "floor_s": floor})
        self.out.log(f"repeat {repeat} floor    N={n}: first line of an empty loop "
                     f"after {floor:.1f}s")

    def _restart_run(self, m: Measure, n: int, cfg: Config, repeat: int) -> None:
        if beside := self._reference(n, [m.label]):  # the machine's speed before and after
            self.reference_s.setdefault(n, []).append(beside.step_s())
        t0 = time.time()
        options = dataclasses.replace(run_options(self.spec, self.p.target,
                                                  self.context.storage_path), launch_time=t0)
        try:
            result = run_one(m, cfg, options, f"n{n}_r{repeat}_{int(t0 * 1000)}")
        except (UserError, RunFailed):
            raise
        except Exception as exc:  # noqa: BLE001 (a launcher's failure ends the sweep, named)
            raise PointFailed(m.label, n, cause_line(exc)) from None
        self._record(m, cfg, repeat, result, time.time() - t0)
        if beside:
            self.reference_s[n].append(beside.step_s())

    def _resident_point(self, n: int, cfg: Config, at_n: list[Measure], repeat: int) -> None:
        for group in resident_groups(at_n):
            self._resident_group(n, cfg, group, repeat)

    def _resident_group(self, n: int, cfg: Config, group: list[Measure], repeat: int) -> None:
        self.out.log(f"repeat {repeat} N={n}: starting {', '.join(m.label for m in group)}")
        contenders = [Contender(m.label, m.backend, with_ingest(cfg, m.ingest), m.ingest_only,
                                env=m.env) for m in group]
        options = LoopOptions(checkpoint=False, evaluate=False)
        beside = self._reference(n, [m.label for m in group])
        run = PointRun(contenders, self.spec.precision, repeat, n, self.out.log,
                       beside.step_s if beside else None)
        try:
            point = run.measure(options, f"n{n}_r{repeat}_{int(time.time() * 1000)}")
        except PointFailed as failed:  # what was measured until then stays in the record
            self.windows += failed.windows
            self.comparisons += failed.comparisons
            raise
        if point.reference_s:
            self.reference_s.setdefault(n, []).extend(point.reference_s)
        self.windows += point.windows
        self.comparisons += point.comparisons
        for m in group:
            mine = [w for w in point.windows if w.launcher == m.label]
            record = self._record(m, cfg, repeat, point.results[m.label], point.wall_s,
                                  [w for w in mine if not w.excluded], len(mine))
            record.windows = len(mine)
        for c in point.comparisons:
            self.out.log("  " + scaling_report.comparison_sentence(c))

    def _record(self, m: Measure, cfg: Config, repeat: int, result: RunResult, wall: float,
                kept: list[MeasuredWindow] | None = None, measured: int = 0) -> RunRecord:
        probes.annotate_flops(result.timing, self.flops, cfg.train.precision)
        record = scaling_report.run_record(m.name, self.spec.mode, repeat, result, wall,
                                           m.ingest_only, cfg.train.lr,
                                           str(m.chaos) if m.chaos else None)
        record.without = m.without
        if kept is not None:
            scaling_report.use_windows(record, kept, measured, self.flops)
        record.cpu_mfu = cpu_mfu(record, self.peak)
        self.runs.append(record)
        self.out.log(f"repeat {repeat} {record.label:<8} N={record.workers}: "
                     f"{_fmt_rate(record)} samples/s, step p50 "
                     f"{record.step_time_ms_p50 or 0:.2f} ms, data {record.data_share or 0:.0%}, "
                     f"sync {record.sync_share or 0:.0%}" + _fmt_target(record))
        return record


def resident_groups(at_n: list[Measure]) -> list[list[Measure]]:
    """The launchers of a ratio measured together, interleaved; one that is in no ratio (an
    ingest's ceiling) alone afterwards, so fewer launchers hold resources at once."""
    paired = {x for pair in planned_pairs([m.label for m in at_n]) for x in pair}
    groups = [[m for m in at_n if m.label in paired]]
    groups += [[m] for m in at_n if m.label not in paired]
    return [g for g in groups if g]


def check_resident_capacity(p: Plan, measures: list[Measure]) -> None:
    """A resident point holds the workers of all its Ray launchers at once (the idle ones use
    no CPU, but Ray counts their reservations). Placed together before anything starts: a
    cluster that cannot hold them is refused now, in one line, not after the first point."""
    n, cfg = p.points[-1]
    for group in resident_groups([m for m in measures if m.name not in SINGLE_WORKER]):
        held = [m for m in group if m.name in RAY_LAUNCHERS]
        if len(held) < 2:
            continue
        groups = []
        try:
            for _ in held:
                groups.append(place_workers(cfg, n, timeout_s=10.0))
        except UserError:
            need = f"{n} x {cfg.scaling.cpus_per_worker:g} CPU"
            raise UserError(
                f"the resident protocol holds {', '.join(m.label for m in held)} at once: "
                f"N={n} needs {len(held)} placements of {need} "
                f"({cfg.scaling.placement_strategy}) and this cluster holds {len(groups)}; "
                "use a smaller --cpus-per-worker (each worker reserves that much; its threads "
                "stay 1), nodes with more logical CPUs, or --protocol restart") from None
        finally:
            for pg in groups:
                release(pg, [])


def cpu_mfu(record: RunRecord, peak: dict | None) -> float | None:
    """Achieved model FLOP/s over what the cores the run used can do (calibrated matmul peak
    per core x workers x threads, at most this machine's cores when every rank ran here)."""
    if peak is None or not record.achieved_tflops:
        return None
    cores = record.workers * record.threads_per_worker
    if len(set(record.node_ids)) <= 1:
        cores = min(cores, os.cpu_count() or cores)
    return record.achieved_tflops * 1e12 / (peak["matmul_gflops_per_core"] * 1e9 * cores)


def run_options(spec: ScaleSpec, target: Target | None,
                storage: str | None = None) -> LoopOptions:
    """Throughput: a measured window, no evaluation. Time to target: whole epochs, validation
    every epoch (on the clock), stop at the target. Chaos: whole epochs, a checkpoint each."""
    if target:
        return LoopOptions(checkpoint=False, evaluate=True, target=target,
                           warmup_steps=spec.window.warmup_steps)
    if spec.chaos:
        return LoopOptions(checkpoint=True, evaluate=False, warmup_steps=spec.window.warmup_steps,
                           storage_dir=storage, progress_interval_s=1.0)
    return LoopOptions(checkpoint=False, evaluate=False, window=spec.window)


def run_one(m: Measure, cfg: Config, options: LoopOptions, run_name: str) -> RunResult:
    """One run of a measurement: a chaos run may restart without limit."""
    cfg = with_ingest(cfg, m.ingest)
    if m.chaos is None:
        return m.backend.run(cfg, dataclasses.replace(options, ingest_only=m.ingest_only),
                             run_name)
    cfg.scaling.max_failures = -1
    return m.backend.run(cfg, options, run_name, chaos=m.chaos)


def _fmt_target(record: RunRecord) -> str:
    t = record.target
    if t is None:
        return ""
    if not t.reached:
        return f"; {t.target} not reached in {t.epochs} epoch(s)"
    return f"; {t.target} after {t.epochs} epoch(s), {t.time_from_first_step_s:.1f}s"


def _fmt_rate(record: RunRecord) -> str:
    return f"{record.samples_per_sec:>12,.0f}" if record.samples_per_sec else f"{'-':>12}"


# ------------------------------------------------------------------ write


def write(spec: ScaleSpec, out_dir: Path, env: dict, p: Plan, sweep: Sweep,
          out: Console, status: str = "completed") -> ScalingDoc:
    summary_startup: list[StartupPoint] | None = None
    if sweep.startup:
        summary_startup = scaling_report.startup_summary(sweep.startup, sweep.runs)
    w = spec.window
    doc = scaling_report.write_report(
        out_dir, environment=env, config=p.base.to_dict(), runs=sweep.runs, mode=spec.mode,
        repeats=spec.repeats, backends=spec.backends, workers=spec.workers,
        data_source=p.source,
        warmup={"steps": w.warmup_steps, "min_steps": w.min_steps,
                "min_seconds": w.min_seconds, "max_steps": w.max_steps},
        startup=sweep.startup or None, startup_summary=summary_startup, target=spec.target,
        lr_scaling=spec.lr_scaling, model=sweep.model, forecasts=sweep.forecasts,
        cost={"worker_hour_cost": spec.worker_hour_cost, "deadline_s": spec.deadline_s,
              "unit": "per worker-hour" if spec.worker_hour_cost is not None
              else "worker-seconds"}, chaos=spec.chaos,
        protocol="resident" if sweep.resident else "restart",
        precision=dataclasses.asdict(spec.precision) if sweep.resident else None,
        comparisons=scaling_report.pooled(sweep.comparisons, sweep.windows,
                                          spec.precision.ci_halfwidth),
        windows=sweep.windows, network=sweep.network, status=status)
    for text in printed(doc):
        out.summary(text)
    for run in (r for r in sweep.runs if r.recoveries):  # each fault of a --chaos run
        for rec in run.recoveries:
            out.summary(f"{run.backend} N={run.workers} repeat {run.repeat}: "
                        f"{recovery_line(rec)}")
    for row in summary_startup or []:
        ci = row.ratio_ci
        spread = (f"; per repeat {ci.value:.2f} ({ci.low:.2f}-{ci.high:.2f}, n={ci.n})"
                  if ci is not None and ci.low is not None else "")
        out.summary(f"start-up N={row.workers}: Ray floor {row.floor_s:.1f}s, raybench first "
                    f"step {row.raybench_first_step_s:.1f}s (ratio {row.ratio:.2f}{spread})")
    return doc
