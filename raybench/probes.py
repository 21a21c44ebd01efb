"""Probes of the process and the machine a figure is measured on: memory (peak RSS, PSS) and
the latency of one all-reduce in the current process group."""

from __future__ import annotations

import os
import resource
import time

import numpy as np

from raybench.results import AllreduceLatency


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pss_mib(pid: int | None = None) -> float | None:
    """Proportional set size: shared pages split among the processes mapping them."""
    try:
        with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim): a worker that fetched
    and cut a few GiB of windows keeps its freed buffers mapped otherwise, and its private
    memory grows with every epoch and evaluation. A no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def allreduce_latency(numel: int, device, iters: int = 200, warmup: int = 20,
                      budget_s: float = 3.0) -> AllreduceLatency:
    """Latency of one all-reduce of `numel` float32 values in the current process group: the
    floor under a DDP step's gradient synchronisation. Warm-up and timing each take at most
    about `budget_s` (at least 3 timed): 220 all-reduces of a 16.8 MB gradient over a 100 Mbit/s
    link took 6.6 minutes a point on the emulated cluster. Every rank runs rank 0's counts (a
    collective must be called alike everywhere)."""
    import torch
    import torch.distributed as dist

    tensor = torch.zeros(numel, dtype=torch.float32, device=device)
    on_gpu = tensor.is_cuda
    dist.all_reduce(tensor)  # connections and buffers
    dist.barrier()
    start = time.perf_counter()
    dist.all_reduce(tensor)
    if on_gpu:
        torch.cuda.synchronize(device)
    fit = max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))
    counts = torch.tensor([min(warmup, fit), max(3, min(iters, fit))], device=device)
    dist.broadcast(counts, 0)
    warmup, iters = int(counts[0]), int(counts[1])
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
    return AllreduceLatency(numel=numel, bytes=numel * 4, iters=iters,
                            allreduce_ms_p50=float(np.percentile(ms, 50)),
                            allreduce_ms_p90=float(np.percentile(ms, 90)))


def _busy(seconds: float, work) -> None:
    """Compute (small matmuls, one thread) for `seconds` of wall time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        work @ work


def allreduce_under_load(numel: int, iters: int, busy_s: float,
                         warmup: int = 5) -> AllreduceLatency:
    """All-reduces of `numel` float32 values, each rank computing for busy_s between them, as
    in training. The latency of one all-reduce is the shortest any rank saw for it: the rank
    that arrived last waited for nobody, so its time is the communication alone, under the
    load of the others' compute (waiting for the slowest rank is the model's other term)."""
    import torch
    import torch.distributed as dist

    tensor = torch.zeros(numel, dtype=torch.float32)
    work = torch.randn(48, 48)
    mine = []
    for i in range(warmup + iters):
        _busy(busy_s, work)
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if i >= warmup:
            mine.append(time.perf_counter() - start)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    ms = np.min(np.asarray(everyone), axis=0) * 1e3
    return AllreduceLatency(numel=numel, bytes=numel * 4, iters=iters, busy_s=busy_s,
                            allreduce_ms_p50=float(np.percentile(ms, 50)),
                            allreduce_ms_p90=float(np.percentile(ms, 90)))


# Dense peak TFLOP/s per GPU (no sparsity) from NVIDIA's data sheets, by the name torch reports:
# (bf16/fp16 tensor core, fp32 without TF32). MFU divides achieved model FLOP/s by these.
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100 SXM": (989.0, 67.0),  # "NVIDIA H100 80GB HBM3"
    "H100 80GB HBM3": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100 NVL": (835.0, 60.0),
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10G": (70.0, 31.2),
    "A10": (125.0, 31.2),
    "V100": (125.0, 15.7),  # fp16 tensor core; V100 has no bf16
    "T4": (65.0, 8.1),
}


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """The dense peak of a GPU for the run's precision (bf16 or fp32), or None if unknown
    (CPUs, GPUs not in the table): MFU is then not reported rather than guessed."""
    if not device_name:
        return None
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):  # most specific name first
        if key in device_name:
            bf16, fp32 = GPU_PEAK_TFLOPS[key]
            return bf16 if precision == "bf16" else fp32
    return None


def annotate_flops(timing, flops_per_sample: float | None, precision: str) -> None:
    """Add achieved model TFLOP/s over all workers to a Timing and, on GPUs with a known peak,
    MFU. Done on the driver after the run, so counting FLOPs never delays a start-up."""
    if not flops_per_sample:
        return
    timing.model_flops_per_sample = flops_per_sample
    if timing.samples_per_sec:
        timing.achieved_tflops = flops_per_sample * timing.samples_per_sec / 1e12
    peaks = [peak_tflops(r.device_name, precision) for r in timing.ranks]
    if timing.achieved_tflops and peaks and all(peaks):
        timing.peak_tflops = sum(peaks)
        timing.mfu = timing.achieved_tflops / timing.peak_tflops
