"""A scaling model: the step time and throughput at N workers, predicted from what one worker
measured and from probes of the machine, never from the N >= 2 runs it is compared with.

    step(N) = E[ max over N ranks of work_N ] + allreduce_N

The terms are measured by forecast.py (N copies of the one-worker step at once; an all-reduce
between real steps). This module holds the arithmetic: the distribution of a step's work kept
as equally likely bins and the expected maximum of N draws from it (a step waits for its
slowest rank), the ring all-reduce fitted to measured latencies for worker counts not run, a
one-worker profile over per-worker batches with the machine's calibrated floor, and the
forecast record with its measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from raybench.results import Forecast

QUANTILES = 100  # work-time quantiles kept per profile, at the middle of 100 equal bins


def quantiles_of(samples: np.ndarray) -> list[float]:
    """The distribution a forecast draws ranks from: the quantiles at the middle of 100 equally
    likely bins (0.5%, 1.5%, ..., 99.5%), each standing for a hundredth of the steps. The
    slowest half-percent is represented by its middle, not by the single slowest step, which a
    hiccup of the machine can make 10x a step."""
    if len(samples) == 0:
        return []
    return [float(x) for x in np.percentile(samples, (np.arange(QUANTILES) + 0.5)
                                            * 100 / QUANTILES)]


def expected_max(quantiles: list[float], n: int) -> float:
    """E[max of n independent draws] from the distribution whose equally likely bins these
    quantiles stand for (sorted): bin k is the maximum with probability ((k+1)^n - k^n) / K^n.
    n = 1 gives the mean."""
    q = np.sort(np.asarray(quantiles, dtype=np.float64))
    if len(q) == 0:
        return math.nan
    k = np.arange(len(q) + 1, dtype=np.float64) / len(q)
    return float(np.sum(q * np.diff(k ** n)))


def normalised(quantiles: list[float]) -> list[float]:
    """The shape of a distribution: its quantiles over its mean."""
    mean = expected_max(quantiles, 1)
    return [x / mean for x in quantiles] if mean > 0 else list(quantiles)


@dataclass
class StepProfile:
    """One-worker phase times (seconds per step) at per-worker batch sizes, and the quantiles
    of the work per step (seconds) where they were measured."""

    batch: list[int]
    data_s: list[float]
    compute_s: list[float]
    optimizer_s: list[float]
    work_quantiles: list[list[float]] = field(default_factory=list)  # per batch, may be empty
    floor_s_per_sample: float = 0.0  # calibrated lower bound: FLOPs per sample / peak FLOP/s

    def total(self) -> list[float]:
        return [d + c + o for d, c, o in zip(self.data_s, self.compute_s, self.optimizer_s,
                                             strict=True)]

    def fit(self) -> tuple[float, float]:
        """(k0, k1): the one-worker step time k0 + k1 * b, least squares (k1 = 0 with one
        batch size)."""
        if len(set(self.batch)) < 2:
            return self.total()[0], 0.0
        k1, k0 = np.polyfit(np.asarray(self.batch, float), np.asarray(self.total()), 1)
        return float(k0), float(k1)

    def at(self, batch: int) -> float:
        """One-worker mean work per step at a per-worker batch: the measured one, else the
        fit, never below the machine's calibrated floor for that batch."""
        if batch in self.batch:
            return self.total()[self.batch.index(batch)]
        k0, k1 = self.fit()
        return max(k0 + k1 * batch, self.floor_s_per_sample * batch, 0.0)

    def distribution(self, batch: int) -> list[float]:
        """Quantiles of the work per step at a batch: the shape measured there (else at the
        nearest measured batch) scaled to the mean work at this batch."""
        have = [(abs(b - batch), i) for i, b in enumerate(self.batch)
                if i < len(self.work_quantiles) and self.work_quantiles[i]]
        if not have:
            return [self.at(batch)]
        mean = self.at(batch)
        return [x * mean for x in normalised(self.work_quantiles[min(have)[1]])]

    def scaled(self, k: float) -> StepProfile:
        """The same profile with every time multiplied by k (a launcher's cost over raw)."""
        return StepProfile(self.batch, [x * k for x in self.data_s],
                           [x * k for x in self.compute_s], [x * k for x in self.optimizer_s],
                           [[x * k for x in q] for q in self.work_quantiles],
                           self.floor_s_per_sample)


