"""What one rank measures, kept in one place: start-up marks, warm-up exclusion, per-step phase
timers (data, compute, sync, optimizer), the measured window of a benchmark and the rank's facts.

Clocks: on CPU, `time.perf_counter()` at each phase boundary. On a GPU, CUDA events recorded on
the stream at the same boundaries, read once at the end of each epoch or window: timing never
adds a host synchronisation to a step.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from raybench import probes, stats
from raybench.results import PHASES, RankFacts, StartupMarks, StepBreakdown

START_MARKS = ("worker_entry", "loop_entry", "model_ready", "first_step")
# Steps timed after warm-up to size a benchmark window before it is fixed.
PROBE_STEPS = 20


@dataclass
class Window:
    """A benchmark's measured window: after `warmup_steps`, at least `min_steps` steps and
    `min_seconds` seconds (the data is cycled as often as needed); `max_steps` caps it."""

    warmup_steps: int = 0
    min_steps: int = 0
    min_seconds: float = 0.0
    max_steps: int | None = None


class StepClock:
    """A timestamp source: host seconds on CPU, recorded CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self):  # -> float | torch.cuda.Event
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


class SyncClock:
    """DDP comm hook that records when the last gradient bucket's all-reduce was launched;
    from there to the end of backward is communication the backward pass could not hide."""

    def __init__(self, world_size: int, clock: StepClock) -> None:
        self.world_size, self.clock = world_size, clock
        self.last_launch = None

    # No annotations: DDP checks them literally, and postponed (string) annotations fail that.
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        self.last_launch = self.clock()
        tensor = bucket.buffer().div_(self.world_size)
        fut = dist.all_reduce(tensor, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])


