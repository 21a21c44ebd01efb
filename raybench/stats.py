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
    """Ratio of two launchers measured in the same repeats: the mean of the per-repeat ratios
    with its t-interval (repeats pair up because backends are interleaved within a repeat)."""
    common = sorted(set(numerators) & set(denominators))
    ratios = [numerators[r] / denominators[r] for r in common if denominators[r]]
    if not ratios:
        return None
    mean, low, high = mean_interval(ratios)
    return Interval(mean, low, high, len(ratios))


def overlaps(a: Interval | Spread, b: Interval | Spread) -> bool | None:
    """Whether two 95% intervals overlap (None when either has no interval)."""
    lo_a, hi_a = _bounds(a)
    lo_b, hi_b = _bounds(b)
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return lo_a <= hi_b and lo_b <= hi_a


def _bounds(x: Interval | Spread) -> tuple[float | None, float | None]:
    if isinstance(x, Spread):
        return x.ci95_low, x.ci95_high
    return x.low, x.high