@dataclass
class CommModel:
    """All-reduce latency: measured points, and the ring model fitted to them."""

    measured: dict[tuple[int, int], float] = field(default_factory=dict)  # (N, bytes) -> s
    alpha_s: float | None = None
    beta_s_per_byte: float | None = None
    fitted: bool = False

    @classmethod
    def fit(cls, measured: dict[tuple[int, int], float], alpha_s: float | None = None,
            beta_s_per_byte: float | None = None, relative: bool = False) -> CommModel:
        """Least squares of t = 2(N-1) alpha + 2(N-1)/N m beta over the measured points;
        alpha or beta given on the command line replace the fitted ones. `relative` weighs
        each point by 1/t (relative errors): over sizes spanning four orders of magnitude the
        small ones then set alpha instead of vanishing beside the large ones."""
        model = cls(dict(measured), alpha_s, beta_s_per_byte)
        rows = [(2 * (n - 1), 2 * (n - 1) / n * m, t) for (n, m), t in measured.items() if n > 1]
        if rows and (alpha_s is None or beta_s_per_byte is None):
            a = np.asarray([[r[0], r[1]] for r in rows])
            t = np.asarray([r[2] for r in rows])
            if relative:
                a, t = a / t[:, None], np.ones_like(t)
            if alpha_s is not None:
                beta = float(np.linalg.lstsq(a[:, 1:], t - a[:, 0] * alpha_s, rcond=None)[0][0])
                model.beta_s_per_byte = max(beta, 0.0)
            elif beta_s_per_byte is not None:
                alpha = float(np.linalg.lstsq(a[:, :1], t - a[:, 1] * beta_s_per_byte,
                                              rcond=None)[0][0])
                model.alpha_s = max(alpha, 0.0)
            else:
                (alpha, beta), *_ = np.linalg.lstsq(a, t, rcond=None)
                model.alpha_s, model.beta_s_per_byte = max(float(alpha), 0.0), max(float(beta),
                                                                                     0.0)
            model.fitted = True
        return model

    def ring(self, n: int, nbytes: int) -> float | None:
        if n <= 1:
            return 0.0
        if self.alpha_s is None or self.beta_s_per_byte is None:
            return None
        return 2 * (n - 1) * self.alpha_s + 2 * (n - 1) / n * nbytes * self.beta_s_per_byte

    def allreduce(self, n: int, nbytes: int) -> float | None:
        if n <= 1:
            return 0.0
        return self.measured.get((n, nbytes), self.ring(n, nbytes))


def slowdown(workers: int, threads: int, cores: int, background: float = 0.0) -> float:
    """How much slower each worker computes when `workers` x `threads` share `cores` with
    `background` cores' worth of other work of the run (Ray's own processes, the driver, as
    measured beside the N=1 point's windows)."""
    return max(1.0, (workers * threads + background) / max(cores, 1))


def predict(backend: str, profile: StepProfile, comm: CommModel, workers: int, batch: int,
            grad_bytes: int, threads: int, cores: int, extrapolated: bool = False,
            background: float = 0.0) -> Forecast:
    slow = slowdown(workers, threads, cores, background)
    sync = comm.allreduce(workers, grad_bytes)
    dist = profile.distribution(batch)
    mean = slow * expected_max(dist, 1)
    slowest = slow * expected_max(dist, workers)
    step = None if sync is None else slowest + sync
    return Forecast(
        backend=backend, workers=workers, batch_size_per_worker=batch,
        predicted_samples_per_sec=workers * batch / step if step else None,
        extrapolated=extrapolated, step_ms=None if step is None else step * 1e3,
        work_ms=mean * 1e3, wait_ms=(slowest - mean) * 1e3,
        allreduce_ms=None if sync is None else sync * 1e3, slowdown=slow,
        sync_share=(slowest - mean + sync) / step if step else None,
        min_batch_sync_under_20pct=min_batch(profile, sync, slow))


def min_batch(profile: StepProfile, sync: float | None, slow: float,
              share: float = 0.2) -> int | None:
    """The smallest per-worker batch at which the all-reduce is under `share` of a step:
    sync < share * (slow * (k0 + k1 b) + sync)."""
    if not sync:
        return 1 if sync == 0 else None
    k0, k1 = profile.fit()
    need = sync * (1 - share) / share / slow  # local step time that keeps sync under the share
    if k0 >= need:
        return 1
    if k1 <= 0:
        return None  # a larger batch does not make a step longer: no batch is enough
    # the first batch strictly above the break-even (the epsilon absorbs rounding there)
    return math.floor((need - k0) / k1 + 1e-9) + 1


def with_measurement(f: Forecast, measured: float | None) -> Forecast:
    """The measurement beside a kept forecast; error = predicted / measured - 1."""
    f.measured_samples_per_sec = measured
    if measured and f.predicted_samples_per_sec:
        f.error = f.predicted_samples_per_sec / measured - 1
    return f


def with_speed(f: Forecast, speed: float) -> Forecast:
    """The machine's speed while the point ran over its speed at the N=1 point (> 1: faster),
    and the error of the forecast carried to that speed: predicted x speed / measured - 1.
    The forecast is made of N=1 steps, so a machine 10% slower a minute later makes it 10%
    too high whatever the model; this error is what is left once that change is taken out
    (docs/scaling.md: it explained one sweep's misses and not another's agreement)."""
    f.speed = speed
    if f.measured_samples_per_sec and f.predicted_samples_per_sec:
        f.error_same_speed = f.predicted_samples_per_sec * speed / f.measured_samples_per_sec - 1
    return f


