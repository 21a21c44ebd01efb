"""Forecasts for N nodes on a network (one worker a node): the step is the slowest rank's work
plus the part of DDP's bucketed all-reduce that backward could not hide.

  work(N)      the launcher's own one-worker work at N's per-worker batch (its N=1 point; the
               raw profile for another batch), the slowest of N draws from its distribution
  allreduce    DDP's buckets (the layout it rebuilds after its first step: 1 MiB, then
               25 MiB) each all-reduced one after the other on the link: the probe's own time
               at that size among N ranks (scaled to N by the ring where it did not run among
               N), or 2(n-1) alpha + 2(n-1)/n bytes beta on a link given
  exposed      what of that ran after backward ended: each bucket starts once backward has
               produced its gradients (in proportion to the bytes), backward's length measured
               from the model's own forward/backward split on this process
  link         alpha and beta measured by the network probe (`--probe-network`), or given for
               a network not measured (`--link-gbps`, `--link-latency-us`): the record says
               which

Every term is kept in the forecast record (work, waiting, backward, all-reduce, exposed and
the link), so a miss can be traced to one of them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from raybench.models import build_model, loss_fn
from raybench.results import Forecast, NetworkProbe
from raybench.scaling_model import bucketed_allreduce, ddp_buckets, expected_max, ring_s

# A latency to assume for a given link when none was measured or given: a datacenter TCP hop.
ASSUMED_LATENCY_US = 50.0
# The probe's bandwidth below this share of the links' set rate: the CPUs bound the
# all-reduce, not the link (gloo reduces on the CPU).
CPU_BOUND_SHARE = 0.85
# A node's step this much longer with the others computing at once than alone: the nodes share
# CPUs (a step's timing varies by a few percent between two windows alone).
SHARED_CPU_SLOWDOWN = 1.05


@dataclass(frozen=True)
class Link:
    """The ring's terms a forecast uses, and where they came from. A measured link keeps the
    probe's own times by size: the bus bandwidth it reached fell with the size (0.096 Gbit/s
    at 1 MiB, 0.088 at 16 MiB on 100 Mbit/s links, 4 ranks), so a bucket's all-reduce is the
    probe's time at that size among N ranks where the probe ran among N (`at`), else the
    largest probe's time scaled to N by the ring: a 4-rank probe scaled to 2 ranks had
    over-stated a 2-rank all-reduce here (every N=2 forecast came out low)."""

    alpha_s: float  # per ring hop
    beta_s_per_byte: float  # 1 / bus bandwidth (the fit's, or the given rate's)
    source: str  # "measured" (the probe) or "assumed" (given, or a default)
    rows: tuple[tuple[int, float], ...] = ()  # the probe's (bytes, seconds) at `ranks`
    ranks: int = 2
    # the probe repeated among other rank counts: {ranks: ((bytes, seconds), ...)}
    at: dict[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    # DDP's buckets all-reduced right after each rank's training step, by rank count: the
    # ring on nodes busy training (NodeWork.allreduce_after_step), used before the idle probe
    after_step: dict[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        return 8 / self.beta_s_per_byte / 1e9

    def text(self) -> str:
        probed = sorted({self.ranks, *self.at}) if self.rows else []
        among = f", probed among {'/'.join(map(str, probed))} ranks" if len(probed) > 1 else ""
        if self.after_step:
            among += (", buckets timed after a step among "
                      f"{'/'.join(map(str, sorted(self.after_step)))}")
        return f"{self.gbps:.3g} Gbit/s, {self.alpha_s * 1e6:.0f} us a hop, {self.source}{among}"

    def allreduce_s(self, n: int, nbytes: int) -> float:
        """One all-reduce of `nbytes` among n ranks on this link: as timed right after a
        training step where it was, else the idle probe's."""
        if n <= 1:
            return 0.0
        if n in self.after_step:
            return _interpolate(self.after_step[n], nbytes)
        if n in self.at:
            return _interpolate(self.at[n], nbytes)
        if not self.rows:
            return ring_s(n, nbytes, self.alpha_s, self.beta_s_per_byte)
        measured = _interpolate(self.rows, nbytes)
        hops = 2 * (self.ranks - 1) * self.alpha_s
        share = (2 * (n - 1) / n) / (2 * (self.ranks - 1) / self.ranks)
        return 2 * (n - 1) * self.alpha_s + max(0.0, measured - hops) * share


def _interpolate(rows: tuple[tuple[int, float], ...], nbytes: int) -> float:
    """The probe's time at a size, linear in log(bytes) between the measured sizes; beyond
    them, at the nearest size's bandwidth."""
    rows = tuple(sorted(rows))
    if nbytes <= rows[0][0]:
        return rows[0][1]
    if nbytes >= rows[-1][0]:
        return rows[-1][1] * nbytes / rows[-1][0]
    for (b0, t0), (b1, t1) in zip(rows, rows[1:], strict=False):
        if b0 <= nbytes <= b1:
            x = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return t0 + x * (t1 - t0)
    return rows[-1][1]


