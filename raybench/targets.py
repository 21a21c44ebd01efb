"""Time to a target quality, scored as MLPerf Training scores it.

A target names a validation metric the run reports and a threshold: `val_r2>=0.90`,
`val_loss<=0.05`, `val_auc>=0.55`. A run trains until its validation metric meets the target
(evaluation stays on the clock) or its epochs run out. Repeats of one point are scored by
MLPerf's rule: drop the fastest and the slowest run and average the rest; a run that never
reached the target counts as the slowest; more than one such run makes the point invalid.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from raybench.config import METRIC_MODES, check_metric
from raybench.errors import UserError
from raybench.results import metric_key

_TARGET = re.compile(r"^\s*(val_[a-z0-9]+)\s*(>=|<=)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Target:
    metric: str  # the metric's name (r2, auc, val_loss, ...)
    op: str  # ">=" or "<="
    value: float

    @property
    def key(self) -> str:
        return metric_key(self.metric)

    def met(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.value if self.op == ">=" else value <= self.value

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}"


def parse_target(text: str, task: str | None = None) -> Target:
    """'val_r2>=0.90' -> Target; a malformed expression, an unknown metric, a metric the task
    does not report or a comparison against the metric's direction is one line, exit 2."""
    m = _TARGET.match(text)
    if not m:
        raise UserError(f"--target {text!r}: expected METRIC>=VALUE or METRIC<=VALUE with a "
                        "validation metric, e.g. 'val_r2>=0.90' or 'val_loss<=0.05'")
    key, op, value = m.group(1), m.group(2), float(m.group(3))
    metric = key if key == "val_loss" else key.removeprefix("val_")
    if metric not in METRIC_MODES:
        known = ", ".join(sorted(metric_key(k) for k in METRIC_MODES))
        raise UserError(f"--target {text!r}: unknown metric {key!r} (known: {known})")
    if task is not None:
        check_metric(metric, task, f"--target {text!r}")
    better = ">=" if METRIC_MODES[metric] == "max" else "<="
    if op != better:
        raise UserError(f"--target {text!r}: {key} improves with {better}; a target for it "
                        f"reads {key}{better}{value:g}")
    return Target(metric, op, value)


@dataclass
class TargetScore:
    """MLPerf-style score of one point's repeats."""

    runs: int
    reached: int
    valid: bool
    score_s: float | None  # mean of the runs left after dropping the fastest and the slowest
    scored: list[float | None]  # each run's time to target (None: not reached), input order
    note: str = ""


def mlperf_score(times: list[float | None]) -> TargetScore:
    """Drop the fastest and the slowest, average the rest; a run that never reached the target
    is the slowest; more than one such run makes the point invalid. With fewer than three runs
    nothing can be dropped: the mean of all, valid only if all reached."""
    missed = sum(t is None for t in times)
    reached = len(times) - missed
    if missed > 1 or (missed and len(times) < 3):
        return TargetScore(len(times), reached, False, None, list(times),
                           f"{missed} of {len(times)} runs did not reach the target")
    if len(times) < 3:
        return TargetScore(len(times), reached, True, statistics.fmean(times), list(times),
                           f"{len(times)} run(s): too few to drop the fastest and slowest")
    ordered = sorted(times, key=lambda t: math.inf if t is None else t)
    kept = ordered[1:-1]  # a None sorts last and is dropped as the slowest
    return TargetScore(len(times), reached, True, statistics.fmean(kept), list(times))
