"""Resident launchers, interleaved windows: how `raybench.scale` measures one point.

Every launcher of the point (raybench, raw, ddp, ddp-ray, a streamed ingest) is started once
and warmed up; then rounds of short windows run, one window per launcher, the others blocked
and idle meanwhile. The order alternates from round to round (A B, B A, A B ...: ABBA for two),
so a machine that drifts slows both sides of a pair alike. A pair is the two launchers' windows
of one round; a ratio is the geometric mean of the pairs' throughput ratios with a Student-t
interval on the log scale. Rounds go on until every ratio's 95% interval is within
`ci_halfwidth` of it (after `min_pairs`), or the point's time budget (start-up included) would
be exceeded by another round, which the comparison then says.

Around every window the machine's steal time and the CPU used outside the run are read from
/proc (interference.py); a pair where either crosses `max_outside_load` is excluded and
counted, never silently used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from raybench import interference, stats
from raybench.backends import Backend, Resident
from raybench.backends.conductor import LauncherDied
from raybench.config import Config
from raybench.errors import cause_line
from raybench.loop import LoopOptions
from raybench.results import (
    PHASES,
    Comparison,
    MeasuredWindow,
    PhaseGap,
    RunResult,
    WindowOrder,
    WindowReport,
)

# A window never shorter than this many steps, whatever --window-s asks: the barrier that
# starts it and the report that ends it (about a millisecond) stay a small share of it. Kept
# low so that slow steps (the LSTM's 150 ms) still give many pairs: at 10, its 300 s bought 41.
MIN_WINDOW_STEPS = 3


@dataclass
class Precision:
    """How a point is measured (raybench.scale's precision flags)."""

    # One measured window. Measured here (MLP b64, raybench/raw, N=1, 120 s each): the sd of a
    # pair's log-ratio was 0.155 at 0.25 s windows, 0.093 at 0.5 s, 0.109 at 1 s and 0.111 at
    # 2 s: shorter windows carry their own noise, longer ones let the machine drift between the
    # two windows of a pair; 0.5 s reached +-2% in the fewest seconds.
    window_s: float = 0.5
    ci_halfwidth: float = 0.02  # stop when every ratio's 95% interval is within +-this
    budget_s: float = 300.0  # per point and repeat, start-up included
    min_pairs: int = 6  # never decide on fewer
    # Stop at this many kept pairs even if not precise (tests, quick looks); rounds excluded
    # for outside load do not count, so a busy moment costs time, not the comparison.
    max_pairs: int | None = None
    max_outside_load: float = 0.10  # share of the machine's CPU used outside the run
    warmup_steps: int = 50  # excluded: before the first window, on top of one window's worth


@dataclass
class Contender:
    """One launcher of a point, resident for the point's whole measurement."""

    label: str  # RunRecord.label: raybench, raw, ddp, raybench+ray_data, ...
    backend: Backend
    cfg: Config
    ingest_only: bool = False
    resident: Resident | None = None
    launched: float = 0.0  # epoch seconds its start was asked for
    steps: int = 0  # steps per window, from its warm-up
    windows: list[MeasuredWindow] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set while it starts (a Ray switch)


@dataclass
class PointMeasurement:
    results: dict[str, RunResult]  # label -> the launcher's run over its counted windows
    windows: list[MeasuredWindow]
    comparisons: list[Comparison]
    wall_s: float
    reference_s: list[float] = field(default_factory=list)  # the speed reference, per round


def planned_pairs(labels: list[str]) -> list[tuple[str, str]]:
    """Which ratios a point decides: raybench against each baseline measured with it, a
    streamed ingest against the data in memory; without raybench, ddp against raw."""
    have = set(labels)
    pairs = [("raybench", peer) for peer in ("raw", "ddp", "ddp-ray") if peer in have]
    pairs += [(x, "raybench") for x in labels if x.startswith(("raybench+", "raybench w/o "))
              and not x.endswith("ingest-only") and "raybench" in have]
    if "raybench" not in have and {"ddp", "raw"} <= have:
        pairs.append(("ddp", "raw"))
    return [p for p in pairs if p[0] in have]


class PointFailed(Exception):
    """A launcher of a point failed (killed, out of memory, its Ray run lost): which one, why,
    and the windows and paired comparisons measured until then, which the sweep keeps."""

    def __init__(self, label: str, workers: int, cause: str,
                 windows: list[MeasuredWindow] | None = None,
                 comparisons: list[Comparison] | None = None) -> None:
        super().__init__(f"{label} at N={workers} failed: {cause}")
        self.label, self.workers, self.cause = label, workers, cause
        self.windows, self.comparisons = windows or [], comparisons or []


class PointRun:
    """One point's resident measurement, from the first start to the last stop."""

    def __init__(self, contenders: list[Contender], precision: Precision, repeat: int,
                 workers: int, log: Callable[[str], None],
                 reference: Callable[[], float] | None = None) -> None:
        self.contenders, self.p, self.repeat, self.workers = contenders, precision, repeat, workers
        self.log = log
        # One window of a fixed workload per round (seconds a step): the machine's speed while
        # the point ran, which a forecast made earlier is set against (forecast.check).
        self.reference, self.reference_s = reference, []
        self.pairs = planned_pairs([c.label for c in contenders])
        self.started = time.monotonic()
        self.startup_s = 0.0  # from the first start until every launcher was warm
        self.current = contenders[0]  # the launcher being started, measured or stopped now

    def measure(self, options: LoopOptions, run_name: str) -> PointMeasurement:
        try:
            for c in self.contenders:
                self._start(c, options, run_name)
            self._rounds()
            results = {}
            for c in self.contenders:
                self.current = c
                results[c.label] = c.resident.stop()
        except BaseException as exc:
            for c in self.contenders:
                if c.resident is not None:
                    c.resident.abort()
            if isinstance(exc, Exception):  # a launcher failed; a signal stays a signal
                raise self._failed(exc) from None
            raise
        windows = [w for c in self.contenders for w in c.windows]
        comparisons = [self._compare(num, den, results) for num, den in self.pairs]
        return PointMeasurement(results, windows, comparisons, time.monotonic() - self.started,
                                self.reference_s)

    # -------------------------------------------------------------- start and warm up

    def _failed(self, exc: Exception) -> PointFailed:
        cause = str(exc) if isinstance(exc, LauncherDied) else cause_line(exc)
        comparisons = []
        for num, den in self.pairs:
            pairs = self._paired(num, den)
            if pairs:
                a = next(c for c in self.contenders if c.label == num)
                comparisons.append(paired_comparison(
                    num, den, self.workers, pairs, sum(w.excluded for w in a.windows),
                    self.p.ci_halfwidth))
                comparisons[-1].repeat = self.repeat
                comparisons[-1].note = f"measured until {self.current.label} failed"
        windows = [w for c in self.contenders for w in c.windows]
        return PointFailed(self.current.label, self.workers, cause, windows, comparisons)

    def _start(self, c: Contender, options: LoopOptions, run_name: str) -> None:
        """Start one launcher, warm it up, and size its windows from its own steps. The ones
        already started wait blocked meanwhile."""
        self.current = c
        c.launched = time.time()
        with environment(c.env):  # read when its processes start
            c.resident = c.backend.start(
                c.cfg, dataclasses.replace(options, launch_time=c.launched,
                                           ingest_only=c.ingest_only),
                f"{run_name}_{re.sub(r'[^A-Za-z0-9_]+', '_', c.label)}")
            step_s = self._warm(c, self.p.warmup_steps)
        # A second warm-up as long as a window: what starts late (Ray Train's helper actors,
        # Ray Data's pipeline) has settled before the first window, and the step time it gives
        # sizes the windows.
        step_s = self._warm(c, max(MIN_WINDOW_STEPS, math.ceil(self.p.window_s / step_s)))
        c.steps = max(MIN_WINDOW_STEPS, math.ceil(self.p.window_s / step_s))
        self.log(f"  {c.label:<20} N={self.workers}: started and warm after "
                 f"{time.time() - c.launched:.1f}s; {c.steps} steps a window "
                 f"({step_s * 1e3:.2f} ms a step)")

    def _warm(self, c: Contender, steps: int) -> float:
        reports = c.resident.measure(WindowOrder(max(1, steps), warmup=True),
                                     timeout_s=self._timeout(None))
        return max(r.seconds for r in reports) / max(1, steps)

    def _timeout(self, c: Contender | None) -> float:
        """A window that takes this long has hung (a start-up, a first step, a data pipeline
        can take long on a busy machine; a window is a few seconds)."""
        return 600.0 if c is None else 120.0 + 20 * self.p.window_s

    # -------------------------------------------------------------- rounds

    def _rounds(self) -> None:
        self.startup_s = time.monotonic() - self.started  # every launcher up and warm
        round_no, last_round_s = 0, 0.0
        while True:
            t0 = time.monotonic()
            if self.reference is not None:
                self.reference_s.append(self.reference())
            order = self.contenders if round_no % 2 == 0 else self.contenders[::-1]
            for slot, c in enumerate(order):
                c.windows.append(self._window(c, round_no, slot))
            self._exclude(round_no)
            if round_no == 0:
                self._resize()
            round_no += 1
            last_round_s = time.monotonic() - t0
            if self._done(last_round_s):
                return

    def _resize(self) -> None:
        """Size each launcher's windows again from its first measured window: the warm-up's
        step time can be inflated by what starts late (measured: 2.1 ms a step in a Ray Train
        worker's warm-up against 1.1 ms in its windows)."""
        for c in self.contenders:
            w = c.windows[-1]
            step_s = w.seconds / max(w.steps, 1)
            c.steps = max(MIN_WINDOW_STEPS, math.ceil(self.p.window_s / max(step_s, 1e-9)))

    def _window(self, c: Contender, round_no: int, slot: int) -> MeasuredWindow:
        self.current = c
        before = interference.sample()
        reports = c.resident.measure(WindowOrder(c.steps), timeout_s=self._timeout(c))
        load = interference.between(before, interference.sample())
        window = merge_reports(reports, c.label, self.workers, self.repeat, round_no, slot,
                               load.steal if load else None, load.outside if load else None)
        if load is not None:
            window.rest_of_run_share = max(0.0, load.run_s - window.cpu_s) / load.total_s
        return window

    def _exclude(self, round_no: int) -> None:
        """Outside load on any window of the round excludes the round's pairs: a burner that
        slowed one side of a pair biases the ratio, whichever side it was."""
        limit = self.p.max_outside_load
        this = [c.windows[-1] for c in self.contenders]
        loaded = any((w.outside_share or 0) > limit or (w.steal_share or 0) > limit
                     for w in this)
        for w in this:
            w.excluded = loaded
        if loaded:
            worst = max((w.outside_share or 0) + (w.steal_share or 0) for w in this)
            self.log(f"  round {round_no + 1}: excluded, {worst:.0%} of the machine busy "
                     "outside the run")

    def _done(self, last_round_s: float) -> bool:
        kept = sum(1 for w in self.contenders[0].windows if not w.excluded)
        widths = [self._halfwidth(num, den) for num, den in self.pairs] or [
            self._own_halfwidth(c) for c in self.contenders]
        precise = kept >= self.p.min_pairs and all(
            w is not None and w <= self.p.ci_halfwidth for w in widths)
        elapsed = time.monotonic() - self.started
        out_of_time = elapsed + last_round_s > self.p.budget_s
        capped = self.p.max_pairs is not None and kept >= self.p.max_pairs
        return precise or out_of_time or capped

    def _paired(self, num: str, den: str) -> list[tuple[MeasuredWindow, MeasuredWindow]]:
        a, b = (next(c for c in self.contenders if c.label == x) for x in (num, den))
        theirs = {w.round: w for w in b.windows}  # by round: a point that failed mid-round
        return [(x, theirs[x.round]) for x in a.windows  # has one side of its last pair
                if x.round in theirs and not (x.excluded or theirs[x.round].excluded)]

    def _halfwidth(self, num: str, den: str) -> float | None:
        ratios = [x.samples_per_sec / y.samples_per_sec for x, y in self._paired(num, den)]
        if len(ratios) < 2:
            return None
        value, low, high = stats.log_mean_interval(ratios)
        return stats.relative_halfwidth(value, low, high)

    def _own_halfwidth(self, c: Contender) -> float | None:
        rates = [w.samples_per_sec for w in c.windows if not w.excluded]
        if len(rates) < 2:
            return None
        value, low, high = stats.log_mean_interval(rates)
        return stats.relative_halfwidth(value, low, high)

    # -------------------------------------------------------------- the record

    def _compare(self, num: str, den: str, results: dict[str, RunResult]) -> Comparison:
        pairs = self._paired(num, den)
        a = next(c for c in self.contenders if c.label == num)
        excluded = sum(1 for w in a.windows if w.excluded)
        comparison = paired_comparison(num, den, self.workers, pairs, excluded,
                                       self.p.ci_halfwidth)
        comparison.repeat = self.repeat
        comparison.startup_s = {x: startup_of(results[x]) for x in (num, den)}
        if not comparison.reached:
            comparison.note = self._why_not_precise(comparison, len(pairs), excluded,
                                                    len(a.windows))
        return comparison

    def _why_not_precise(self, c: Comparison, pairs: int, excluded: int, windows: int) -> str:
        elapsed = time.monotonic() - self.started
        note = (f"±{c.halfwidth:.1%} after {pairs} pairs " if c.halfwidth is not None
                else f"{pairs} pair(s), too few for an interval ")
        if self.p.max_pairs is not None and windows - excluded >= self.p.max_pairs:
            note += f"at the {self.p.max_pairs}-pair cap"
        else:
            note += f"when the {self.p.budget_s:g}s budget ran out ({elapsed:.0f}s used)"
        if self.startup_s > self.p.budget_s:
            note += (f"; start-up alone took {self.startup_s:.0f}s of the {self.p.budget_s:g}s "
                     "budget (raise --budget-s)")
        if excluded:
            note += f"; {excluded} round(s) excluded for load outside the run"
        return note


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Variables set in this process for the duration (Ray Train passes the ones it knows on to
    its controller and workers when fit() starts)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def merge_reports(reports: list[WindowReport], label: str, workers: int, repeat: int,
                  round_no: int, slot: int, steal: float | None,
                  outside: float | None) -> MeasuredWindow:
    """One window of a launcher from its ranks' reports: the slowest rank's time (the ranks
    ran in lockstep), all ranks' samples, per-step phases averaged over ranks."""
    seconds = max(r.seconds for r in reports)
    samples = sum(r.samples for r in reports)
    steps = reports[0].steps
    phase_ms = {p: statistics.fmean(r.phase_s.get(p, 0.0) for r in reports) / steps * 1e3
                for p in PHASES}
    p50s = [r.step_ms_p50 for r in reports if r.step_ms_p50 is not None]
    return MeasuredWindow(
        launcher=label, workers=workers, repeat=repeat, round=round_no, slot=slot, steps=steps,
        started_at=min(r.started_at for r in reports),
        samples=samples, seconds=seconds, samples_per_sec=samples / seconds if seconds else 0.0,
        phase_ms=phase_ms, step_ms_p50=max(p50s) if p50s else None,
        cpu_s=sum(r.cpu_s for r in reports), nivcsw=sum(r.nivcsw for r in reports),
        steal_share=steal, outside_share=outside,
        data_ms_per_rank=[r.phase_s.get("data", 0.0) / steps * 1e3 for r in reports],
        kernel_ms_per_rank=[r.sys_s / steps * 1e3 for r in reports],
        faults_per_rank=[r.minflt / steps for r in reports])


def paired_comparison(num: str, den: str, workers: int,
                      pairs: list[tuple[MeasuredWindow, MeasuredWindow]], excluded: int,
                      target: float | None) -> Comparison:
    """The ratio num/den from paired windows: the geometric mean of the pairs' throughput
    ratios with a Student-t 95% interval of the mean log-ratio (log scale: the bounds stay
    positive and x1.02 weighs as /1.02), the minimum detectable effect, where the gap sits per
    step phase, and how noisy each side's windows were."""
    ratios = [x.samples_per_sec / y.samples_per_sec for x, y in pairs]
    window_s = statistics.median([w.seconds for pair in pairs for w in pair]) if pairs else 0.0
    ingest = num.partition("+")[2].split(" ")[0] or "memory"
    out = Comparison(numerator=num, denominator=den, workers=workers, ingest=ingest,
                     ratio=None, ci95=None, pairs=len(pairs), excluded_pairs=excluded,
                     window_s=window_s, halfwidth=None, target_halfwidth=target,
                     reached=False, note="")
    if not ratios:
        out.note = "no pair was kept"
        return out
    out.ratio, low, high = stats.log_mean_interval(ratios)
    if low is not None:
        out.ci95 = [low, high]
        out.halfwidth = stats.relative_halfwidth(out.ratio, low, high)
        logs = [math.log(r) for r in ratios]
        out.mde = stats.min_detectable_effect(statistics.stdev(logs), len(logs))
    out.reached = out.halfwidth is not None and target is not None and out.halfwidth <= target
    out.phases = phase_gaps(pairs)
    out.kernel_ms, out.faults_per_step = kernel_load(pairs, (num, den))
    for side, label in ((0, num), (1, den)):
        spread = stats.iqr_over_median([pair[side].samples_per_sec for pair in pairs])
        if spread is not None:
            out.noise_iqr[label] = spread
    return out


def phase_gaps(pairs: list[tuple[MeasuredWindow, MeasuredWindow]]) -> dict[str, PhaseGap]:
    """Per step phase: (numerator's phase - denominator's phase) / denominator's step, per pair,
    mean and interval. They sum to the relative step-time gap: num slower by 3% with 2.5
    points of it in sync reads sync 0.025."""
    out = {}
    for phase in PHASES:
        gaps = [(x.phase_ms[phase] - y.phase_ms[phase]) / sum(y.phase_ms.values())
                for x, y in pairs if sum(y.phase_ms.values()) > 0]
        if gaps:
            mean, low, high = stats.mean_interval(gaps)
            out[phase] = PhaseGap(mean, low, high)
    return out


def kernel_load(pairs: list[tuple[MeasuredWindow, MeasuredWindow]],
                labels: tuple[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per side: the busiest rank's kernel CPU per step (ms) and page faults per step, median
    over the windows. A lockstep step waits for its slowest rank, and on CPU the ranks' kernel
    time (the page faults of memory freed and taken back each step) differs from one process
    to the next: a gap in "compute" that the busiest rank's kernel time matches is not the
    launcher's own work."""
    kernel, faults = {}, {}
    for side, label in enumerate(labels):
        busiest = [max(zip(w.kernel_ms_per_rank, w.faults_per_rank, strict=True))
                   for w in (pair[side] for pair in pairs) if w.kernel_ms_per_rank]
        if busiest:
            kernel[label] = statistics.median(ms for ms, _ in busiest)
            faults[label] = statistics.median(n for _, n in busiest)
    return kernel, faults


def startup_of(result: RunResult) -> dict[str, float | None]:
    """A launcher's start-up marks, seconds from when its start was asked for."""
    marks = result.timing.startup_s
    return {k: getattr(marks, k) for k in ("worker_entry_s", "loop_entry_s", "model_ready_s",
                                           "first_step_s")}
