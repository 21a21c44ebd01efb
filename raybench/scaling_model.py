"""A scaling model: the step time and throughput at N workers, predicted from measurements at
one worker and of the all-reduce alone, never from the N >= 2 runs it is compared with.

    step(N, b) = slow(N) * (data(b) + compute(b) + optimizer(b)) + allreduce(N, gradient bytes)

- data, compute and optimizer come from one-worker steps at the per-worker batch b (profiled at
  each batch a point needs; affine in b between and beyond them);
- slow(N) = max(1, N * threads / cores): workers sharing a node's cores slow each other's
  compute (1 on a cluster sized for N);
- allreduce(N, m) is the measured latency of an all-reduce of m bytes among N processes where
  one was measured, else the ring all-reduce cost 2(N-1) alpha + 2(N-1)/N m beta with alpha
  (latency per hop) and beta (seconds per byte) fitted to the measured sizes and worker counts,
  or given for a real network. For the gradient of a model that fits one DDP bucket the whole
  all-reduce follows the backward pass, so all of it is exposed.

samples/s(N) = N * b / step(N, b).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from raybench.results import Prediction


@dataclass
class StepProfile:
    """One-worker phase times (seconds per step) at per-worker batch sizes."""

    batch: list[int]
    data_s: list[float]
    compute_s: list[float]
    optimizer_s: list[float]

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
        """One-worker step time at a per-worker batch: the measured one, else the fit."""
        if batch in self.batch:
            return self.total()[self.batch.index(batch)]
        k0, k1 = self.fit()
        return max(k0 + k1 * batch, 0.0)


@dataclass
class CommModel:
    """All-reduce latency: measured points, and the ring model fitted to them."""

    measured: dict[tuple[int, int], float] = field(default_factory=dict)  # (N, bytes) -> s
    alpha_s: float | None = None
    beta_s_per_byte: float | None = None
    fitted: bool = False

    @classmethod
    def fit(cls, measured: dict[tuple[int, int], float], alpha_s: float | None = None,
            beta_s_per_byte: float | None = None) -> CommModel:
        """Least squares of t = 2(N-1) alpha + 2(N-1)/N m beta over the measured points;
        alpha or beta given on the command line replace the fitted ones."""
        model = cls(dict(measured), alpha_s, beta_s_per_byte)
        rows = [(2 * (n - 1), 2 * (n - 1) / n * m, t) for (n, m), t in measured.items() if n > 1]
        if rows and (alpha_s is None or beta_s_per_byte is None):
            a = np.asarray([[r[0], r[1]] for r in rows])
            t = np.asarray([r[2] for r in rows])
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


def slowdown(workers: int, threads: int, cores: int) -> float:
    """How much slower each worker computes when `workers` x `threads` share `cores`."""
    return max(1.0, workers * threads / max(cores, 1))


def predict(backend: str, profile: StepProfile, comm: CommModel, workers: int, batch: int,
            grad_bytes: int, threads: int, cores: int, forecast: bool = False) -> Prediction:
    slow = slowdown(workers, threads, cores)
    sync = comm.allreduce(workers, grad_bytes)
    local = profile.at(batch)
    step = None if sync is None else slow * local + sync
    out = Prediction(backend, workers, batch, step,
                     workers * batch / step if step else None,
                     sync / step if step else None, slow, forecast)
    out.min_batch_sync_under_20pct = min_batch(profile, sync, slow)
    return out


def min_batch(profile: StepProfile, sync: float | None, slow: float,
              share: float = 0.2) -> int | None:
    """The smallest per-worker batch at which synchronisation is under `share` of a step:
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


def with_measurement(p: Prediction, measured: float | None) -> Prediction:
    p.measured_samples_per_sec = measured
    if measured and p.samples_per_sec:
        p.error = (p.samples_per_sec - measured) / measured
    return p
