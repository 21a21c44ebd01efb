"""Step-phase timers, warm-up exclusion and throughput arithmetic.

A step is split into data (slice + host-to-device copy), compute (forward + backward up to the
last gradient bucket's all-reduce launch), sync (from that launch to the end of backward: the
communication the backward pass could not hide) and optimizer (the step itself).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

import numpy as np

PHASES = ("data", "compute", "sync", "optimizer")


@dataclass
class StepTimes:
    """Per-step phase durations (seconds) of the epochs that count (after warm-up)."""

    data: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)
    optimizer: list[float] = field(default_factory=list)

    def add(self, data: float, compute: float, sync: float, optimizer: float) -> None:
        self.data.append(data)
        self.compute.append(compute)
        self.sync.append(sync)
        self.optimizer.append(optimizer)

    def summary(self) -> dict[str, float]:
        """Mean seconds per phase, shares of the step, and step-time percentiles in ms."""
        if not self.data:
            return {}
        phase = {p: float(np.mean(getattr(self, p))) for p in PHASES}
        step = np.add.reduce([np.asarray(getattr(self, p)) for p in PHASES])
        total = sum(phase.values()) or 1.0
        out: dict[str, float] = {f"{p}_sec": v for p, v in phase.items()}
        out.update({f"{p}_share": v / total for p, v in phase.items()})
        out["step_time_ms_p50"] = float(np.percentile(step, 50) * 1e3)
        out["step_time_ms_p90"] = float(np.percentile(step, 90) * 1e3)
        out["steps"] = len(step)
        return out


def throughput(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else 0.0


def epoch_stats(epoch_times: list[float]) -> dict[str, float]:
    arr = np.asarray(epoch_times, dtype=np.float64)
    return {
        "mean_time_per_epoch": float(arr.mean()) if arr.size else 0.0,
        "std_time_per_epoch": float(arr.std()) if arr.size else 0.0,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pss_mb(pid: int | None = None) -> float | None:
    """Proportional set size: shared pages split among the processes mapping them."""
    try:
        with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def process_start_time() -> float:
    """Wall-clock time (epoch seconds) at which this process started. Read as an age from
    /proc (uptime minus the process's start tick): boot-time based clocks such as psutil's
    create_time drift by minutes inside containers."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: the best we know is "now"
        return time.time()


def allreduce_latency(numel: int, device, iters: int = 200, warmup: int = 20) -> dict:
    """Latency of one all-reduce of `numel` float32 values in the current process group: the
    floor under a DDP step's gradient synchronisation."""
    import torch
    import torch.distributed as dist

    tensor = torch.zeros(numel, dtype=torch.float32, device=device)
    on_gpu = tensor.is_cuda
    for _ in range(warmup):
        dist.all_reduce(tensor)
    dist.barrier()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if on_gpu:
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    ms = np.asarray(samples) * 1e3
    return {"numel": numel, "bytes": numel * 4, "iters": iters,
            "allreduce_ms_p50": float(np.percentile(ms, 50)),
            "allreduce_ms_p90": float(np.percentile(ms, 90))}