def agree_max(value: int, device: torch.device) -> int:
    """The largest value over all ranks (the value itself outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _elapsed(a, b) -> float:
    """Seconds between two timestamps of the same StepClock."""
    if isinstance(a, float):
        return b - a
    return a.elapsed_time(b) / 1e3


class MetricsCollector:
    """One rank's measurements. The loop calls `record` once per step with the five phase
    boundaries; warm-up steps and epochs are dropped here, nowhere else."""

    def __init__(self, device: torch.device, *, warmup_epochs: int = 0, warmup_steps: int = 0,
                 window: Window | None = None, worker_entry_time: float | None = None) -> None:
        self.clock = StepClock(device)
        self.device = device
        self.warmup_epochs = 0 if window else warmup_epochs
        self.warmup_steps = window.warmup_steps if window else warmup_steps
        self.window = window
        self.marks: dict[str, float | None] = dict.fromkeys(START_MARKS)
        self.marks["worker_entry"] = worker_entry_time
        self.marks["loop_entry"] = time.time()
        self.pss_start = probes.pss_mib()  # before this worker touches the data
        self.pinned: list[int] | None = None  # cores the training thread was pinned to
        self.malloc: dict[str, int] | None = None  # scaling.steady_malloc, as applied
        self.global_step = 0
        self.samples = 0
        self._counting = False
        self._pending: list[tuple] = []  # this epoch's counted steps, timestamps unresolved
        self._last_epoch: tuple[np.ndarray, int] = (np.empty((0, len(PHASES))), 0)
        self._samples_before = 0
        self._phases = np.empty((0, len(PHASES)))  # resolved durations (s), one row per step
        self._counted = 0
        self._window_start = 0.0
        self._target: float | None = None  # agreed window length in steps
        self.window_complete = False

    def mark(self, name: str) -> None:
        if self.marks.get(name) is None:
            self.marks[name] = time.time()

    def start_epoch(self, epoch: int) -> None:
        self._counting = epoch > self.warmup_epochs

    @property
    def counting(self) -> bool:
        """Whether the steps recorded now count (a resident rank's warm-up windows do not)."""
        return self._counting

    @counting.setter
    def counting(self, value: bool) -> None:
        self._counting = value

    def rows_since(self, first: int) -> np.ndarray:
        """Phase durations (steps x PHASES) of the counted steps from index `first` on."""
        return self._phases[first:]

    def record(self, n: int, t0, t1, launch, t2, t3) -> bool:
        """One step's boundaries: batch requested, batch ready, last all-reduce launched (None
        without DDP), backward done, optimizer done. Returns True once the window is complete."""
        self.global_step += 1
        if not self._counting or self.global_step <= self.warmup_steps:
            return False
        self._pending.append((t0, t1, launch if launch is not None else t2, t2, t3))
        self.samples += n
        self._counted += 1
        return self.window is not None and self._window_check()

    def _window_check(self) -> bool:
        """The window's length in steps is agreed by all ranks (an all-reduce of the maximum)
        after a short probe, and extended the same way if the agreed steps took less than
        min_seconds: a rank that stopped on its own clock would leave the others waiting in
        their next all-reduce."""
        w, counted = self.window, self._counted
        if counted == 1:
            self._window_start = time.perf_counter()
        due = counted >= self._target if self._target else counted >= min(PROBE_STEPS,
                                                                          max(w.min_steps, 1))
        if due and not self.window_complete:
            elapsed = time.perf_counter() - self._window_start
            per_step = elapsed / max(counted - 1, 1)
            short = w.min_seconds - elapsed
            needed = max(w.min_steps, counted + (math.ceil(short / per_step) if short > 0 and
                                                 per_step > 0 else 0))
            self._target = min(agree_max(needed, self.device), w.max_steps or math.inf)
            self.window_complete = counted >= self._target
        return self.window_complete

    def end_epoch(self) -> None:
        """Resolve the epoch's timestamps into phase durations (one device sync on a GPU)."""
        if not self._pending:
            return
        if self.clock.cuda:
            torch.cuda.synchronize(self.device)
        rows = [[_elapsed(t0, t1), _elapsed(t1, launch), _elapsed(launch, t2), _elapsed(t2, t3)]
                for t0, t1, launch, t2, t3 in self._pending]
        self._phases = np.vstack([self._phases, np.asarray(rows)])
        self._last_epoch = (np.asarray(rows), self.samples - self._samples_before)
        self._samples_before = self.samples
        self._pending = []

    def last_epoch(self) -> tuple[StepBreakdown, float | None]:
        """The measured steps of the latest epoch: their breakdown and samples/s."""
        rows, samples = self._last_epoch
        seconds = float(rows.sum()) if len(rows) else 0.0
        return breakdown_of(rows), (samples / seconds if seconds > 0 else None)

    def last_epoch_steps(self) -> np.ndarray:
        """Seconds of each step of the latest epoch (or window), warm-up steps excluded."""
        rows = self._last_epoch[0]
        return rows.sum(axis=1) if len(rows) else np.zeros(0)

    @property
    def measured_steps(self) -> int:
        return len(self._phases)

    @property
    def measured_seconds(self) -> float:
        return float(self._phases.sum())

    def samples_per_sec(self) -> float | None:
        """Samples over the summed time of the measured steps; None when no step counted."""
        seconds = self.measured_seconds
        return self.samples / seconds if seconds > 0 else None

    def breakdown(self) -> StepBreakdown:
        return breakdown_of(self._phases)

    def work_quantiles_ms(self) -> list[float]:
        """Percentiles 0..100 of this rank's work per measured step outside synchronisation
        (data + compute + optimizer): the distribution the scaling model draws ranks from."""
        from raybench.scaling_model import quantiles_of

        work = np.delete(self._phases, PHASES.index("sync"), axis=1).sum(axis=1)
        return quantiles_of(work * 1e3)

    def rank_facts(self, rank: int, node: dict[str, str], model: nn.Module, ingest: str,
                   first_batch_s: float | None, first_batch_at: float | None = None) -> RankFacts:
        on_gpu = self.device.type == "cuda"
        return RankFacts(
            rank=rank, node=node["ip"], node_id=node["id"], hostname=socket.gethostname(),
            pid=os.getpid(), threads=torch.get_num_threads(), device=str(self.device),
            device_name=torch.cuda.get_device_name(self.device) if on_gpu else None,
            samples_per_sec=self.samples_per_sec(), peak_rss_mib=probes.peak_rss_mib(),
            pss_mib=probes.pss_mib(), pss_start_mib=self.pss_start,
            peak_gpu_mem_mib=(torch.cuda.max_memory_allocated(self.device) / 2**20
                              if on_gpu else None),
            startup_epoch_s=dict(self.marks), final_weights_sha256=weights_digest(model),
            step_breakdown=self.breakdown(), ingest=ingest, first_batch_s=first_batch_s,
            first_batch_at=first_batch_at,
            niceness=os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
            pinned_cores=self.pinned, malloc=self.malloc)


def breakdown_of(phases: np.ndarray) -> StepBreakdown:
    """Mean seconds per phase, shares of the step, step-time percentiles with the p50's
    interval, from an (steps x 4) array of phase durations."""
    if len(phases) == 0:
        return StepBreakdown()
    means = phases.mean(axis=0)
    total = float(means.sum()) or 1.0
    step_ms = phases.sum(axis=1) * 1e3
    p50 = stats.median_interval(step_ms)
    out = StepBreakdown(step_time_ms_p50=p50.value,
                        step_time_ms_p90=float(np.percentile(step_ms, 90)),
                        step_time_ms_p50_ci=p50, steps=len(phases))
    for i, phase in enumerate(PHASES):
        setattr(out, f"{phase}_s", float(means[i]))
        setattr(out, f"{phase}_share", float(means[i]) / total)
    return out


def mean_breakdown(parts: list[StepBreakdown]) -> StepBreakdown:
    """The run's breakdown: each field averaged over the ranks that measured steps."""
    measured = [p for p in parts if p.steps]
    if not measured:
        return StepBreakdown()
    out = StepBreakdown(steps=sum(p.steps for p in measured))
    for name in ([f"{p}_s" for p in PHASES] + [f"{p}_share" for p in PHASES]
                 + ["step_time_ms_p50", "step_time_ms_p90"]):
        setattr(out, name, float(np.mean([getattr(p, name) for p in measured])))
    out.step_time_ms_p50_ci = measured[0].step_time_ms_p50_ci if len(measured) == 1 else None
    return out


def startup_marks(marks: list[dict[str, float]], launch_time: float | None) -> StartupMarks:
    """Seconds from launch until the slowest rank passed each start-up mark (one dict of epoch
    seconds per rank)."""
    out = StartupMarks()
    if launch_time is None:
        return out
    for mark in START_MARKS:
        times = [m.get(mark) for m in marks if m.get(mark)]
        if times:
            setattr(out, f"{mark}_s", max(times) - launch_time)
    return out


def weights_digest(model: nn.Module) -> str:
    """Fingerprint of the trained weights: DDP ranks must agree bit for bit."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