def link_of(probe: NetworkProbe | None, link_gbps: float | None,
            latency_us: float | None) -> Link | None:
    """The link a forecast assumes: one given (what-if) wins over the probe's measurement."""
    if link_gbps is not None:
        if latency_us is None and probe is not None and probe.latency_us is not None:
            latency_us = probe.latency_us
        return Link((latency_us if latency_us is not None else ASSUMED_LATENCY_US) * 1e-6,
                    8 / (link_gbps * 1e9), "assumed")
    if probe is None or not probe.bandwidth_gbps or probe.latency_us is None:
        return None
    return Link(probe.latency_us * 1e-6, 8 / (probe.bandwidth_gbps * 1e9), "measured",
                tuple((r.bytes, r.time_s) for r in probe.rows), probe.workers,
                {q.workers: tuple((r.bytes, r.time_s) for r in q.rows)
                 for q in probe.at_other_n if q.rows},
                {q.workers: tuple((r.bytes, r.time_s) for r in q.work.allreduce_after_step)
                 for q in (probe, *probe.at_other_n)
                 if q.work is not None and q.work.allreduce_after_step})


def cpu_bound(probe: NetworkProbe | None) -> str | None:
    """Where the probe's bus bandwidth stayed well under the emulated links' set rate: the
    CPUs, not the link, bound the all-reduce (a sentence), else None."""
    rates = [n.get("link") for n in ((probe.link or {}).get("nodes") or [])] if probe else []
    set_bps = [_bps(r) for r in rates if r and r != "unshaped"]
    if not probe or not probe.bandwidth_gbps or not set_bps:
        return None
    slowest = min(set_bps) / 1e9
    if probe.bandwidth_gbps >= CPU_BOUND_SHARE * slowest:
        return None
    return (f"the CPUs bound the all-reduce here, not the link: gloo reached "
            f"{probe.bandwidth_gbps:.3g} Gbit/s on links set at {slowest:.3g} Gbit/s")


def _bps(text: str) -> float:
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    unit = next((u for u in units if text.endswith(u)), None)
    return float(text[: -len(unit)]) * units[unit] if unit else float("inf")


def backward_share(model_cfg, shape: tuple[int, int, str], batch: int,
                   seconds: float = 1.0) -> float:
    """Backward's share of forward + backward for the model at a per-worker batch, timed on
    this process (one thread, as a worker trains): how much of a step buckets can hide
    behind."""
    features, window, task = shape
    torch.manual_seed(0)
    model = build_model(model_cfg, features, window, task)
    criterion = loss_fn(task)
    x = torch.randn(batch, window, features)
    y = (torch.rand(batch) > 0.5).float() if task == "classification" else torch.randn(batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fwd, bwd = [], []
        deadline = time.perf_counter() + seconds
        while len(fwd) < 5 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            loss = criterion(model(x), y)
            t1 = time.perf_counter()
            loss.backward()
            model.zero_grad(set_to_none=True)
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
    finally:
        torch.set_num_threads(threads)
    f, b = statistics.median(fwd[2:]), statistics.median(bwd[2:])
    return b / (f + b)


def gradient_buckets(model: torch.nn.Module) -> list[int]:
    return ddp_buckets([p.numel() * p.element_size() for p in model.parameters()
                        if p.requires_grad])


def network_forecast(backend: str, n: int, batch: int, work: list[float], compute_share: float,
                     bwd_share: float, buckets: list[int], link: Link,
                     extrapolated: bool = False, slowdown: float = 1.0) -> Forecast:
    """N nodes, one worker each: `work` is the quantiles of one worker's work per step at this
    batch (seconds) on a node computing alone, `compute_share` the forward+backward share of
    it, `slowdown` how much longer the step took on the same nodes with all N computing at
    once (the probe's NodeWork; 1 where not measured). In lockstep every rank computes at the
    same time, so the whole of it applies."""
    work = [x * slowdown for x in work]
    mean = expected_max(work, 1)
    slowest = expected_max(work, n)
    backward = mean * compute_share * bwd_share
    overlap = bucketed_allreduce(buckets, backward, [link.allreduce_s(n, b) for b in buckets])
    step = slowest + overlap.exposed_s
    return Forecast(
        backend=backend, workers=n, batch_size_per_worker=batch,
        predicted_samples_per_sec=n * batch / step, extrapolated=extrapolated,
        step_ms=step * 1e3, work_ms=mean * 1e3, wait_ms=(slowest - mean) * 1e3,
        allreduce_ms=overlap.allreduce_s * 1e3, exposed_ms=overlap.exposed_s * 1e3,
        backward_ms=backward * 1e3, buckets=overlap.buckets, link=link.text(),
        slowdown=slowdown, sync_share=(slowest - mean + overlap.exposed_s) / step)


def node_slowdowns(probe: NetworkProbe | None) -> dict[int, float]:
    """The step's slowdown with N nodes computing at once, by N, where the probe measured it."""
    if probe is None:
        return {}
    return {q.workers: q.work.slowdown for q in (probe, *probe.at_other_n)
            if q.work is not None}


def cores_bind(slowdowns: dict[int, float]) -> str | None:
    """A sentence where the nodes' compute slowed down once several computed at once: the
    nodes share CPUs (an emulated cluster's share this machine's cores), so those points are
    bound by the CPUs as much as by the link; None where no N slowed by SHARED_CPU_SLOWDOWN."""
    bound = {n: s for n, s in sorted(slowdowns.items()) if s >= SHARED_CPU_SLOWDOWN}
    if not bound:
        return None
    return ("the nodes share CPUs: one node's step ran "
            + ", ".join(f"{s:.2f}x as long with {n}" for n, s in bound.items())
            + " nodes computing at once; the forecasts include it (work = N=1 work x that)")
