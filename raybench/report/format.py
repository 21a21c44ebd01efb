"""Numbers for people, one rule per kind of number: shares and efficiency as percentages,
speed-ups and ratios with two or three decimals, rates with thousands separators, ranges as
"37,293–54,603", intervals as "0.52 (95% CI 0.36–0.76)", a missing value as "–"."""

from __future__ import annotations

import math

from raybench.results import Interval, Spread

DASH = "–"  # an en dash: a range or a missing value never reads as a minus sign


def missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def rate(x: float | None) -> str:
    """Samples per second and the like: whole numbers with separators (3 figures below 100)."""
    if missing(x):
        return DASH
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def pct(x: float | None, digits: int = 0) -> str:
    """A share or an efficiency: 0.596 -> '60%'; a small one keeps two significant figures
    (0.0003 -> '0.03%', never a 0% that hides it)."""
    if missing(x):
        return DASH
    if x and abs(x * 100) < 10 ** -digits:
        return f"{x * 100:.2g}%"
    return f"{x * 100:.{digits}f}%"


def signed_pct(x: float | None, digits: int = 1) -> str:
    """A change: +4.1%, -2.0%."""
    return DASH if missing(x) else f"{x * 100:+.{digits}f}%"


def ratio(x: float | None, digits: int = 2) -> str:
    """A speed-up or a ratio: two decimals (three where it decides parity)."""
    return DASH if missing(x) else f"{x:.{digits}f}"


def seconds(x: float | None) -> str:
    if missing(x):
        return DASH
    return f"{x:.1f} s" if x >= 1 else f"{x * 1e3:.0f} ms"


def ms(x: float | None) -> str:
    return DASH if missing(x) else (f"{x:.3f}" if x < 10 else f"{x:,.1f}")


def mib(x: float | None) -> str:
    return DASH if missing(x) else (f"{x / 1024:.2f} GiB" if x >= 1024 else f"{x:,.0f} MiB")


def number(x: float | int | None) -> str:
    """Anything else: integers with separators, floats to four significant figures."""
    if missing(x):
        return DASH
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def span(low: float | None, high: float | None, fmt=rate) -> str:
    """A range: '37,293–54,603'."""
    if missing(low) or missing(high):
        return DASH
    return f"{fmt(low)}{DASH}{fmt(high)}"


def interval(ci: Interval | None, fmt=ratio, min_n: int = 3) -> str:
    """'0.95 (95% CI 0.94–0.96)', or the value alone, saying why there is no interval."""
    if ci is None or missing(ci.value):
        return DASH
    if ci.low is None or ci.high is None:
        return f"{fmt(ci.value)} (one measurement)" if ci.n <= 1 else fmt(ci.value)
    if ci.n < min_n:
        return f"{fmt(ci.value)} (too few repeats for an interval)"
    return f"{fmt(ci.value)} (95% CI {fmt(ci.low)}{DASH}{fmt(ci.high)})"


def spread(s: Spread | None) -> str:
    """Repeated measurements: their range."""
    return DASH if s is None else span(s.min, s.max)


def label(status: str) -> str:
    """An enum value as words: 'stopped_early' -> 'stopped early'."""
    return status.replace("_", " ")
