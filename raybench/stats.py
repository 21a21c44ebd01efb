"""Statistics of measured figures: percentiles, exact Student-t intervals over repeats, a
distribution-free interval for a median, and paired ratios between launchers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from raybench.results import Interval, Spread


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile for df degrees of freedom (exact, any df)."""
    # scipy is imported here, on the driver, not at module import: Ray Train workers import
    # this module, and scipy.stats costs them 0.5 s of CPU each at start-up.
    from scipy import stats as sps

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(sps.t.ppf(0.975, df))


def binomial_lower_quantile(n: int, q: float = 0.025) -> int:
    """The smallest k with P(Binomial(n, 1/2) <= k) >= q: exact for n <= 1000, the normal
    approximation with continuity correction beyond (off by at most one rank there)."""
    if n <= 1000:
        total, cdf = 2.0**n, 0.0
        for k in range(n + 1):
            cdf += math.comb(n, k) / total
            if cdf >= q:
                return k
        return n
    z = statistics.NormalDist().inv_cdf(q)
    return max(0, math.ceil(n / 2 + z * math.sqrt(n) / 2 - 0.5))


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and its Student-t 95% interval (None with fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def spread(values: Sequence[float]) -> Spread:
    """Median, min, max and the mean's 95% interval of repeated measurements."""
    mean, low, high = mean_interval(values)
    return Spread(n=len(values), median=statistics.median(values), min=min(values),
                  max=max(values), mean=mean, ci95_low=low, ci95_high=high)


def median_interval(samples: np.ndarray) -> Interval:
    """The median of many samples with its distribution-free 95% interval: the order
    statistics whose ranks bracket n/2 with binomial(n, 1/2) probability 0.95."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    median = float(np.median(x))
    if n < 6:  # no pair of order statistics covers 95% below six samples
        return Interval(median, None, None, n)
    lo = binomial_lower_quantile(n)  # the lower order statistic is x[lo - 1] (0-based)
    hi = n - 1 - lo
    return Interval(median, float(x[max(lo - 1, 0)]), float(x[min(hi + 1, n - 1)]), n)


def paired_ratio(numerators: dict[int, float], denominators: dict[int, float]) -> Interval | None:
    """Ratio of two launchers measured in the same repeats: the geometric mean of the
    per-repeat ratios with the t-interval of their logs, as the resident windows' ratios (the
    repeats pair up because backends are interleaved within a repeat). On the log scale a
    ratio's bounds stay positive: three repeats of 0.3-0.9 once gave "-0.021-1.190"."""
    common = sorted(set(numerators) & set(denominators))
    ratios = [numerators[r] / denominators[r] for r in common
              if denominators[r] and numerators[r] > 0]
    if not ratios:
        return None
    mean, low, high = log_mean_interval(ratios)
    return Interval(mean, low, high, len(ratios))


# ------------------------------------------------------------------ paired windows


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile at probability p (driver only, like t95)."""
    from scipy import stats as sps

    return float(sps.t.ppf(p, max(df, 1)))


def log_mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Geometric mean of positive values with the Student-t 95% interval of the mean of their
    logs, mapped back: a ratio's interval that is never negative and is symmetric in the
    sense that matters for ratios (x1.02 up is as far as /1.02 down)."""
    logs = [math.log(v) for v in values]
    mean, low, high = mean_interval(logs)
    if low is None:
        return math.exp(mean), None, None
    return math.exp(mean), math.exp(low), math.exp(high)


def relative_halfwidth(value: float, low: float | None, high: float | None) -> float | None:
    """Half the width of an interval relative to its value (0.02: +-2%)."""
    if low is None or high is None or not value:
        return None
    return (high - low) / 2 / value


def min_detectable_effect(sd: float, n: int, power: float = 0.8) -> float | None:
    """The smallest relative change (of a mean of n paired log-ratios with standard deviation
    sd) that a two-sided 95% test detects with the given power: (t_.975 + t_power) sd/sqrt(n),
    as a ratio - 1."""
    if n < 2 or not math.isfinite(sd):
        return None
    df = n - 1
    return math.exp((t_quantile(0.975, df) + t_quantile(power, df)) * sd / math.sqrt(n)) - 1


def iqr_over_median(values: Sequence[float]) -> float | None:
    """The spread of repeated measurements relative to their middle (a noise warning)."""
    if len(values) < 4:
        return None
    q1, med, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float((q3 - q1) / med) if med else None