# On a steady machine the raw launcher's N=1 loop ran 1.06-1.18x the probe's step alone at the
# same batch (the loop's data fetch and clocks; 2026-11-28, two MLP sweeps, each probe); the
# sweeps whose forecasts missed by 34-44% had a probe at 0.85x (an LSTM's N=4 probe met a slow
# spell) and probes at 1.65-1.71x (the N=1 windows met one). The raw step compared is now
# measured just before and after each probe; outside this range a spell met one of them and
# the forecast carries it.
BASIS_RANGE = (0.9, 1.35)
# The N=1 point's raw step over raw's step beside the probes: outside this range the machine
# ran at another speed during the N=1 point than beside the probes, and a forecast (the
# point's step scaled by the probe's ratios) and the efficiencies against N=1 carry it.
POINT_RANGE = (0.85, 1.18)


def drifted_basis(ratios: dict[str, float]) -> dict[str, float]:
    """The probes (by N) whose reference step disagrees with the raw loop beside them."""
    return {n: r for n, r in ratios.items() if not BASIS_RANGE[0] <= r <= BASIS_RANGE[1]}


def basis_warning(drifted: dict[str, float]) -> str:
    each = ", ".join(f"{r:.2f}x in the N={n} probe" for n, r in drifted.items())
    return (f"the raw loop's N=1 step beside the probe over the probe's bare step was {each} "
            f"({BASIS_RANGE[0]}-{BASIS_RANGE[1]}x on a steady machine): the machine's speed "
            "changed within the probe and those forecasts carry that change; run the sweep "
            "again before trusting them")


def moved_point(ratios: dict[str, float]) -> dict[str, float]:
    """The probes (by N) beside which raw ran at another speed than at the N=1 point."""
    return {n: r for n, r in ratios.items() if not POINT_RANGE[0] <= r <= POINT_RANGE[1]}


def point_warning(moved: dict[str, float]) -> str:
    each = ", ".join(f"{r:.2f}x its step beside the N={n} probe" for n, r in moved.items())
    return (f"the N=1 point's raw step was {each}: the machine ran at another speed during "
            "the N=1 point than during the probes, and the forecasts built on both and the "
            "efficiencies against N=1 carry that change; run the sweep again before trusting "
            "them")


# ------------------------------------------------------------------ the network (DDP's buckets)

FIRST_BUCKET_BYTES = 1 << 20  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
BUCKET_BYTES = 25 << 20  # DDP's bucket_cap_mb default (25 MiB)


def ddp_buckets(param_bytes: list[int], first: int = FIRST_BUCKET_BYTES,
                cap: int = BUCKET_BYTES) -> list[int]:
    """DDP's buckets in the order backward fills and all-reduces them, in bytes: gradients
    arrive in the reverse of the parameters' order; a bucket closes once it holds at least its
    limit, the first 1 MiB, every later one `cap` (the layout DDP rebuilds after its first
    iteration; `param_bytes` in registration order)."""
    buckets, current, limit = [], 0, first
    for size in reversed(param_bytes):
        current += size
        if current >= limit:
            buckets.append(current)
            current, limit = 0, cap
    if current:
        buckets.append(current)
    return buckets


@dataclass
class Overlap:
    """A step's bucketed all-reduce against its backward pass."""

    allreduce_s: float  # every bucket's ring all-reduce, one after the other
    exposed_s: float  # what backward did not hide: after its end until the last bucket is done
    buckets: int


def ring_s(n: int, nbytes: int, alpha_s: float, beta_s_per_byte: float) -> float:
    """One ring all-reduce among n ranks: 2(n-1) alpha + 2(n-1)/n bytes beta."""
    return 0.0 if n <= 1 else 2 * (n - 1) * alpha_s + 2 * (n - 1) / n * nbytes * beta_s_per_byte


def bucketed_allreduce(buckets: list[int], backward_s: float, times: list[float]) -> Overlap:
    """Each bucket is ready when backward has produced its gradients (backward's time taken
    in proportion to the gradient bytes produced so far); its all-reduce (`times`, one per
    bucket) starts then or when the previous bucket's is done (the buckets share the link).
    Exposed: from the end of backward until the last bucket is done."""
    if not buckets or not any(times):
        return Overlap(0.0, 0.0, len(buckets))
    total, produced, done = sum(buckets), 0, 0.0
    for size, t in zip(buckets, times, strict=True):
        produced += size
        done = max(done, backward_s * produced / total) + t
    return Overlap(sum(times), max(0.0, done - backward_s), len(buckets))
