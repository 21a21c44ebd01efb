"""A regression gate over two scaling reports (`raybench.report --compare BASE NEW`): what
changed point by point beyond the noise, and conditions that fail a CI job.

Each (launcher, N) point of NEW is set against the same point of BASE: the ratio of mean
samples/s with a 95% interval (delta method on the log ratio, Welch's degrees of freedom over
the two sets of repeats), efficiency, the ratios to raw and ddp, time to the first step.
`--fail-if 'vs_ddp<0.95'` fails when any point of NEW has vs_ddp below 0.95; `change` is the
NEW/BASE throughput ratio and `change_high` the upper end of its interval, so
`--fail-if 'change_high<1'` fails only on a slowdown beyond the noise.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from raybench import stats
from raybench.errors import UserError
from raybench.results import Interval, PointSummary, ScalingDoc

_COND = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
COMPARED = ("efficiency", "vs_raw", "vs_ddp", "time_to_first_step_s", "step_time_ms_p50",
            "sync_share")


@dataclass
class Condition:
    metric: str
    op: str
    value: float
    text: str

    def holds(self, x: float) -> bool:
        return {"<": x < self.value, "<=": x <= self.value, ">": x > self.value,
                ">=": x >= self.value}[self.op]


@dataclass
class PointChange:
    label: str
    workers: int
    base: PointSummary
    new: PointSummary
    change: Interval | None  # NEW / BASE samples/s

    def value(self, metric: str) -> float | None:
        if metric == "change":
            return self.change.value if self.change else None
        if metric in ("change_low", "change_high"):
            return getattr(self.change, metric.removeprefix("change_"), None)
        value = getattr(self.new, metric, None)
        return value if isinstance(value, (int, float)) else None

    def interval(self, metric: str) -> Interval | None:
        """The 95% interval of a metric where NEW has one (change, vs_raw, vs_ddp, ...)."""
        if metric == "change":
            return self.change
        ci = getattr(self.new, f"{metric}_ci", None)
        return ci if isinstance(ci, Interval) else None

    @property
    def mde(self) -> float | None:
        """The smallest relative throughput change these two sets of measurements could have
        detected (95%, power 0.8): a 'no change' is only as good as this."""
        return self.change.mde if self.change else None

    @property
    def beyond_noise(self) -> bool:
        c = self.change
        return bool(c and c.low is not None and (c.low > 1 or c.high < 1))


def parse_condition(text: str) -> Condition:
    m = _COND.match(text)
    if not m:
        raise UserError(f"--fail-if {text!r}: expected METRIC<VALUE (or <=, >, >=), e.g. "
                        "'vs_ddp<0.95' or 'change_high<1'")
    metric = m.group(1)
    known = {"change", "change_low", "change_high"} | set(PointSummary.__dataclass_fields__)
    if metric not in known:
        raise UserError(f"--fail-if {text!r}: unknown metric {metric!r} (e.g. change, "
                        "change_high, vs_ddp, vs_raw, efficiency, speedup, time_to_first_step_s)")
    return Condition(metric, m.group(2), float(m.group(3)), " ".join(text.split()))


@dataclass
class Change(Interval):
    """NEW / BASE throughput with its interval, and the smallest change detectable."""

    mde: float | None = None


def ratio_interval(new: list[float], base: list[float]) -> Change | None:
    """mean(new) / mean(base) with a 95% interval: the log ratio's variance by the delta
    method, Welch-Satterthwaite degrees of freedom (None without a repeat on each side); and
    the minimum detectable effect, (t_.975 + t_.8) x the same standard error."""
    if not new or not base:
        return None
    mn, mb = statistics.fmean(new), statistics.fmean(base)
    ratio = mn / mb
    if len(new) < 2 or len(base) < 2:
        return Change(ratio, None, None, min(len(new), len(base)))
    vn = statistics.variance(new) / (len(new) * mn**2)
    vb = statistics.variance(base) / (len(base) * mb**2)
    if vn + vb == 0:
        return Change(ratio, ratio, ratio, min(len(new), len(base)), mde=0.0)
    df = max(1, int((vn + vb) ** 2 / (vn**2 / (len(new) - 1) + vb**2 / (len(base) - 1))))
    se = math.sqrt(vn + vb)
    half = stats.t95(df) * se
    mde = math.exp((stats.t_quantile(0.975, df) + stats.t_quantile(0.8, df)) * se) - 1
    return Change(ratio, ratio * math.exp(-half), ratio * math.exp(half),
                  min(len(new), len(base)), mde=mde)


def workload(doc: ScalingDoc) -> dict[str, object]:
    """What a throughput depends on besides the code under test: two reports that differ in
    any of these measured different things."""
    cfg = doc.config or {}
    source = doc.data_source or ""
    if ":" not in source:  # a file or directory: by its name, so a moved copy still compares
        source = Path(source).name
    return {"mode": doc.mode, "model": cfg.get("model"),
            "batch_size": (cfg.get("train") or {}).get("batch_size"), "data": source,
            "window": (cfg.get("data") or {}).get("window"),
            "task": (cfg.get("data") or {}).get("task"),
            "backends": sorted(doc.backends or [])}


def check_same_workload(base: ScalingDoc, new: ScalingDoc) -> None:
    a, b = workload(base), workload(new)
    differ = [f"{k} {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]
    if differ:
        raise UserError("--compare needs the same workload in both reports; they differ in "
                        + "; ".join(differ))


def compare(base: ScalingDoc, new: ScalingDoc) -> list[PointChange]:
    def rates(doc: ScalingDoc, label: str, n: int) -> list[float]:
        # resident sweeps: every kept window is a measurement; else one per repeat
        runs = [r for r in doc.runs if r.label == label and r.workers == n]
        return ([x for r in runs for x in r.window_rates]
                or [r.samples_per_sec for r in runs if r.samples_per_sec])

    base_points = {(p.label, p.workers): p for p in base.summary}
    out = []
    for p in new.summary:
        b = base_points.get((p.label, p.workers))
        if b is not None:
            out.append(PointChange(p.label, p.workers, b, p, ratio_interval(
                rates(new, p.label, p.workers), rates(base, p.label, p.workers))))
    if not out:
        raise UserError("the two reports share no (backend, workers) point to compare")
    return out


def failures(changes: list[PointChange], conditions: list[Condition]) -> list[str]:
    """One line per (condition, point) that holds beyond the noise: for a metric with an
    interval, the whole interval must be past the threshold; a point whose interval straddles
    it is reported as not decided, and does not fail. A condition no point can be checked
    against is a mistake (a gate that checks nothing passes everything)."""
    out = []
    for cond in conditions:
        checked = [c for c in changes if c.value(cond.metric) is not None]
        if not checked:
            raise UserError(f"--fail-if {cond.text}: no point of NEW has {cond.metric}; the "
                            "gate would check nothing")
        for c in checked:
            line = _judge(cond, c)
            if line:
                out.append(line)
    return out


def _judge(cond: Condition, c: PointChange) -> str | None:
    x = c.value(cond.metric)
    ci = c.interval(cond.metric)
    where = f"{c.label} N={c.workers} has {cond.metric}={x:.4g}"
    if ci is None or ci.low is None:
        return f"FAIL {cond.text}: {where} (no interval)" if cond.holds(x) else None
    # the bound nearest the threshold decides: all of the interval must meet the condition
    bound = ci.high if cond.op in ("<", "<=") else ci.low
    band = f"(95% CI {ci.low:.4g}-{ci.high:.4g})"
    if cond.holds(bound):
        return f"FAIL {cond.text}: {where} {band}, beyond the threshold"
    if cond.holds(x):
        print(f"not decided {cond.text}: {where} {band} straddles {cond.value:g}; more "
              "windows or repeats would decide")
    return None


def table(changes: list[PointChange]) -> str:
    """NEW against BASE point by point: the throughput change with its interval, whether it is
    beyond the noise, the smallest change the data could have seen, and the other figures."""
    from raybench.report import format as f
    from raybench.report.tables import Table

    rows = []
    for c in changes:
        ci = c.change
        verdict = "CHANGED" if c.beyond_noise else ("noise" if ci and ci.low else "n<2")
        rows.append([f"{c.label} N={c.workers}", f.rate(_median(c.base)), f.rate(_median(c.new)),
                     f.interval(ci, lambda x: f.ratio(x, 3), min_n=2), verdict,
                     f.pct(c.mde, 1),
                     *(f"{f.number(getattr(c.base, k))} -> {f.number(getattr(c.new, k))}"
                       for k in COMPARED)])
    return Table("NEW against BASE", ["point", "base samples/s", "new samples/s", "new / base",
                                      "beyond noise?", "smallest detectable", *COMPARED],
                 rows).text()


def _median(p: PointSummary) -> float | None:
    return p.samples_per_sec.median if p.samples_per_sec else None
