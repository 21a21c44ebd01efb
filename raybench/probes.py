"""Probes of the process and the machine a figure is measured on: memory (peak RSS, PSS) and
the latency of one all-reduce in the current process group."""

from __future__ import annotations

import os
import resource
import time

import numpy as np


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
